"""Helpers shared by the renderers: cell formatting, anchors and PDF column widths."""

from __future__ import annotations

import math
import numbers
import re
from typing import Sequence

from aelab.report.content import Report, Section, Table

__all__ = [
    "MISSING", "format_cell", "is_number", "table_cells", "numeric_columns", "anchor", "section_label", "fit_widths",
    "printable", "printable_report",
]

# An em dash reads as "no value" in every output format, unlike "None" or an empty cell.
MISSING = "\u2014"


def is_number(value: object) -> bool:
    """True for ints and floats (numpy scalars included) but not bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def format_cell(value: object, float_format: str = "{:.4g}") -> str:
    """Format one table cell for display.

    Floats use ``float_format``; ints are shown as is; ``None`` as an em dash; anything else
    with ``str``.

    Example:
        >>> format_cell(0.123456), format_cell(3), format_cell(None)
        ('0.1235', '3', '—')
    """
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value):
            return MISSING
        return float_format.format(value)
    return str(value)


def table_cells(table: Table) -> list[list[str]]:
    """All rows of ``table`` as display strings, padded or cut to the number of columns."""
    n = len(table.columns)
    out = []
    for row in table.rows:
        cells = [format_cell(v, table.float_format) for v in row[:n]]
        out.append(cells + [""] * (n - len(cells)))
    return out


def numeric_columns(table: Table) -> list[bool]:
    """Per column: True when every non-empty cell is a number (such columns align right)."""
    flags = []
    for j in range(len(table.columns)):
        values = [row[j] for row in table.rows if j < len(row) and row[j] is not None]
        flags.append(bool(values) and all(is_number(v) for v in values))
    return flags


def anchor(section: Section | str) -> str:
    """A stable, URL-safe fragment id for a section or a section id (``"sec-1a"``)."""
    sid = section.id if isinstance(section, Section) else str(section)
    return "sec-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", sid).strip("-") or "x")


def printable(text: str) -> str:
    r"""``text`` with lone surrogates written as escapes, so it can be encoded as UTF-8.

    A file or class name that is not valid UTF-8 reaches Python as lone surrogates
    (``os.fsdecode``); it is shown as ``caf\xe9`` rather than crashing the writer.

    Example:
        >>> printable("caf\udce9.png"), printable("café")
        ('caf\\xe9.png', 'café')
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that did not come from a byte (\ud800..\udc7f)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _printable_values(value):
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(str(k)): _printable_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable_values(v) for v in value]
    return value


def printable_report(report: Report) -> Report:
    """A copy of ``report`` in which every string passed through :func:`printable`."""
    return Report.from_dict(_printable_values(report.to_dict()))


def section_label(section: Section) -> str:
    """Heading text: ``"1a. Pretraining"`` (just the title when the id is empty)."""
    return f"{section.id}. {section.title}" if section.id else section.title


def fit_widths(natural: Sequence[float], total: float, minimum: float) -> list[float]:
    """Share ``total`` width between columns whose unwrapped text needs ``natural`` widths.

    Columns that fit keep their natural width when everything fits (spare width is spread
    evenly so the table spans the page); otherwise narrow columns keep their width and the
    wide ones share the rest in proportion, so short numbers never wrap while long text does.

    Args:
        natural: Width each column needs to show its longest cell on one line.
        total: Available width.
        minimum: Smallest width any column gets.

    Returns:
        One width per column, summing to ``total``.
    """
    n = len(natural)
    if n == 0:
        return []
    minimum = min(minimum, total / n)
    want = [max(w, minimum) for w in natural]
    if sum(want) <= total:
        spare = (total - sum(want)) / n
        return [w + spare for w in want]
    # Water-filling: find the cap c so that sum(min(w, c)) == total; columns under it are kept.
    fixed = [False] * n
    while True:
        free = [i for i in range(n) if not fixed[i]]
        budget = total - sum(want[i] for i in range(n) if fixed[i])
        cap = budget / len(free)
        newly = [i for i in free if want[i] <= cap]
        if not newly or len(newly) == len(free):
            break
        for i in newly:
            fixed[i] = True
    return [want[i] if fixed[i] else cap for i in range(n)]
