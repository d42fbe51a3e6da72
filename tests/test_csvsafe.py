"""CSV cells safe to open in a spreadsheet (OWASP CSV injection) and always valid UTF-8."""

from __future__ import annotations

import csv

import pytest

from aelab.csvsafe import safe_cell
from aelab.runs import MetricsLogger, write_csv

HOSTILE = ['=HYPERLINK("http://x","y")&".png"', "+cmd|' /C calc'!A0", "-2+3+cmd", "@SUM(A1)", "\tx", "\rx"]


@pytest.mark.parametrize("cell", HOSTILE)
def test_formula_cells_get_a_leading_quote(cell):
    assert safe_cell(cell) == "'" + cell.replace("\r", "\\r")


@pytest.mark.parametrize("cell", ["-1", "+2.5", "-3e-4", ".5", "cat.png", "a=b", "'=already"])
def test_numbers_and_plain_text_are_kept(cell):
    assert safe_cell(cell) == cell


def test_non_text_values_are_unchanged():
    assert safe_cell(-0.25) == -0.25 and safe_cell(3) == 3 and safe_cell(None) is None


def test_undecodable_bytes_are_written_as_backslash_escapes():
    # os.fsdecode(b"caf\xe9.png") on a UTF-8 system: the byte 0xE9 becomes the surrogate U+DCE9.
    assert safe_cell("caf\udce9.png") == "caf\\xe9.png"
    assert safe_cell("=caf\udce9") == "'=caf\\xe9"


def test_write_csv_is_valid_utf8_and_neutralises_every_cell(tmp_path):
    path = tmp_path / "out.csv"
    write_csv(path, ["id", "=header"], [[name, -1.5] for name in HOSTILE] + [["caf\udce9.png", 2]])
    rows = list(csv.reader(open(path, encoding="utf-8", newline="")))  # strict UTF-8 decode
    assert rows[0] == ["id", "'=header"]
    assert [r[0] for r in rows[1:]] == ["'" + c.replace("\r", "\\r") for c in HOSTILE] + ["caf\\xe9.png"]
    assert all(not r[0].startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows[1:])
    assert [r[1] for r in rows[1:]] == ["-1.5"] * len(HOSTILE) + ["2"]  # numbers stay numbers


def test_metrics_logger_goes_through_the_same_cells(tmp_path):
    log = MetricsLogger(tmp_path / "metrics.csv")
    log.log({"epoch": 0, "=note": "@x", "loss": -0.5})
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["epoch,'=note,loss", "0,'@x,-0.5"]
