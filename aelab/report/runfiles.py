"""Reading an ``aelab run`` folder for the report: JSON and CSV files and model.json.

The typed files of a run (``stages.json``, ``study1/methods.csv`` ...) are read through `aelab.results`;
nothing here loads a checkpoint or runs a model.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from aelab.layout import RunLayout

__all__ = ["read_json", "read_rows", "find_model_json"]


def read_json(path: Path) -> dict:
    """The JSON object in ``path``, or ``{}`` when the file does not exist."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV file with a header, or ``[]`` when the file does not exist."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def find_model_json(layout: RunLayout, stage_dirs: list[str]) -> tuple[str, dict] | None:
    """``(stage_dir, description)`` from the first of ``stage_dirs`` that holds a model.json."""
    for name in stage_dirs:
        path = layout.model_json(name)
        if name and path.is_file():
            return name, read_json(path)
    return None
