"""Render a :class:`~aelab.report.content.Report` as one self-contained HTML file.

Figures are embedded as base64 ``data:`` URIs and the CSS is inline, with no fonts, scripts or
links to anything outside the file, so the report opens offline from an e-mail attachment
and prints cleanly.
"""

from __future__ import annotations

import base64
import mimetypes
import os
from html import escape
from pathlib import Path

from aelab.report.content import Code, Equation, Figure, Highlights, Paragraph, Report, Section, Table, resolve_path
from aelab.report.tables import anchor, numeric_columns, section_label, table_cells

__all__ = ["render_html"]

# System font stacks only: a web font would be an external reference.
_CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
  color: #222; background: #fff; max-width: 52rem; margin: 2rem auto; padding: 0 1rem;
  line-height: 1.5; font-size: 15px; }
h1 { font-size: 1.7rem; margin-bottom: .5rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
h2 .sid { color: #666; font-weight: normal; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.header th { background: none; font-weight: 600; white-space: nowrap; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3rem; }
.scroll { overflow-x: auto; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: .9rem; color: #444; margin-top: .3rem; }
.reading { font-style: italic; color: #333; margin-top: .2rem; }
pre { background: #f6f6f6; border: 1px solid #e2e2e2; padding: .6rem .8rem; overflow-x: auto;
  font-size: .82rem; line-height: 1.35; white-space: pre-wrap; word-break: break-word; }
.code-caption { font-size: .9rem; font-weight: 600; margin-bottom: -.4rem; }
.equation { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; margin: .8rem 1.5rem; white-space: pre-wrap; }
.skipped { background: #fff4e0; border-left: 4px solid #e69500; padding: .5rem .8rem; font-weight: 600; }
.missing { color: #a00; }
p.text { white-space: pre-line; }
nav.toc ul { padding-left: 1.2rem; list-style: none; }
.highlights { display: grid; grid-template-columns: repeat(auto-fit, minmax(18rem, 1fr)); gap: .7rem;
  margin: 1rem 0 1.4rem; }
.card { display: block; border: 1px solid #ccc; border-left: 4px solid #2a6fb0; border-radius: 4px;
  padding: .6rem .8rem; color: inherit; text-decoration: none; background: #fafcff; }
a.card:hover { background: #eef4fb; }
.card .label { font-size: .85rem; color: #555; }
.card .value { font-size: 1.35rem; font-weight: 600; margin: .1rem 0; }
.card .detail { font-size: .85rem; color: #333; }
.card .more { font-size: .8rem; color: #2a6fb0; margin-top: .3rem; }
@media print {
  body { max-width: none; margin: 0; font-size: 11pt; }
  a { color: inherit; text-decoration: none; }
  figure, table, pre, .skipped { page-break-inside: avoid; }
  h2 { page-break-after: avoid; }
  .scroll { overflow: visible; }
}
"""


def render_html(report: Report, base_dir: str | os.PathLike = ".") -> str:
    """Return the report as a complete HTML document.

    Args:
        report: The content to render.
        base_dir: Folder that relative figure paths are resolved against.

    Returns:
        The HTML text (UTF-8 meta charset); every piece of report text is HTML-escaped.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(report.title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(report.title)}</h1>",
    ]
    for block in report.headline:
        parts.append(_block(block, Path(base_dir)))
    if report.header:
        parts.append('<table class="header">')
        for key, value in report.header.items():
            parts.append(f"<tr><th>{escape(str(key))}</th><td>{escape(str(value))}</td></tr>")
        parts.append("</table>")
    if report.sections:
        parts.append('<nav class="toc"><h2>Contents</h2><ul>')
        for section in report.sections:
            note = " (skipped)" if section.skipped_reason else ""
            parts.append(
                f'<li><a href="#{anchor(section)}">{escape(section_label(section))}</a>{note}</li>'
            )
        parts.append("</ul></nav>")
    for section in report.sections:
        parts.extend(_section(section, Path(base_dir)))
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _section(section: Section, base_dir: Path) -> list[str]:
    sid = f'<span class="sid">{escape(section.id)}.</span> ' if section.id else ""
    out = [f'<section id="{anchor(section)}">', f"<h2>{sid}{escape(section.title)}</h2>"]
    if section.skipped_reason:
        out.append(f'<p class="skipped">Skipped: {escape(section.skipped_reason)}</p>')
    out += [_block(block, base_dir) for block in section.blocks]
    out.append("</section>")
    return out


def _block(block, base_dir: Path) -> str:
    if isinstance(block, Paragraph):
        return f'<p class="text">{escape(block.text)}</p>'
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure(block, base_dir)
    if isinstance(block, Highlights):
        return _highlights(block)
    if isinstance(block, Code):
        lang = escape(block.language, quote=True)
        caption = f'<p class="code-caption">{escape(block.caption)}</p>\n' if block.caption else ""
        return f'{caption}<pre><code class="language-{lang}">{escape(block.text)}</code></pre>'
    if isinstance(block, Equation):
        return f'<div class="equation">{escape(block.text)}</div>'
    raise TypeError(f"unknown report block {type(block).__name__}")


def _highlights(block: Highlights) -> str:
    out = ['<div class="highlights">']
    for item in block.items:
        sid = item.get("section", "")
        inner = (f'<div class="label">{escape(item.get("label", ""))}</div>'
                 f'<div class="value">{escape(item.get("value", ""))}</div>'
                 f'<div class="detail">{escape(item.get("detail", ""))}</div>')
        if sid:
            more = f'<div class="more">Section {escape(sid)} &rarr;</div>'
            out.append(f'<a class="card" href="#{anchor(sid)}">{inner}{more}</a>')
        else:
            out.append(f'<div class="card">{inner}</div>')
    out.append("</div>")
    return "\n".join(out)


def _table(table: Table) -> str:
    numeric = numeric_columns(table)
    rows = ['<div class="scroll"><table>']
    if table.caption:
        rows.append(f"<caption>{escape(table.caption)}</caption>")
    rows.append("<thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in table.columns) + "</tr></thead>")
    rows.append("<tbody>")
    for cells in table_cells(table):
        tds = "".join(
            f'<td class="num">{escape(c)}</td>' if numeric[j] else f"<td>{escape(c)}</td>"
            for j, c in enumerate(cells)
        )
        rows.append(f"<tr>{tds}</tr>")
    rows.append("</tbody></table></div>")
    if table.reading:
        rows.append(f'<p class="reading">{escape(table.reading)}</p>')
    return "\n".join(rows)


def _figure(figure: Figure, base_dir: Path) -> str:
    path = resolve_path(figure.path, base_dir)
    caption = escape(figure.caption)
    if not path.is_file():
        # A missing picture should not cost the whole report; say so where it would have been.
        return f'<p class="missing">Figure not found: {escape(figure.path)}</p>'
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    width = max(1, min(100, round(figure.width_fraction * 100)))
    out = [
        "<figure>",
        f'<img src="data:{mime};base64,{data}" alt="{escape(figure.caption or path.name, quote=True)}"'
        f' style="width:{width}%">',
    ]
    if caption or figure.reading:
        out.append("<figcaption>")
        if caption:
            out.append(caption)
        if figure.reading:
            out.append(f'<div class="reading">{escape(figure.reading)}</div>')
        out.append("</figcaption>")
    out.append("</figure>")
    return "\n".join(out)
