"""Tests for aelab/report: the content model and the HTML, Markdown and PDF renderers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from pypdf import PdfReader  # noqa: E402

from aelab.report import (  # noqa: E402
    Code,
    Equation,
    Figure,
    Paragraph,
    Report,
    Section,
    Table,
    format_cell,
    render_all,
)
from aelab.report.tables import fit_widths  # noqa: E402

SKIP_REASON = "no anomaly folder in the data set"
EVIL = "<script>alert('x')</script> & <b>bold</b>"


def _make_figures(run_dir: Path) -> list[str]:
    figs = run_dir / "figures"
    figs.mkdir(parents=True)
    x = np.linspace(0, 1, 50)
    names = []
    for i, (name, y) in enumerate([("loss.png", np.exp(-3 * x)), ("scores.png", x**2)]):
        fig, ax = plt.subplots(figsize=(4, 2.5 + i), dpi=50)
        ax.plot(x, y)
        ax.set_title(name)
        fig.savefig(figs / name)
        plt.close(fig)
        names.append(f"figures/{name}")
    return names


def _make_report(figures: list[str]) -> Report:
    long_rows = [[i, 0.5 / (i + 1), None if i % 7 == 0 else f"img_{i}.png"] for i in range(60)]
    return Report(
        title="aelab report — demo_data",
        header={
            "Data set": "demo_data (1 000 images)",
            "Date": "2024-05-06T07:08:09",
            "aelab version": "0.1.0",
            "Seed": "0",
            "Device": "cpu",
            "Wall time: pretrain": "12.3 s",
        },
        sections=[
            Section("1a", "Pretraining the autoencoder", [
                Paragraph("The autoencoder learns to reconstruct images; loss α·MSE falls → 0.012 ± 0.001."),
                Equation("L(x) = ‖x − x̂‖² / N,   α = 0.5"),
                Table(
                    ["epoch", "train loss", "val loss", "note | pipe"],
                    [[0, 0.123456, 0.2, "start"], [1, 0.0456789, None, "a|b"], [2, 1e-5, 0.01, "end"]],
                    caption="Loss per epoch",
                    reading="Validation loss falls to 0.01 by epoch 2.",
                ),
                Figure(figures[0], caption="Training loss", reading="Loss drops fast.", width_fraction=0.7),
            ]),
            Section("1b", "Fine-tuning", [
                Paragraph(EVIL),
                Code("def f(x):\n    return x ** 2  # " + "long comment " * 20 + "\n", caption="config"),
                Table(["id", "score", "file"], long_rows, caption="Per-image scores", float_format="{:.3f}"),
                Figure(figures[1], caption="Score distribution"),
            ]),
            Section("3", "Anomaly detection", [], skipped_reason=SKIP_REASON),
        ],
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    report = _make_report(_make_figures(run_dir))
    out = run_dir / "report"
    paths = render_all(report, out, base_dir=run_dir)
    return report, run_dir, out, paths


def test_render_all_writes_four_files(rendered):
    _, _, out, paths = rendered
    assert set(paths) == {"html", "md", "pdf", "json"}
    for key, path in paths.items():
        assert path == out / f"report.{key}" and path.stat().st_size > 0


def test_html_is_self_contained_and_complete(rendered):
    report, _, _, paths = rendered
    html = paths["html"].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert "<link" not in html and "<script" not in html and "@import" not in html
    srcs = re.findall(r"<img[^>]*\bsrc=\"([^\"]*)\"", html)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for section in report.sections:
        assert f'id="sec-{section.id}"' in html and f'href="#sec-{section.id}"' in html
        assert section.title in html
    for value in ["0.1235", "0.04568", "1e-05", "—", "0.100", "img_59.png", "Validation loss falls"]:
        assert value in html
    assert f"Skipped: {SKIP_REASON}" in html
    assert "Wall time: pretrain" in html


def test_html_escapes_all_text(rendered):
    _, _, _, paths = rendered
    html = paths["html"].read_text(encoding="utf-8")
    assert "<script>" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;" in html
    assert "return x ** 2" in html


def test_pdf_has_text_images_and_unicode(rendered):
    report, _, _, paths = rendered
    reader = PdfReader(paths["pdf"])
    assert len(reader.pages) >= 2  # the 60-row table cannot fit on the first page
    assert sum(len(page.images) for page in reader.pages) >= 2
    text = "\n".join(page.extract_text() for page in reader.pages)
    flat = re.sub(r"\s+", " ", text)
    for section in report.sections:
        assert section.title in flat
    assert "0.1235" in text and "img_59.png" in text
    assert "α" in text and "±" in text and "→" in text
    assert f"Skipped: {SKIP_REASON}" in flat
    assert f"Page 1 of {len(reader.pages)}" in text
    # The long table repeats its heading row on the page it continues onto.
    assert sum("score" in page.extract_text() and "file" in page.extract_text() for page in reader.pages) >= 2
    assert [o.title for o in reader.outline] == [f"{s.id}. {s.title}" for s in report.sections]


def test_markdown_tables_and_figure_links(rendered):
    _, _, out, paths = rendered
    md = paths["md"].read_text(encoding="utf-8")
    assert "| epoch | train loss | val loss | note \\| pipe |" in md
    assert "|---:|---:|---:|---|" in md
    assert "| 1 | 0.04568 | — | a\\|b |" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 2
    for link in links:
        assert not Path(link).is_absolute() and (out / link).is_file()
    assert "```python\ndef f(x):" in md
    assert f"> **Skipped:** {SKIP_REASON}" in md
    assert "<script>" not in md  # raw HTML would run in some Markdown viewers


def test_dict_and_json_round_trip(rendered):
    report, _, _, paths = rendered
    assert Report.from_dict(report.to_dict()) == report
    assert Report.from_dict(json.loads(paths["json"].read_text(encoding="utf-8"))) == report
    assert Report.load_json(paths["json"]) == report


def test_numpy_cells_become_plain_json():
    report = Report("t", {}, [Section("1", "s", [Table(["a", "b"], [[np.int64(3), np.float32(0.5)]])])])
    data = json.loads(json.dumps(report.to_dict()))
    assert data["sections"][0]["blocks"][0]["rows"] == [[3, 0.5]]
    assert data["sections"][0]["blocks"][0]["type"] == "table"


def test_rendering_twice_is_identical(rendered):
    report, run_dir, out, paths = rendered
    first = {key: path.read_bytes() for key, path in paths.items()}
    again = render_all(report, out, base_dir=run_dir)
    for key, data in first.items():
        assert again[key].read_bytes() == data, key
    assert b"D:20240506070809" in first["pdf"]  # the header date, not the time of rendering


def test_missing_figure_is_reported_not_fatal(tmp_path):
    report = Report("t", {}, [Section("1", "s", [Figure("figures/nope.png", caption="gone")])])
    paths = render_all(report, tmp_path)
    assert "Figure not found: figures/nope.png" in paths["html"].read_text(encoding="utf-8")
    assert "Figure not found" in PdfReader(paths["pdf"]).pages[0].extract_text()


def test_format_cell():
    assert format_cell(0.123456) == "0.1235"
    assert format_cell(7) == "7" and format_cell(np.int64(7)) == "7"
    assert format_cell(None) == "—" and format_cell(float("nan")) == "—"
    assert format_cell(2.5, "{:.2f}") == "2.50"
    assert format_cell("x") == "x" and format_cell(True) == "True"


def test_fit_widths_keeps_narrow_columns_and_fills_total():
    widths = fit_widths([10, 10, 200], total=100, minimum=5)
    assert widths[:2] == [10, 10] and widths[2] == pytest.approx(80)
    widths = fit_widths([10, 20], total=100, minimum=5)
    assert sum(widths) == pytest.approx(100) and widths[1] > widths[0]


def test_multi_line_equations_keep_their_line_breaks_in_html():
    from aelab.report import render_html

    report = Report("r", {}, [Section("2a", "EKM", [Equation("u = softmax(−α d)\nw = u [1 − α (d − h)]")])])
    html = render_html(report)
    assert "u = softmax(−α d)\nw = u" in html
    css = html[html.index("<style>"):html.index("</style>")]
    assert ".equation" in css and "pre-wrap" in css.split(".equation", 1)[1].split("}", 1)[0]


def test_headline_round_trips_and_links_in_every_format(tmp_path):
    from aelab.report import Highlights

    items = [{"label": "Best test accuracy", "value": "97.9%", "detail": "fixmatch [x](javascript:y)", "section": "1b"},
             {"label": "Unlinked", "value": "1", "detail": "", "section": ""}]
    report = Report("r", {"k": "v"}, [Section("1b", "Few labels", [Paragraph("p")])], headline=[Highlights(items)])
    assert Report.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    paths = render_all(report, tmp_path)
    html = paths["html"].read_text(encoding="utf-8")
    assert html.index('class="highlights"') < html.index('class="header"')  # the headline comes first
    assert '<a class="card" href="#sec-1b">' in html and html.count('class="card"') == 2
    md = paths["md"].read_text(encoding="utf-8")
    assert "| [Best test accuracy](#sec-1b) | **97.9%** | fixmatch \\[x\\](javascript:y) |" in md
    assert "| Unlinked | **1** |  |" in md
    first = PdfReader(paths["pdf"]).pages[0]
    links = [a.get_object() for a in first.get("/Annots", []) if a.get_object().get("/Subtype") == "/Link"]
    assert len(links) == 2  # label and value of the linked row point at section 1b
