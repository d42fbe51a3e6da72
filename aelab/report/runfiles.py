"""Reading an ``aelab run`` folder for the report: JSON and CSV files, stage status, model.json.

The report reads only files; nothing here loads a checkpoint or runs a model.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

__all__ = ["read_json", "read_rows", "skipped", "find_model_json", "read_methods", "MODEL_JSON"]

MODEL_JSON = "model.json"


def read_json(path: Path) -> dict:
    """The JSON object in ``path``, or ``{}`` when the file does not exist."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV file with a header, or ``[]`` when the file does not exist."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def skipped(stages: dict, name: str) -> str | None:
    """Why stage ``name`` has no results (``None`` when it finished)."""
    st = stages.get(name)
    if st is None:
        return "this stage has not run yet"
    return st.get("reason") if st.get("status") != "done" else None


def find_model_json(run_dir: Path, stage_dirs: list[str]) -> tuple[str, dict] | None:
    """``(stage_dir, description)`` from the first of ``stage_dirs`` that holds a model.json."""
    for name in stage_dirs:
        path = run_dir / name / MODEL_JSON
        if name and path.is_file():
            return name, read_json(path)
    return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None


def read_methods(run_dir: Path) -> list[dict] | None:
    """Study 1b's ``study1/methods.csv`` with typed values, or ``None`` when there is none.

    Columns: ``method,description,uses_unlabelled,labels_per_class,val_acc,n_val,test_acc,
    seconds,run`` and optionally ``note`` (e.g. why a method did not run); empty cells
    (``test_acc`` without test labels) become ``None``.
    """
    rows = read_rows(run_dir / "study1" / "methods.csv")
    if not rows:
        return None
    return [
        {
            "method": r.get("method", ""),
            "description": r.get("description", ""),
            "uses_unlabelled": str(r.get("uses_unlabelled", "")).strip().lower() in ("1", "true", "yes"),
            "labels_per_class": _int(r.get("labels_per_class")),
            "val_acc": _float(r.get("val_acc")),
            "n_val": _int(r.get("n_val")),
            "test_acc": _float(r.get("test_acc")),
            "seconds": _float(r.get("seconds")),
            "run": r.get("run") or "",
            "note": r.get("note") or "",
        }
        for r in rows
    ]
