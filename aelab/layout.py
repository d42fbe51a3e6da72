"""The files of an ``aelab run`` folder, named in one place.

The pipeline, the studies and the report ask a `RunLayout` for a path instead of spelling it.

Example:
    >>> lay = RunLayout("runs/aelab")
    >>> lay.stage("pretrain").as_posix(), lay.methods_csv.as_posix()
    ('runs/aelab/pretrain', 'runs/aelab/study1/methods.csv')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunLayout"]


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run folder ``root``."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    # bookkeeping
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def stages(self) -> Path:
        return self.root / "stages.json"

    @property
    def demo_data(self) -> Path:
        return self.root / "demo_data"

    def stage(self, name: str) -> Path:
        """The subfolder a stage writes (a training run folder, an embedding, a clustering ...)."""
        return self.root / name

    def error_file(self, name: str) -> Path:
        return self.root / f"{name}.error.txt"

    # study 1
    @property
    def study1(self) -> Path:
        return self.root / "study1"

    @property
    def methods_csv(self) -> Path:
        return self.study1 / "methods.csv"

    @property
    def chosen_json(self) -> Path:
        return self.study1 / "chosen.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    # report
    def report(self, ext: str) -> Path:
        """``report.html``, ``report.pdf``, ``report.md`` or ``report.json``."""
        return self.root / f"report.{ext}"
