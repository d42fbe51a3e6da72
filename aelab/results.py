"""Typed results of the stages of ``aelab run``: what the pipeline records and the report reads.

Each class writes and reads itself to and from the run folder through `RunLayout`, so the file
formats (``stages.json``, ``study1/methods.csv``, ``study1/chosen.json``, ``anomaly/summary.json``)
are declared here once. The module imports no torch and nothing from ``train``, ``models`` or
``cluster``: the report reads a run folder with it alone.

Example:
    >>> from aelab.layout import RunLayout
    >>> rec = StageRecord("done", None, 1.5, {"run": "pretrain"})
    >>> PretrainResult.from_dict(rec.result).run
    'pretrain'
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aelab.layout import PLAN_FILE, RunLayout
from aelab.runs import atomic_write_text, read_json, write_csv, write_json

__all__ = ["AnomalyStudyResult", "AnomalySummary", "ChosenMethod", "ClassificationResult", "ClusterStudyResult",
           "DataResult", "METHOD_COLUMNS", "MethodResult", "MethodRow", "PretrainResult", "RunStages", "StagePlan",
           "StageRecord"]


def _from_fields(cls, data: dict):
    """``cls(**data)`` keeping only the fields ``cls`` declares."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in (data or {}).items() if k in names})


# --- stages.json ------------------------------------------------------------------------------------------------

@dataclass
class StageRecord:
    """One entry of ``stages.json``: how a stage ended and its result (a plain dict, one of the classes below)."""

    status: str
    reason: str | None = None
    seconds: float | None = None
    result: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "seconds": self.seconds, "result": self.result}

    @classmethod
    def from_dict(cls, data: dict) -> StageRecord:
        return cls(data.get("status", ""), data.get("reason"), data.get("seconds"), data.get("result") or {})


class RunStages(dict):
    """``stages.json``: stage name -> record (a plain dict, as written); ``_meta`` holds the run's version, start
    time, device and number of processes. ``aelab run`` resumes after the stages it lists as done or skipped."""

    META = "_meta"

    @classmethod
    def read(cls, layout: RunLayout) -> RunStages:
        """The stages of the run folder (empty when it has none; an edited or truncated file is one line)."""
        return cls(read_json(layout.stages, default={}))

    def write(self, layout: RunLayout) -> None:
        atomic_write_text(layout.stages, json.dumps(dict(self), indent=2) + "\n")

    @property
    def meta(self) -> dict:
        return self.get(self.META) or {}

    def names(self) -> list[str]:
        """The stages recorded, in the order they ran (no bookkeeping entries)."""
        return [k for k in self if not k.startswith("_")]

    def record(self, name: str) -> StageRecord | None:
        return StageRecord.from_dict(self[name]) if name in self and not name.startswith("_") else None

    def result(self, name: str) -> dict:
        """The result of stage ``name`` (``{}`` when it did not run or failed)."""
        rec = self.record(name)
        return rec.result if rec else {}

    def skipped(self, name: str) -> str | None:
        """Why stage ``name`` has no results (``None`` when it finished)."""
        rec = self.record(name)
        if rec is None:
            return "this stage has not run yet"
        return rec.reason if rec.status != "done" else None

    def total_seconds(self) -> float:
        return sum(self[n].get("seconds") or 0 for n in self.names())


# --- the data and pretraining stages ----------------------------------------------------------------------------

@dataclass
class DataResult:
    """Stage ``data``: the data folder and the parts of the course layout it has (paths as text, or None)."""

    data: str
    demo: bool
    labelled: str | None = None
    unlabelled: str | None = None
    test: str | None = None
    test_labels: str | None = None
    anomaly: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DataResult:
        return _from_fields(cls, {"data": "", "demo": False, **(data or {})})


@dataclass
class PretrainResult:
    """Stage ``pretrain``: the run folder of the course report's denoising pretraining."""

    run: str

    def to_dict(self) -> dict:
        return {"run": self.run}

    @classmethod
    def from_dict(cls, data: dict) -> PretrainResult | None:
        return cls(data["run"]) if data and data.get("run") else None


# --- study 1 ------------------------------------------------------------------------------------------------------

@dataclass
class MethodResult:
    """One method of study 1 (one row of table 1b); the result of its stage in ``stages.json``."""

    method: str
    val_acc: float
    n_val: int
    labels_per_class: str
    test_acc: float | None = None
    seconds: float = 0.0
    run: str | None = None  # the fine-tune run folder (None for the classical references)
    predictions: str | None = None  # its predictions.csv, when the data have a test folder

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MethodResult:
        return _from_fields(cls, data)


#: The columns of ``study1/methods.csv``.
METHOD_COLUMNS = ["method", "description", "uses_unlabelled", "labels_per_class", "val_acc", "n_val", "test_acc",
                  "seconds", "run", "note"]


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None


@dataclass
class MethodRow:
    """One row of ``study1/methods.csv`` (table 1b); a method that did not run has only its ``note``."""

    method: str
    description: str
    uses_unlabelled: bool
    labels_per_class: int | str | None = None
    val_acc: float | None = None
    n_val: int | None = None
    test_acc: float | None = None
    seconds: float | None = None
    run: str = ""
    note: str = ""

    def cells(self) -> list:
        return ["" if v is None else v for v in dataclasses.astuple(self)]

    @staticmethod
    def write(layout: RunLayout, rows: list[MethodRow]) -> None:
        write_csv(layout.methods_csv, METHOD_COLUMNS, [r.cells() for r in rows])

    @classmethod
    def read(cls, layout: RunLayout) -> list[MethodRow] | None:
        """The rows with typed values (empty cells become ``None``), or ``None`` when there is no file."""
        if not layout.methods_csv.is_file():
            return None
        with open(layout.methods_csv, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return [cls(r.get("method", ""), r.get("description", ""),
                    str(r.get("uses_unlabelled", "")).strip().lower() in ("1", "true", "yes"),
                    _int(r.get("labels_per_class")), _float(r.get("val_acc")), _int(r.get("n_val")),
                    _float(r.get("test_acc")), _float(r.get("seconds")), r.get("run") or "", r.get("note") or "")
                for r in rows] or None


#: A stage whose budget allows fewer epochs than this (and than half its configured maximum) is cut short: its result
#: may be far from what it reaches with time (at 400 labelled photos per class the supervised-only row ran 3 epochs in
#: its 45-second share and scored 0.424; benchmarks/README.md).
SHORT_EPOCHS = 10


@dataclass
class StagePlan:
    """``<stage>/budget.json``: how a training stage fitted its time budget (`aelab.train.trainer.Trainer.plan`)."""

    budget_s: float
    first_epoch_s: float
    planned_epochs: int
    max_epochs: int

    @property
    def cut_short(self) -> bool:
        """Fewer than `SHORT_EPOCHS` epochs, and fewer than half its maximum, fitted in the stage's share (7 of 8
        epochs is not cut short; 6 of 15 and 3 of 100 are)."""
        return self.planned_epochs < min(SHORT_EPOCHS, self.max_epochs / 2)

    def write(self, run_dir: str | Path) -> None:
        write_json(Path(run_dir) / PLAN_FILE, dataclasses.asdict(self))

    @classmethod
    def read(cls, run_dir: str | Path) -> StagePlan | None:
        """The plan of the stage in ``run_dir``, or ``None`` (no budget, or written by an older aelab)."""
        data = read_json(Path(run_dir) / PLAN_FILE, default={})
        try:
            return None if not data else cls(
                float(data["budget_s"]), float(data["first_epoch_s"]), int(data["planned_epochs"]),
                int(data["max_epochs"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass
class ChosenMethod:
    """``study1/chosen.json``: the method whose predictions are submitted, why, and how study 1 ran (``settings``:
    the kind of images, the augmentation rule and the time budget)."""

    method: str | None
    reason: str
    validation: str
    val_acc: float | None = None
    n_val: int | None = None
    settings: dict | None = None

    def write(self, layout: RunLayout) -> None:
        data: dict[str, Any] = {"method": self.method, "reason": self.reason}
        if self.method is not None:
            data |= {"val_acc": self.val_acc, "n_val": self.n_val}
        write_json(layout.chosen_json, data | {"validation": self.validation, "settings": self.settings})

    @classmethod
    def read(cls, layout: RunLayout) -> ChosenMethod:
        data = read_json(layout.chosen_json, default={})
        return _from_fields(cls, {"method": None, "reason": "", "validation": "", **data})


@dataclass
class ClassificationResult:
    """Stage ``predict`` (study 1's summary): the chosen method, the network study 2 embeds with (relative to the
    run folder: the folder may move) and the submitted ``predictions.csv``."""

    chosen: str | None
    reason: str
    methods: str = "study1/methods.csv"
    model: str | None = None
    predictions: str | None = None

    def to_dict(self) -> dict:
        out = {"chosen": self.chosen, "reason": self.reason, "methods": self.methods, "model": self.model}
        return out if self.predictions is None else out | {"predictions": self.predictions}

    @classmethod
    def from_dict(cls, data: dict) -> ClassificationResult:
        return _from_fields(cls, {"chosen": None, "reason": "", **(data or {})})


# --- study 2b -----------------------------------------------------------------------------------------------------

@dataclass
class ClusterStudyResult:
    """Stage ``cluster``: the embedding, the classes clustered, and per method its run folder and ARI
    (in ``stages.json`` as ``<method>`` and ``<method>_ari``)."""

    embed: str
    classes: list[str]
    n_embedded: int
    runs: dict[str, str] = field(default_factory=dict)
    ari: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"embed": self.embed, "classes": self.classes, "n_embedded": self.n_embedded}
        for method, run in self.runs.items():
            out |= {method: run, f"{method}_ari": self.ari.get(method)}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ClusterStudyResult:
        fixed = ("embed", "classes", "n_embedded")
        runs = {k: v for k, v in data.items() if k not in fixed and not k.endswith("_ari")}
        return cls(data.get("embed", ""), list(data.get("classes", [])), int(data.get("n_embedded", 0)), runs,
                   {m: data.get(f"{m}_ari") for m in runs})

    @staticmethod
    def metrics(layout: RunLayout, method: str) -> dict:
        """``cluster_<method>/metrics.json`` (``{}`` when that method did not run)."""
        return read_json(layout.cluster_metrics(method), default={})


# --- study 3 ------------------------------------------------------------------------------------------------------

#: Study 3's detectors: (name in summary.json, detector method, skip connections).
ANOMALY_VARIANTS = (("noskip", "reconstruction", False), ("skip", "reconstruction", True),
                    ("geometric", "geometric", False))


@dataclass
class AnomalySummary:
    """``anomaly/summary.json``: the normal data, per detector its metrics, the figures the report shows
    (relative to the run folder), the default method for these data and the detector that ranks better."""

    normal: str
    sources: dict[str, str]  # data / normal / anomalous -> folder (``<name>_dir`` in the file)
    variants: dict[str, dict]  # noskip / skip / geometric -> metrics
    figures: list[str] = field(default_factory=list)
    default_method: str | None = None
    n_normal_test: int | None = None  # held-out normal images (the same for every detector)
    n_anomalous: int | None = None

    @property
    def better(self) -> str:
        a, g = (self.variants.get(v, {}).get("auroc") for v in ("noskip", "geometric"))
        return "tie" if a == g else "noskip" if a > g else "geometric"

    def to_dict(self) -> dict:
        return {"normal": self.normal, **{f"{k}_dir": v for k, v in self.sources.items()}, **self.variants,
                "n_normal_test": self.n_normal_test, "n_anomalous": self.n_anomalous,
                "figures": self.figures, "default_method": self.default_method, "better": self.better}

    def write(self, layout: RunLayout) -> Path:
        write_json(layout.anomaly_summary, self.to_dict())
        return layout.anomaly_summary

    @classmethod
    def read(cls, layout: RunLayout) -> AnomalySummary | None:
        data = read_json(layout.anomaly_summary, default={})
        if not data:
            return None
        return cls(data.get("normal", "?"), {k[:-4]: v for k, v in data.items() if k.endswith("_dir")},
                   {v: data[v] for v, _, _ in ANOMALY_VARIANTS if data.get(v)}, list(data.get("figures", [])),
                   data.get("default_method"), data.get("n_normal_test"), data.get("n_anomalous"))


@dataclass
class AnomalyStudyResult:
    """Stage ``anomaly``: where its summary is and the headline numbers."""

    summary: str
    auroc: float | None
    auroc_skip: float | None
    auroc_geometric: float | None
    default_method: str | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_summary(cls, summary: AnomalySummary, path: Path) -> AnomalyStudyResult:
        auroc = {v: m.get("auroc") for v, m in summary.variants.items()}
        return cls(str(path), auroc.get("noskip"), auroc.get("skip"), auroc.get("geometric"), summary.default_method)
