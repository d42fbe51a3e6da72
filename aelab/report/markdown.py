"""Render a :class:`~aelab.report.content.Report` as GitHub-flavoured Markdown.

Figures are linked by path relative to the folder the ``.md`` file is written into, so the
report displays in a repository browser or an editor preview next to its ``figures/``.

Every piece of report text (which holds user-provided class names, file names and paths) is
Markdown-escaped: a class named ``![x](http://host/x.png)`` or ``[a](javascript:...)`` shows as
those characters, never as a remote image, a live link or raw HTML. The only markup in the file
is the renderer's own (headings, tables, the figures' relative links, the contents links).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

from aelab.report.content import Code, Equation, Figure, Highlights, Paragraph, Report, Section, Table, resolve_path
from aelab.report.tables import anchor, numeric_columns, section_label, table_cells

__all__ = ["render_markdown"]

# CommonMark's backslash-escapable characters that can start inline markup: links and images
# ([ ] !), raw HTML and autolinks (< >), code spans, emphasis, strikethrough, entities, tables.
_INLINE = re.compile(r"([\\`*_\[\]<>!~&|{}])")
# Markup that only counts at the start of a line: headings, lists, rules, setext lines
# (a quote's ">" is escaped everywhere already).
_LINE_START = re.compile(r"^(\s*)(\d*)([.)](?=\s|$)|(?<![\d])[#+=-](?=[\s#=-]|$))", re.M)
# What GitHub turns into a link without any markup ("https://host", "www.host").
_AUTOLINK = re.compile(r"(?i):(?=//)|(?<=\bwww)\.")


def _text(text: str) -> str:
    """``text`` as literal Markdown: every character that could start markup is escaped."""
    text = _INLINE.sub(r"\\\1", str(text))
    text = _AUTOLINK.sub(lambda m: "\\" + m.group(0), text)
    return _LINE_START.sub(lambda m: m.group(1) + m.group(2) + "\\" + m.group(3), text)


def _cell(text: str) -> str:
    return _text(text).replace("\r", "").replace("\n", "<br>")


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
    for block in report.headline:
        lines += _block(block, out_dir, base_dir)
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
        out += _block(block, out_dir, base_dir)
    return out


def _block(block, out_dir: Path, base_dir: Path) -> list[str]:
    if isinstance(block, Paragraph):
        return [_text(block.text), ""]
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure(block, out_dir, base_dir)
    if isinstance(block, Highlights):
        return _highlights(block)
    if isinstance(block, Code):
        caption = [f"*{_text(block.caption)}*", ""] if block.caption else []
        return caption + _fenced(block.text, re.sub(r"[^A-Za-z0-9_+-]", "", block.language))
    if isinstance(block, Equation):
        return _fenced(block.text, "text")
    raise TypeError(f"unknown report block {type(block).__name__}")


def _highlights(block: Highlights) -> list[str]:
    out = ["| result | value | details |", "|---|---|---|"]
    for item in block.items:
        label = _cell(item.get("label", ""))
        if item.get("section"):
            label = f"[{label}](#{anchor(item['section'])})"
        out.append(f"| {label} | **{_cell(item.get('value', ''))}** | {_cell(item.get('detail', ''))} |")
    return out + [""]


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
    # Percent-encoded: spaces, brackets and a ":" (which could read as a URL scheme) cannot
    # change what the link points to; the target is always a file beside the report.
    target = quote(link, safe="/._-~")
    alt = (figure.caption or path.name).replace("\n", " ")
    out = [f"![{_text(alt)}]({target})", ""]
    if figure.caption:
        out += [f"*{_text(figure.caption)}*", ""]
    if figure.reading:
        out += [f"*{_text(figure.reading)}*", ""]
    return out
