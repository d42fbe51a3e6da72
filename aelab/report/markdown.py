"""Render a :class:`~aelab.report.content.Report` as GitHub-flavoured Markdown.

Figures are linked by path relative to the folder the ``.md`` file is written into, so the
report displays in a repository browser or an editor preview next to its ``figures/``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from aelab.report.content import Code, Equation, Figure, Paragraph, Report, Section, Table, resolve_path
from aelab.report.tables import anchor, numeric_columns, section_label, table_cells

__all__ = ["render_markdown"]

# Only what would start a raw HTML tag is escaped: Markdown viewers render raw HTML, but
# escaping every * and _ would make the plain .md file hard to read.
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def _text(text: str) -> str:
    return _TAG_START.sub("&lt;", text)


def _cell(text: str) -> str:
    return _text(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def render_markdown(
    report: Report, out_dir: str | os.PathLike = ".", base_dir: str | os.PathLike | None = None
) -> str:
    """Return the report as Markdown text.

    Args:
        report: The content to render.
        out_dir: Folder the Markdown file will live in; figure links are relative to it.
        base_dir: Folder relative figure paths are resolved against (default ``out_dir``).

    Returns:
        Markdown with GFM pipe tables and fenced code blocks, ending in a newline.
    """
    out_dir = Path(out_dir)
    base_dir = Path(base_dir) if base_dir is not None else out_dir
    lines = [f"# {_text(report.title)}", ""]
    for key, value in report.header.items():
        lines.append(f"- **{_text(str(key))}:** {_text(str(value))}")
    if report.header:
        lines.append("")
    if report.sections:
        lines += ["## Contents", ""]
        for section in report.sections:
            note = " (skipped)" if section.skipped_reason else ""
            lines.append(f"- [{_text(section_label(section))}](#{anchor(section)}){note}")
        lines.append("")
    for section in report.sections:
        lines += _section(section, out_dir, base_dir)
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


def _section(section: Section, out_dir: Path, base_dir: Path) -> list[str]:
    # An explicit anchor keeps the contents links stable whatever slug rules a viewer uses.
    out = [f'<a id="{anchor(section)}"></a>', "", f"## {_text(section_label(section))}", ""]
    if section.skipped_reason:
        out += [f"> **Skipped:** {_text(section.skipped_reason)}", ""]
    for block in section.blocks:
        if isinstance(block, Paragraph):
            out += [_text(block.text), ""]
        elif isinstance(block, Table):
            out += _table(block)
        elif isinstance(block, Figure):
            out += _figure(block, out_dir, base_dir)
        elif isinstance(block, Code):
            if block.caption:
                out += [f"*{_text(block.caption)}*", ""]
            out += _fenced(block.text, block.language)
        elif isinstance(block, Equation):
            out += _fenced(block.text, "text")
        else:
            raise TypeError(f"unknown report block {type(block).__name__}")
    return out


def _fenced(text: str, language: str) -> list[str]:
    # The fence must be longer than any backtick run inside the code.
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{language}", text.rstrip("\n"), fence, ""]


def _table(table: Table) -> list[str]:
    out = []
    if table.caption:
        out += [f"**{_text(table.caption)}**", ""]
    numeric = numeric_columns(table)
    out.append("| " + " | ".join(_cell(c) for c in table.columns) + " |")
    out.append("|" + "|".join("---:" if num else "---" for num in numeric) + "|")
    for cells in table_cells(table):
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    out.append("")
    if table.reading:
        out += [f"*{_text(table.reading)}*", ""]
    return out


def _figure(figure: Figure, out_dir: Path, base_dir: Path) -> list[str]:
    path = resolve_path(figure.path, base_dir)
    try:
        link = Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        link = path.resolve().as_posix()
    # Angle brackets allow spaces and parentheses in the link target.
    target = f"<{link}>" if re.search(r"[\s()]", link) else link
    alt = figure.caption or path.name
    alt = alt.replace("[", "\\[").replace("]", "\\]").replace("\n", " ")
    out = [f"![{_text(alt)}]({target})", ""]
    if figure.caption:
        out += [f"*{_text(figure.caption)}*", ""]
    if figure.reading:
        out += [f"*{_text(figure.reading)}*", ""]
    return out
