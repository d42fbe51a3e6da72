"""Report: a renderer-independent content model and its HTML, Markdown and PDF renderers.

Example:
    >>> from aelab.report import Report, Section, Paragraph, render_all
    >>> report = Report("aelab report", {"Seed": "0"}, [Section("1", "Intro", [Paragraph("Hi")])])
    >>> paths = render_all(report, "runs/report/0")  # doctest: +SKIP
    >>> sorted(paths)  # doctest: +SKIP
    ['html', 'json', 'md', 'pdf']
"""

from __future__ import annotations

import os
from pathlib import Path

from aelab.report.content import Block, Code, Equation, Figure, Highlights, Paragraph, Report, Section, Table
from aelab.report.html import render_html
from aelab.report.markdown import render_markdown
from aelab.report.pdf import render_pdf
from aelab.report.tables import format_cell, printable_report

__all__ = [
    "Block",
    "Code",
    "Equation",
    "Figure",
    "Highlights",
    "Paragraph",
    "Report",
    "Section",
    "Table",
    "format_cell",
    "render_all",
    "render_html",
    "render_markdown",
    "render_pdf",
]


def render_all(
    report: Report, out_dir: str | os.PathLike, base_dir: str | os.PathLike | None = None
) -> dict[str, Path]:
    """Write ``report.html``, ``report.md``, ``report.pdf`` and ``report.json`` into ``out_dir``.

    Each file is written atomically, so a failed render never leaves a half-written report
    beside a good one from an earlier build. Text that is not valid Unicode (a file name read
    from undecodable bytes) is written with ``\\xNN`` escapes instead of failing.

    Args:
        report: The content to render.
        out_dir: Destination folder (created if missing).
        base_dir: Folder relative figure paths are resolved against (default ``out_dir``).

    Returns:
        ``{"html": path, "md": path, "pdf": path, "json": path}``.
    """
    from aelab.runs import atomic_write_bytes, atomic_write_text

    report = printable_report(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(base_dir) if base_dir is not None else out
    paths = {key: out / f"report.{key}" for key in ("html", "md", "pdf", "json")}
    # The PDF is built first: it is the most likely to fail (e.g. an unreadable image).
    atomic_write_bytes(paths["pdf"], render_pdf(report, base))
    atomic_write_text(paths["html"], render_html(report, base))
    atomic_write_text(paths["md"], render_markdown(report, out, base))
    report.save_json(paths["json"])
    return paths
