"""``aelab cluster``: the clustering study's CLI, generated from :class:`aelab.cluster.study.ClusterConfig`.

The study itself (data loading, α search, figures, metrics) is library code in
:mod:`aelab.cluster.study`; this module only turns the config's fields into the verb's
arguments (``input`` positional, the rest flags with the config's defaults and help) and returns
the run folder. The old method name ``seed-softmax`` still works with a warning.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
import warnings
from pathlib import Path

from aelab.cluster.study import ClusterConfig, load_embeddings, run_cluster_study

__all__ = ["cluster", "load_embeddings"]


def _cli_function(config_cls, run):
    """A function whose signature and docstring are the config's fields (for jsonargparse)."""
    hints = typing.get_type_hints(config_cls)
    params = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=hints[f.name],
                                default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
              for f in dataclasses.fields(config_cls)]
    params.sort(key=lambda p: p.default is not inspect.Parameter.empty)  # the required input first

    def cluster(*args, **kwargs) -> Path:
        with warnings.catch_warnings():
            warnings.simplefilter("always", DeprecationWarning)  # the old method name: say so once on the CLI
            with warnings.catch_warnings(record=True) as caught:
                result = run(config_cls(*args, **kwargs))
        for w in caught:
            if issubclass(w.category, DeprecationWarning) and "renamed" in str(w.message):
                print(f"aelab: warning: {w.message}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return result.run_dir

    cluster.__signature__ = inspect.Signature(params, return_annotation=Path)
    cluster.__annotations__ = {**hints, "return": Path}
    docs = [c.__doc__ for c in config_cls.__mro__ if c.__doc__ and "Attributes:" in c.__doc__]
    doc = docs[0].split("Attributes:")[0] + "Args:" + "".join(d.split("Attributes:", 1)[1].rstrip() for d in docs) + "\n"
    cluster.__doc__ = doc + "\n    Returns:\n        The run folder.\n"
    return cluster


cluster = _cli_function(ClusterConfig, run_cluster_study)
