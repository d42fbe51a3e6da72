"""Render a :class:`~aelab.report.content.Report` as an A4 PDF with fpdf2.

Text is real, selectable text. fpdf2's built-in fonts only cover Latin-1, so the DejaVu fonts
that matplotlib ships are embedded when found, which renders α, ², → and ± as written;
without them the core fonts are used and other characters become ``?``.
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from pathlib import Path

from fpdf import FPDF, FontFace, XPos, YPos
from fpdf.enums import TextEmphasis

from aelab.report.content import Code, Equation, Figure, Highlights, Paragraph, Report, Section, Table, resolve_path
from aelab.report.tables import fit_widths, numeric_columns, section_label, table_cells

__all__ = ["render_pdf"]

# A fixed date keeps rebuilds byte-identical when the header gives no date to use instead.
_FIXED_DATE = datetime(2000, 1, 1, tzinfo=timezone.utc)
_LINE = 5.0  # body line height, mm
_GAP = 3.0  # space after a block, mm


class _ReportPDF(FPDF):
    """FPDF with the report's fonts and a page-number footer."""

    def __init__(self) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.set_margins(18, 16, 18)
        self.set_auto_page_break(True, margin=16)
        self.sans, self.mono, self.unicode = _add_fonts(self)
        self.section_links: dict[str, int] = {}  # section id -> internal link, set at its heading

    def link_to(self, section_id: str) -> int:
        """An internal link to the heading of section ``section_id`` (placed when it is drawn)."""
        if section_id not in self.section_links:
            self.section_links[section_id] = self.add_link()
        return self.section_links[section_id]

    def text_of(self, text: str) -> str:
        """Make ``text`` printable with the active fonts (Latin-1 only for core fonts)."""
        text = str(text).replace("\t", "    ")
        return text if self.unicode else text.encode("latin-1", "replace").decode("latin-1")

    def footer(self) -> None:
        self.set_y(-11)
        self.set_font(self.sans, size=8)
        self.set_text_color(110)
        self.cell(0, 5, f"Page {self.page_no()} of {{nb}}", align="C")
        self.set_text_color(0)


def _add_fonts(pdf: FPDF) -> tuple[str, str, bool]:
    try:
        import matplotlib

        ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    except ImportError:  # matplotlib is a dependency, but the PDF should not need it
        ttf = Path("/nonexistent")
    files = {
        ("DejaVu", ""): "DejaVuSans.ttf",
        ("DejaVu", "B"): "DejaVuSans-Bold.ttf",
        ("DejaVu", "I"): "DejaVuSans-Oblique.ttf",
        ("DejaVuMono", ""): "DejaVuSansMono.ttf",
    }
    if not all((ttf / name).is_file() for name in files.values()):
        return "Helvetica", "Courier", False
    for (family, style), name in files.items():
        pdf.add_font(family, style, str(ttf / name))
    return "DejaVu", "DejaVuMono", True


def _creation_date(report: Report) -> datetime:
    for key, value in report.header.items():
        if key.strip().lower() == "date":
            try:
                date = datetime.fromisoformat(str(value).strip())
            except ValueError:
                break
            # A naive date would otherwise be read in the machine's local time zone.
            return date if date.tzinfo else date.replace(tzinfo=timezone.utc)
    return _FIXED_DATE


def render_pdf(report: Report, base_dir: str | os.PathLike = ".") -> bytes:
    """Return the report as PDF bytes (A4, page numbers, bookmarks per section).

    The creation date is the header's ``date`` when it parses as ISO 8601, else a fixed
    date, so the same report gives the same bytes.

    Args:
        report: The content to render.
        base_dir: Folder that relative figure paths are resolved against.
    """
    pdf = _ReportPDF()
    pdf.set_creation_date(_creation_date(report))
    pdf.set_title(pdf.text_of(report.title))
    pdf.set_creator("aelab")
    pdf.add_page()
    pdf.set_font(pdf.sans, "B", 18)
    pdf.multi_cell(0, 9, pdf.text_of(report.title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    for block in report.headline:
        _block(pdf, block, Path(base_dir))
    if report.header:
        _header(pdf, report.header)
    for section in report.sections:
        _section(pdf, section, Path(base_dir))
    return bytes(pdf.output())


def _header(pdf: _ReportPDF, header: dict[str, str]) -> None:
    pdf.set_font(pdf.sans, size=9)
    keys = [pdf.text_of(k) for k in header]
    values = [pdf.text_of(v) for v in header.values()]
    natural = [max(pdf.get_string_width(v) for v in values) + 4]
    pdf.set_font(pdf.sans, "B", 9)  # keys are printed in bold, which is wider
    natural.insert(0, max(pdf.get_string_width(k) for k in keys) + 4)
    pdf.set_font(pdf.sans, size=9)
    total = min(pdf.epw, sum(natural))
    widths = fit_widths(natural, total, minimum=min(25, total / 2))
    with pdf.table(
        width=total, col_widths=widths, first_row_as_headings=False, align="LEFT",
        borders_layout="HORIZONTAL_LINES", text_align="LEFT", line_height=4.6, padding=(0.8, 1.5),
    ) as table:
        for key, value in zip(keys, values):
            row = table.row()
            row.cell(key, style=FontFace(emphasis="BOLD"))
            row.cell(value)
    pdf.ln(_GAP)


def _section(pdf: _ReportPDF, section: Section, base_dir: Path) -> None:
    label = pdf.text_of(section_label(section))
    # Start a new page rather than leave a heading alone at the bottom of one.
    if pdf.y > pdf.h - pdf.b_margin - 35:
        pdf.add_page()
    pdf.ln(4)
    pdf.start_section(label)
    if section.id:
        pdf.set_link(pdf.link_to(section.id), y=pdf.y, page=pdf.page)
    pdf.set_font(pdf.sans, "B", 14)
    pdf.multi_cell(0, 7, label, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_draw_color(190)
    pdf.line(pdf.l_margin, pdf.y + 0.5, pdf.w - pdf.r_margin, pdf.y + 0.5)
    pdf.set_draw_color(0)
    pdf.ln(3)
    if section.skipped_reason:
        pdf.set_font(pdf.sans, "B", 10)
        pdf.set_fill_color(255, 240, 214)
        pdf.multi_cell(0, _LINE, pdf.text_of(f"Skipped: {section.skipped_reason}"), fill=True,
                       padding=(1.5, 2.5), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(_GAP)
    for block in section.blocks:
        _block(pdf, block, base_dir)


def _block(pdf: _ReportPDF, block, base_dir: Path) -> None:
    if isinstance(block, Paragraph):
        _body(pdf, block.text)
    elif isinstance(block, Table):
        _table(pdf, block)
    elif isinstance(block, Figure):
        _figure(pdf, block, base_dir)
    elif isinstance(block, Highlights):
        _highlights(pdf, block)
    elif isinstance(block, Code):
        _code(pdf, block)
    elif isinstance(block, Equation):
        pdf.set_font(pdf.mono, size=10)
        pdf.set_x(pdf.l_margin + 10)
        pdf.multi_cell(pdf.epw - 10, _LINE + 0.5, pdf.text_of(block.text), align="L",
                       new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(_GAP)
    else:
        raise TypeError(f"unknown report block {type(block).__name__}")


def _highlights(pdf: _ReportPDF, block: Highlights) -> None:
    """One row per headline result: label and value (linked to its section), then the detail."""
    pdf.set_draw_color(170)
    pdf.set_font(pdf.sans, size=9.5)  # the table takes the font active when it is opened
    with pdf.table(
        width=pdf.epw, col_widths=(26, 27, 47), align="LEFT", text_align="LEFT", line_height=4.6,
        first_row_as_headings=False, padding=(1.2, 1.8), borders_layout="HORIZONTAL_LINES",
    ) as table:
        for item in block.items:
            link = pdf.link_to(item["section"]) if item.get("section") else None
            row = table.row()
            row.cell(pdf.text_of(item.get("label", "")), style=FontFace(emphasis=TextEmphasis.NONE, size_pt=9.5),
                     link=link)
            row.cell(pdf.text_of(item.get("value", "")), style=FontFace(emphasis="BOLD", size_pt=12), link=link)
            detail = item.get("detail", "") + (f" (section {item['section']})" if item.get("section") else "")
            row.cell(pdf.text_of(detail), style=FontFace(emphasis=TextEmphasis.NONE, size_pt=9))
    pdf.set_draw_color(0)
    pdf.ln(_GAP + 1)


def _body(pdf: _ReportPDF, text: str, size: float = 10, style: str = "", align: str = "L") -> None:
    pdf.set_font(pdf.sans, style, size)
    pdf.multi_cell(0, size * 0.5, pdf.text_of(text), align=align, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(_GAP)


def _table(pdf: _ReportPDF, table: Table) -> None:
    if table.caption:
        pdf.set_font(pdf.sans, "B", 9.5)
        pdf.multi_cell(0, 5, pdf.text_of(table.caption), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(1)
    if not table.columns:
        return
    heads = [pdf.text_of(c) for c in table.columns]
    cells = [[pdf.text_of(c) for c in row] for row in table_cells(table)]
    # Shrink the font for wide tables before resorting to wrapping cell text.
    for size in (9, 8, 7, 6):
        pdf.set_font(pdf.sans, "B", size)  # headings are bold
        whole = [pdf.get_string_width(h) for h in heads]
        words = [max((pdf.get_string_width(w) for w in h.split()), default=0) for h in heads]
        pdf.set_font(pdf.sans, size=size)
        data = [max((pdf.get_string_width(row[j]) for row in cells), default=0) for j in range(len(heads))]
        natural = [max(h, d) + 4 for h, d in zip(whole, data)]
        if sum(natural) > pdf.epw:
            # Headings may wrap between words; data cells should not when avoidable.
            natural = [max(w, d) + 4 for w, d in zip(words, data)]
        if sum(natural) <= pdf.epw:
            break
    total = min(pdf.epw, sum(natural) * 1.15)
    widths = fit_widths(natural, total, minimum=min(12, total / len(heads)))
    align = tuple("RIGHT" if num else "LEFT" for num in numeric_columns(table))
    pdf.set_draw_color(170)
    with pdf.table(
        width=total, col_widths=widths, align="LEFT", text_align=align, line_height=size * 0.48,
        headings_style=FontFace(emphasis="BOLD", fill_color=(235, 235, 235)), repeat_headings=1,
        padding=(0.8, 1.5), borders_layout="ALL",
    ) as t:
        t.row(heads)
        for row in cells:
            t.row(row)
    pdf.set_draw_color(0)
    pdf.ln(1.5)
    if table.reading:
        _body(pdf, table.reading, size=9, style="I")
    else:
        pdf.ln(_GAP - 1.5)


def _figure(pdf: _ReportPDF, figure: Figure, base_dir: Path) -> None:
    path = resolve_path(figure.path, base_dir)
    if not path.is_file():
        pdf.set_text_color(170, 0, 0)
        _body(pdf, f"Figure not found: {figure.path}", size=9)
        pdf.set_text_color(0)
        return
    from PIL import Image  # fpdf2 depends on Pillow

    with Image.open(path) as img:
        px_w, px_h = img.size
    w = pdf.epw * min(max(figure.width_fraction, 0.05), 1.0)
    h = w * px_h / px_w
    usable = pdf.h - pdf.t_margin - pdf.b_margin - 15  # leave room for the caption
    if h > usable:  # a tall figure is scaled to fit one page
        w, h = w * usable / h, usable
    if pdf.y + h > pdf.h - pdf.b_margin:
        pdf.add_page()
    x = pdf.l_margin + (pdf.epw - w) / 2
    pdf.image(str(path), x=x, y=pdf.y, w=w, h=h, alt_text=pdf.text_of(figure.caption) or None)
    pdf.set_y(pdf.y + h + 1.5)
    if figure.caption:
        _body(pdf, figure.caption, size=9, align="C")
    if figure.reading:
        _body(pdf, figure.reading, size=9, style="I", align="C")
    if not (figure.caption or figure.reading):
        pdf.ln(_GAP)


def _code(pdf: _ReportPDF, code: Code) -> None:
    if code.caption:
        pdf.set_font(pdf.sans, "B", 9)
        pdf.multi_cell(0, 5, pdf.text_of(code.caption), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    size = 7.5
    pdf.set_font(pdf.mono, size=size)
    pad = 2.0
    per_line = max(20, math.floor((pdf.epw - 2 * pad) / pdf.get_string_width("M")) - 1)
    # Hard-wrap ourselves: word wrapping would reflow code and lose its indentation.
    lines = []
    for line in pdf.text_of(code.text.rstrip("\n")).split("\n"):
        line = line.rstrip()
        lines.extend([line[i : i + per_line] for i in range(0, len(line), per_line)] or [""])
    pdf.set_fill_color(244, 244, 244)
    pdf.multi_cell(0, size * 0.45, "\n".join(lines), fill=True, align="L", wrapmode="CHAR",
                   padding=(1.5, pad), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(_GAP)
