"""The report content model: plain dataclasses that every renderer reads.

A report is built from the numbers a run wrote, then handed to the HTML, Markdown and PDF
renderers. The model holds only plain values (strings, numbers, lists, dicts) so it can be
dumped to ``report.json`` and two rebuilds of the same run can be compared with ``diff``.

Example:
    >>> from aelab.report import Report, Section, Paragraph, Table
    >>> report = Report(
    ...     title="aelab report",
    ...     header={"Data set": "demo_data", "Seed": "0"},
    ...     sections=[
    ...         Section("1a", "Pretraining", [
    ...             Paragraph("Reconstruction loss per epoch."),
    ...             Table(["epoch", "loss"], [[0, 0.51], [1, 0.32]], reading="The loss falls."),
    ...         ]),
    ...         Section("2", "Clustering", [], skipped_reason="no embeddings found"),
    ...     ],
    ... )
    >>> Report.from_dict(report.to_dict()) == report
    True
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

from aelab.runs import atomic_write_text, to_plain

__all__ = [
    "Paragraph",
    "Table",
    "Figure",
    "Code",
    "Equation",
    "Highlights",
    "Block",
    "Section",
    "Report",
    "resolve_path",
]

Cell = Union[str, int, float, None]


@dataclass
class Paragraph:
    """A paragraph of plain text (no markup; every renderer escapes it)."""

    text: str
    kind: ClassVar[str] = "paragraph"


@dataclass
class Table:
    """A table of values.

    Attributes:
        columns: Column headings.
        rows: One list per row, each ``len(columns)`` long; cells are ``str``, ``int``,
            ``float`` or ``None`` (shown as an em dash).
        caption: Shown above the table.
        reading: Short plain-language interpretation shown under the table.
        float_format: ``str.format`` pattern applied to float cells.
    """

    columns: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    reading: str = ""
    float_format: str = "{:.4g}"
    kind: ClassVar[str] = "table"


@dataclass
class Figure:
    """An image file (PNG) with a caption.

    Attributes:
        path: Image path, relative to the run folder (``base_dir`` of ``render_all``) or absolute.
        caption: Shown under the figure.
        reading: Short plain-language interpretation shown under the caption.
        width_fraction: Width as a fraction of the text width, in (0, 1].
    """

    path: str
    caption: str = ""
    reading: str = ""
    width_fraction: float = 1.0
    kind: ClassVar[str] = "figure"


@dataclass
class Code:
    """A code listing shown verbatim in a monospace font."""

    text: str
    language: str = "python"
    caption: str = ""
    kind: ClassVar[str] = "code"


@dataclass
class Equation:
    """Maths written as plain Unicode text (``L = ‖x − x̂‖²``), shown monospace."""

    text: str
    kind: ClassVar[str] = "equation"


@dataclass
class Highlights:
    """Headline results, each linking to the section that explains it.

    Attributes:
        items: One dict per result with keys ``label`` (what was measured), ``value`` (the
            number, formatted), ``detail`` (one sentence of context) and ``section`` (the id of
            the section it links to, e.g. ``"1b"``; empty for no link).
    """

    items: list[dict[str, str]]
    kind: ClassVar[str] = "highlights"


Block = Union[Paragraph, Table, Figure, Code, Equation, Highlights]
_BLOCK_TYPES: dict[str, type] = {cls.kind: cls for cls in (Paragraph, Table, Figure, Code, Equation, Highlights)}


@dataclass
class Section:
    """A numbered part of the report.

    Attributes:
        id: Short identifier shown before the title and used as the link anchor (``"1a"``).
        title: Section heading.
        blocks: Content in reading order.
        skipped_reason: When set, the section was not run; renderers show the title and a
            visible "Skipped: <reason>" note (any blocks are still shown after it).
    """

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    skipped_reason: str | None = None


@dataclass
class Report:
    """A whole report: a title, headline results, an ordered key/value header and the sections.

    Renderers show, in this order: the title, the ``headline`` blocks (the first screen), the
    header, a table of contents and the sections.

    Attributes:
        title: Document title.
        header: Ordered facts about the run (data set, date, aelab version, seed, device,
            wall time per stage, ...). Values are shown as given.
        sections: Sections in reading order.
        headline: Blocks shown right under the title, before the header (usually one
            :class:`Highlights`).
    """

    title: str
    header: dict[str, str] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    headline: list[Block] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return plain, JSON-safe values; each block carries a ``"type"`` tag."""
        return {
            "title": self.title,
            "header": {str(k): str(v) for k, v in self.header.items()},
            "headline": [_block_to_dict(b) for b in self.headline],
            "sections": [
                {
                    "id": s.id,
                    "title": s.title,
                    "skipped_reason": s.skipped_reason,
                    "blocks": [_block_to_dict(b) for b in s.blocks],
                }
                for s in self.sections
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        """Rebuild a report from :meth:`to_dict` output (or a loaded ``report.json``)."""
        sections = [
            Section(
                id=s["id"],
                title=s["title"],
                blocks=[_block_from_dict(b) for b in s.get("blocks", [])],
                skipped_reason=s.get("skipped_reason"),
            )
            for s in data.get("sections", [])
        ]
        headline = [_block_from_dict(b) for b in data.get("headline", [])]
        return cls(title=data["title"], header=dict(data.get("header", {})), sections=sections, headline=headline)

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write the report as indented JSON (stable key order, UTF-8) and return the path."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=True)
        atomic_write_text(path, text + "\n")
        return path

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> "Report":
        """Read a report written by :meth:`save_json`."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))


def _block_to_dict(block: Block) -> dict[str, Any]:
    # to_plain turns numpy scalars that callers often pass as cells into JSON numbers.
    fields = {f.name: to_plain(getattr(block, f.name)) for f in dataclasses.fields(block)}
    return {"type": block.kind, **fields}


def _block_from_dict(data: dict[str, Any]) -> Block:
    data = dict(data)
    kind = data.pop("type", None)
    if kind not in _BLOCK_TYPES:
        raise ValueError(f"unknown report block type {kind!r}; expected one of {sorted(_BLOCK_TYPES)}")
    return _BLOCK_TYPES[kind](**data)


def resolve_path(path: str, base_dir: str | os.PathLike) -> Path:
    """Return ``path`` as given when absolute, else joined onto ``base_dir``."""
    p = Path(path)
    return p if p.is_absolute() else Path(base_dir) / p
