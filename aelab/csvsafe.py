"""CSV cells that are safe to open in a spreadsheet and always valid UTF-8.

Every CSV that aelab writes goes through :func:`safe_cell` (via `aelab.runs.write_csv`):

* **Formula injection** (OWASP, "CSV Injection"): a text cell starting with ``=``, ``+``, ``-``,
  ``@``, a tab or a carriage return is prefixed with a single quote ``'``, so a spreadsheet shows
  it as text instead of evaluating it (a file named ``=HYPERLINK("http://x","y").png`` stays a
  name). Cells that are plain numbers (``-1``, ``+2.5e-3``) are left as they are.
* **Undecodable file names**: names that are not valid UTF-8 reach Python as lone surrogates
  (``os.fsdecode``); their bytes are written as ``\\xNN`` escapes (``caf\\xe9.png``) instead of
  aborting the write. A carriage return inside a cell is written as ``\\r`` (it would split
  the row otherwise).

Example:
    >>> safe_cell('=HYPERLINK("http://x","y")')
    '\\'=HYPERLINK("http://x","y")'
    >>> safe_cell("-1"), safe_cell(-0.5), safe_cell("caf\\udce9.png")
    ('-1', -0.5, 'caf\\\\xe9.png')
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["FORMULA_START", "printable", "safe_cell"]

#: First characters that make a spreadsheet treat a cell as a formula (OWASP CSV Injection).
FORMULA_START: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def printable(text: str) -> str:
    """``text`` as valid UTF-8: undecodable bytes (lone surrogates) become ``\\xNN`` escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:  # surrogates U+DC80..U+DCFF stand for the raw bytes 0x80..0xFF (PEP 383)
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # other lone surrogates: \udXXX
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows literally; non-text values are returned unchanged."""
    if not isinstance(value, str):
        return value
    text = printable(value)
    if text.startswith(FORMULA_START) and not _NUMBER.fullmatch(text):
        text = "'" + text
    # A lone CR is not quoted by the csv module (lines end in LF) and would split the row.
    return text.replace("\r", "\\r")
