"""Options every training or inference command shares, the one table of parameter rules, and the engine object.

Rules follow scikit-learn's ``_parameter_constraints`` (``sklearn/utils/_param_validation.py``): a name maps to
one `Rule`. `RULES` holds the names that mean one thing everywhere; a class whose parameter of the same name
means something else declares it in its own ``_parameter_constraints`` (FixMatch's confidence ``threshold`` in
(0, 1] against the anomaly detector's score ``threshold``, any finite number). `rules_for` merges them along the
class's bases, so a config and the estimator it builds check the same rule, and every check raises one
`ParameterError` (an `AelabError` and a ``ValueError``).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

from aelab.devices import DEVICES, is_device
from aelab.errors import AelabError, ParameterError

__all__ = ["RunOptions", "Engine", "Sources", "Rule", "Interval", "OneOf", "RULES", "resolve_sources",
           "rules_for", "validate_options", "validate_params", "check_option", "DEVICES", "PRECISIONS",
           "KMEANS_FEATURES_COPIES", "KMEANS_FEATURES_POOLINGS"]

#: ``kmeans_features_augment``: the copies of the labelled images the k-means-features classifier also learns from
#: (`aelab.train.baselines.labelled_copies`).
KMEANS_FEATURES_COPIES = ("auto", "none", "shift", "flip-shift")

#: ``kmeans_features_pooling``: how the k-means features' codes are pooled over each region of their grid
#: (`aelab.train.patch_features.KMeansFeatures`).
KMEANS_FEATURES_POOLINGS = ("max", "sum")

#: Values of ``--precision`` (Lightning Fabric's names).
PRECISIONS: tuple[str, ...] = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


def _int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)  # numpy integers too


def _num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Rule:
    """What a parameter must be: ``test(value)`` is True for a good value; ``text`` says it in words."""

    test: Callable[[Any], bool]
    text: str

    def __call__(self, value: Any) -> bool:
        return bool(self.test(value))


def Interval(low: float | None = None, high: float | None = None, closed: str = "both", *,
             integer: bool = False, none: bool = False) -> Rule:
    """Numbers (``integer``: integers) from ``low`` to ``high``; ``closed``: both, left, right or neither end
    belongs to it (scikit-learn's ``Interval``); ``none``: ``None`` is allowed too."""
    lo_in, hi_in = closed in ("both", "left"), closed in ("both", "right")

    def test(v: Any) -> bool:
        if v is None:
            return none
        if not (_int(v) if integer else _num(v)):
            return False
        above = low is None or (v >= low if lo_in else v > low)
        return above and (high is None or (v <= high if hi_in else v < high))

    kind = "an integer" if integer else "a number"
    if low is not None and high is not None:
        text = f"{kind} in {'[' if lo_in else '('}{low}, {high}{']' if hi_in else ')'}"
    elif low is not None:
        text = f"{kind} {'>=' if lo_in else '>'} {low}"
    elif high is not None:
        text = f"{kind} {'<=' if hi_in else '<'} {high}"
    else:
        text = "a finite number" if not integer else kind
    return Rule(test, text + (", or null" if none else ""))


def OneOf(values: Iterable[Any], extra: str = "") -> Rule:
    """One of ``values`` (``extra``: words added to the message)."""
    allowed = tuple(values)
    return Rule(lambda v: isinstance(v, (str, int)) and v in allowed,
                "one of " + ", ".join(map(str, allowed)) + (f" {extra}" if extra else ""))


_COUNT = Interval(1, integer=True)
# what NumPy's and sklearn's seeding take
_SEED = Rule(lambda v: _int(v) and 0 <= v < 2**32, "an integer from 0 to 2**32 - 1")

#: Parameters that mean the same thing in every config and estimator (by name).
RULES: dict[str, Rule] = {
    "epochs": _COUNT, "batch_size": _COUNT, "devices": _COUNT, "num_nodes": _COUNT, "width": _COUNT, "depth": _COUNT,
    "cases": _COUNT, "pretrain_epochs": _COUNT, "finetune_epochs": _COUNT, "knn": _COUNT,
    "patience": Interval(0, integer=True), "top": Interval(0, integer=True),
    "seed": _SEED, "random_state": _SEED,
    "lr": Interval(0, closed="neither"),
    "weight_decay": Interval(0), "noise_factor": Interval(0), "smoothing": Interval(0),
    # study 1: fine-tuning picks its best epoch by validation accuracy, so it needs a held-out share
    "val_fraction": Interval(0, 1, "neither"),
    "dropout": Interval(0, 1, "left"),
    "recon_weight": Interval(0, 1),
    "threshold_floor": Interval(0, 1),
    "ema_decay": Interval(0, 1, "left"),
    "unlabelled_ratio": Interval(1, integer=True),
    "top_k": Interval(0, 1, "right"),
    "channels": Rule(lambda v: _int(v) and v in (1, 3), "1 or 3"),
    "image_size": Interval(4, integer=True),
    "ssim_window": Rule(lambda v: _int(v) and v >= 3 and v % 2 == 1, "an odd integer >= 3"),
    "device": Rule(is_device, "one of " + ", ".join(DEVICES) + " (or cuda:N)"),
    "precision": OneOf(PRECISIONS),
    "demo_unlabelled": Interval(0, integer=True),
    "demo_labelled_per_class": Interval(2, integer=True),
    "demo_test": Interval(0, integer=True),
    "budget": Rule(lambda v: v is None or (_num(v) and v > 0), "a number of minutes > 0, or null (no budget)"),
    "stem": Rule(lambda v: _int(v) and v >= 0 and v % 2 == 0, "an even integer >= 0"),
    "arch": OneOf(("auto", "unet", "cnn")),
    "stem_kind": OneOf(("whiten", "kmeans")),  # aelab.models.whiten.STEM_KINDS
    "kmeans_features_learner": OneOf(("kmeans", "ekm")),
    "kmeans_features_centroids": Interval(2, integer=True),
    "kmeans_features_augment": OneOf(KMEANS_FEATURES_COPIES),
    "kmeans_features_pooling": OneOf(KMEANS_FEATURES_POOLINGS),
    "kmeans_features_grid": Interval(1, 8, integer=True),  # grid² · K features: 51,200 at 8 and K 800
}


def rules_for(cls: type) -> dict[str, Rule]:
    """`RULES`, overridden by the ``_parameter_constraints`` of ``cls`` and its bases (the nearest class wins)."""
    rules = dict(RULES)
    for klass in reversed(cls.__mro__):
        rules.update(klass.__dict__.get("_parameter_constraints", {}))
    return rules


def _check(rules: dict[str, Rule], name: str, value: Any, prefix: str) -> None:
    rule = rules.get(name)
    if rule is not None and not rule(value):
        raise ParameterError(f"{prefix}{name} must be {rule.text}, got {value!r}")


def validate_options(options: Any, prefix: str = "--") -> None:
    """Check every field of a settings dataclass by `rules_for` its class; raise one `ParameterError`
    naming the first bad one (as the flag: ``--NAME``, a nested one ``--geometric.NAME``).

    A field whose default is ``None`` may be ``None``. Called by `RunOptions.__post_init__` (and
    ``aelab run``'s settings), so every verb checks its settings when they are made, before any
    folder is created.
    """
    rules = rules_for(type(options))
    for f in fields(options):
        value = getattr(options, f.name)
        if is_dataclass(value):
            validate_options(value, f"{prefix}{f.name}.")  # nested settings (aelab run's --cluster.*, --anomaly.*)
            continue
        if value is None and f.default is None:
            continue
        _check(rules, f.name, value, prefix)


def validate_params(estimator: Any, params: dict[str, Any]) -> None:
    """Check an estimator's parameters by `rules_for` its class (scikit-learn's ``_validate_params``); a
    parameter whose default is ``None`` may be ``None``."""
    import inspect

    cls = type(estimator)
    rules, signature = rules_for(cls), inspect.signature(cls.__init__).parameters
    for name, value in params.items():
        if value is None and name in signature and signature[name].default is None:
            continue
        _check(rules, name, value, f"{cls.__name__}: ")


def check_option(name: str, value: Any, prefix: str = "--") -> None:
    """Check one option by `RULES` (none for the name: anything goes); raise a one-line `ParameterError`
    naming it as ``prefix + name`` (the flag by default)."""
    _check(RULES, name, value, prefix)


@dataclass(frozen=True)
class Engine:
    """Where and how a stage runs: the engine part of `RunOptions`, passed on as one typed object.

    ``RunOptions.engine()`` builds it from any verb's settings; a config takes it back as keyword
    arguments (``FinetuneConfig(..., **engine.options())``); an estimator's ``fit(X, engine=...)``
    reads it. ``single()`` is the same engine in one process (the stages rank 0 runs alone).
    """

    seed: int = 0
    device: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str = "auto"
    strict: bool = False
    logger: str = "csv"

    def options(self) -> dict[str, Any]:
        """The fields as keyword arguments of any `RunOptions` subclass."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def single(self) -> Engine:
        """This engine in one process (``devices=1``, ``num_nodes=1``)."""
        from dataclasses import replace

        return replace(self, devices=1, num_nodes=1)

    def fabric(self, **kwargs: Any):
        """A launched Lightning Fabric for this engine (`aelab.train.engine.make_fabric`)."""
        from aelab.train.engine import make_fabric

        return make_fabric(self.device, self.devices, self.precision, num_nodes=self.num_nodes, **kwargs)


@dataclass
class RunOptions:
    """Engine and bookkeeping options.

    Attributes:
        seed: one seed for splits, initialisation, noise and augmentation (repeatable on CPU).
        device: auto, cpu, cuda or mps.
        devices: number of devices (processes) per machine for Lightning Fabric; >1 uses DDP.
        num_nodes: number of machines (Fabric's multi-node launch: torchrun or SLURM start the processes).
        precision: auto (bf16-mixed on a GPU that has it, else 32-true), 32-true, bf16-mixed, 16-mixed.
        out: run folder to write; default the next free runs/<verb>/<N>.
        strict: treat unreadable image files as an error instead of skipping and listing them.
        logger: where training metrics go besides metrics.csv: csv (only metrics.csv), tensorboard or mlflow
            (needs that package).
    """

    seed: int = 0
    device: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str = "auto"
    out: str | None = None
    strict: bool = False
    logger: str = "csv"

    #: ``aelab run`` re-uses its own run folder to resume; every other verb writes a new one.
    OUT_MAY_HOLD_A_RUN: ClassVar[bool] = False

    def __post_init__(self) -> None:
        validate_options(self)
        if self.out is not None and getattr(self, "resume", None) is None and not self.OUT_MAY_HOLD_A_RUN:
            from aelab.runs import check_out_folder

            check_out_folder(self.out)  # a file or a non-empty folder: refused before any work

    def engine(self) -> Engine:
        """The engine options of these settings as one `Engine`."""
        return Engine(**{f.name: getattr(self, f.name) for f in fields(Engine)})


@dataclass
class Sources:
    root: Path | None = None
    labelled: Path | None = None
    unlabelled: Path | None = None
    test: Path | None = None
    test_labels: Path | None = None


def resolve_sources(
    data: str | None = None,
    *,
    labelled: str | None = None,
    unlabelled: str | None = None,
    test: str | None = None,
    test_labels: str | None = None,
) -> Sources:
    """Folders from a root in the course layout (``--data``) with explicit folders overriding it."""
    src = Sources()
    if data is not None:
        from aelab.data import resolve_layout

        layout = resolve_layout(data)
        src = Sources(Path(data), layout.labelled, layout.unlabelled, layout.test, layout.test_labels)
    given = (("labelled", labelled), ("unlabelled", unlabelled), ("test", test), ("test_labels", test_labels))
    for name, value in given:
        if value is not None:
            setattr(src, name, Path(value))
    return src


def restore_for_resume(cls, cfg):
    """For ``--resume RUN``: the run's saved settings, with this machine's engine flags.

    Returns ``(cfg, run_dir, resume)``; without ``--resume`` the settings are returned as given.
    """
    from aelab.runs import load_config, lock_run_dir

    if cfg.resume is None:
        return cfg, None, False
    run_dir = Path(cfg.resume)
    if not (run_dir / "last.ckpt").is_file():
        raise AelabError(f"cannot resume: {run_dir / 'last.ckpt'} does not exist")
    from aelab.progress import is_rank_zero

    if is_rank_zero():  # the extra processes of a --devices N run share rank 0's lock
        lock_run_dir(run_dir)  # one process per run folder
    saved = load_config(run_dir)
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in saved.items() if k in names}
    values["resume"] = str(run_dir)
    try:
        restored = cls(**values)
    except AelabError as exc:  # the saved settings were edited
        raise AelabError(f"{run_dir / 'config.yaml'}: {exc}") from None
    # The machine may differ from the one that started the run.
    for name in ("device", "devices", "num_nodes", "precision"):
        setattr(restored, name, getattr(cfg, name))
    restored.resume = str(run_dir)
    return restored, run_dir, True


def require(path: Path | None, what: str, flag: str) -> Path:
    if path is None:
        raise AelabError(f"no {what} folder: pass --data ROOT (course layout: dev/labelled, dev/unlabelled, test) "
                         f"or {flag} DIR")
    return path
