"""The HTML report in a real browser (headless Chromium via Playwright) and the PDF as page images.

Needs Debian's ``chromium`` and poppler's ``pdftoppm`` (``.ci/run`` installs them when missing) and
the ``playwright`` Python package (the ``test`` extra; its own browser download is not used).
Without them the tests skip, except under ``CI=true``, where a missing tool is a failure.
Screenshots and page images are written under pytest's temporary folder, or under
``$AELAB_TEST_ARTIFACTS`` when that is set, to be looked at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pypdf import PdfReader

from aelab.report.build import build_report

CHROMIUM = os.environ.get("AELAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}


def _require(ok: bool, what: str) -> None:
    """Skip when a tool is missing, but fail under CI, where the check must run."""
    if ok:
        return
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is missing and CI is set: the browser and PDF checks must run in CI")
    pytest.skip(f"{what} is missing (apt-get install chromium poppler-utils; pip install -e '.[test]')")


@pytest.fixture(scope="module")
def report(tmp_path_factory, make_run_folder):
    run = make_run_folder(tmp_path_factory.mktemp("browser") / "run", classes=("zero", "one", "two"))
    paths = build_report(run)
    artifacts = Path(os.environ.get("AELAB_TEST_ARTIFACTS") or run / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    return paths, artifacts


def _open(html: Path, shots: Path) -> dict:
    """Load the report, collect what the checks need, save screenshots; returns plain data."""
    from playwright.sync_api import sync_playwright

    seen: dict = {"errors": [], "requests": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: seen["errors"].append(str(e)))
            page.on("request", lambda r: seen["requests"].append(r.url))
            page.goto(html.as_uri(), wait_until="load")
            seen["images"] = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
            seen["links"] = page.eval_on_selector_all(
                "a[href]", "els => els.map(e => [e.getAttribute('href'), e.closest('nav, .highlights') !== null])")
            seen["ids"] = page.eval_on_selector_all("[id]", "els => els.map(e => e.id)")
            box = page.locator(".highlights").bounding_box()
            seen["headline_bottom"] = box["y"] + box["height"] if box else None
            page.screenshot(path=str(shots / "report-top.png"))
            page.click(".highlights a[href='#sec-3']")
            page.wait_for_function("window.scrollY > 0")
            seen["section3_top"] = page.evaluate("document.getElementById('sec-3').getBoundingClientRect().top")
            page.screenshot(path=str(shots / "report-section3.png"))
        finally:
            browser.close()
    return seen


def test_html_report_in_chromium(request):
    try:
        import playwright  # noqa: F401
    except ImportError:
        _require(False, "the playwright package")
    _require(Path(CHROMIUM).is_file(), f"chromium ({CHROMIUM})")
    paths, shots = request.getfixturevalue("report")
    seen = _open(paths["html"], shots)
    assert seen["errors"] == []
    # Self-contained: nothing is fetched but the file itself and its data: figures.
    assert all(u.startswith(("file:", "data:")) for u in seen["requests"]), seen["requests"]
    assert len(seen["images"]) >= 4 and all(c and w > 0 and h > 0 for c, w, h in seen["images"]), seen["images"]
    internal = [h for h, _ in seen["links"] if h.startswith("#")]
    assert len(internal) == len(seen["links"])  # no link leaves the report
    assert {h[1:] for h in internal} <= set(seen["ids"])  # every contents and headline link resolves
    assert {"#sec-1b", "#sec-2b", "#sec-3"} <= {h for h, in_nav in seen["links"] if in_nav}
    assert seen["headline_bottom"] is not None and seen["headline_bottom"] <= VIEWPORT["height"]  # first screen
    assert abs(seen["section3_top"]) < 5  # the headline link scrolled section 3 to the top
    for name in ("report-top.png", "report-section3.png"):
        with Image.open(shots / name) as img:
            assert img.size == (VIEWPORT["width"], VIEWPORT["height"])


def test_pdf_pages_as_images(request):
    _require(shutil.which("pdftoppm") is not None, "pdftoppm (poppler-utils)")
    paths, shots = request.getfixturevalue("report")
    n_pages = len(PdfReader(paths["pdf"]).pages)
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(paths["pdf"]), str(shots / "page")], check=True,
                   capture_output=True, timeout=120)
    pages = sorted(shots.glob("page-*.png"))
    assert len(pages) == n_pages >= 3
    for page in pages:
        with Image.open(page) as img:
            gray = np.asarray(img.convert("L"))
        assert gray.shape[0] > gray.shape[1]  # A4 portrait
        ink = (gray < 200).mean()
        assert 0.003 < ink < 0.6, (page.name, ink)  # neither blank nor a black page
    # The first page opens with the headline results, whose rows link into the document.
    first = PdfReader(paths["pdf"]).pages[0]
    assert "Whattheunlabelledimagesadd" in "".join(first.extract_text().split())  # wrapped in a cell
    links = [a.get_object() for a in first.get("/Annots", []) if a.get_object().get("/Subtype") == "/Link"]
    assert len(links) >= 4
