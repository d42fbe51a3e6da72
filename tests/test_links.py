"""Issue 22: aelab writes only inside the run folder. A symbolic link planted at any name a run
folder holds (pointing at the user's files) is replaced by the new file, never followed; a linked
subfolder or lock file is refused with one line. Each test checks that no link target changed."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from aelab.cli.main import main
from tests.cli.test_main import _images, _model, _one_line
from tests.report.conftest import write_run_folder


def _files(folder: Path) -> dict[str, bytes]:
    """Regular files under ``folder`` (links not followed), by relative path."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = Path(dirpath) / name
            if not path.is_symlink():
                out[path.relative_to(folder).as_posix()] = path.read_bytes()
    return out


def _plant_links(run: Path, names, outside: Path) -> dict[Path, bytes]:
    """Replace each name in ``run`` by a link to a file in ``outside`` (holding the same bytes, so
    reading through the link still works; a name not there yet links to a user's file). Returns
    the targets and their bytes."""
    outside.mkdir(parents=True, exist_ok=True)
    targets = {}
    for rel in sorted(names):
        path = run / rel
        target = outside / rel.replace("/", "__")
        target.write_bytes(path.read_bytes() if path.is_file() else f"the user's {rel}\n".encode())
        if path.exists():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
        targets[target] = target.read_bytes()
    return targets


def _unchanged(targets: dict[Path, bytes]) -> None:
    changed = [p.name for p, data in targets.items() if p.read_bytes() != data]
    assert not changed, f"link targets overwritten: {changed}"


def test_report_replaces_links_at_every_name_and_never_writes_through_them(tmp_path):
    first = write_run_folder(tmp_path / "first")
    before = _files(first)
    assert main(["report", str(first)]) == 0
    after = _files(first)
    written = {rel for rel, data in after.items() if before.get(rel) != data}
    assert {"figures/training_curves.png", "report.pdf", "report.html", "report.md", "report.json"} <= written

    run = write_run_folder(tmp_path / "run")
    targets = _plant_links(run, set(_files(run)) | written, tmp_path / "home")
    assert main(["report", str(run)]) == 0
    _unchanged(targets)
    for rel in written:
        assert (run / rel).is_file() and not (run / rel).is_symlink(), rel


def test_report_refuses_a_linked_subfolder(tmp_path, capsys):
    run = write_run_folder(tmp_path / "run")
    home = tmp_path / "home"
    home.mkdir()
    (home / "training_curves.png").write_bytes(b"the user's picture")
    (run / "figures").symlink_to(home, target_is_directory=True)
    assert main(["report", str(run)]) == 2
    line = _one_line(capsys)
    assert "symbolic link" in line and "figures" in line
    assert [p.name for p in home.iterdir()] == ["training_curves.png"]
    assert (home / "training_curves.png").read_bytes() == b"the user's picture"


def _fresh_verb_inputs(t: Path) -> dict[str, list[str]]:
    _model(t / "m.ckpt")
    _images(t / "imgs", ["1.png", "2.png", "3.png", "4.png"])
    rows = [["filename", "label", "f1", "f2"]] + [[f"{i}.png", "", str(i % 2), str(i)] for i in range(8)]
    with open(t / "emb.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return {
        "predict": ["predict", "--model", str(t / "m.ckpt"), "--images", str(t / "imgs")],
        "cluster": ["cluster", str(t / "emb.csv"), "--n_clusters", "2", "--target_ratio", "1:1"],
        "embed": ["embed", "--model", str(t / "m.ckpt"), "--images", str(t / "imgs")],
    }


@pytest.mark.parametrize("verb", ["predict", "embed", "cluster", "report"])
def test_a_linked_lock_file_is_refused_and_its_target_kept(verb, tmp_path, capsys):
    """An --out that holds only ``.aelab.lock`` counts as empty; a link there was opened and truncated."""
    outside = tmp_path / "thesis.tex"
    outside.write_bytes(b"\\documentclass{article} my thesis\n")
    if verb == "report":
        out = write_run_folder(tmp_path / "run")
        argv = ["report", str(out)]
    else:
        out = tmp_path / "out"
        out.mkdir()
        argv = [*_fresh_verb_inputs(tmp_path)[verb], "--out", str(out)]
    (out / ".aelab.lock").symlink_to(outside)
    assert main(argv) == 2
    assert "symbolic link" in _one_line(capsys)
    assert outside.read_bytes() == b"\\documentclass{article} my thesis\n"


def test_resumed_training_replaces_links_at_every_name(tmp_path):
    import yaml

    from aelab.data import make_demo_data
    from aelab.train import PretrainConfig, load_checkpoint, pretrain

    data = make_demo_data(tmp_path / "data", seed=0, labelled_per_class=2, n_unlabelled=24, n_test=0,
                          n_anomaly_normal=0, n_anomalous=0).root
    run = pretrain(PretrainConfig(data=str(data), epochs=1, preset="tiny", device="cpu", batch_size=16,
                                  out=str(tmp_path / "run")))
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "epochs": 2}))  # one more epoch to resume into
    targets = _plant_links(run, set(_files(run)) - {".aelab.lock"}, tmp_path / "home")  # the lock: test above
    pretrain(PretrainConfig(resume=str(run)))
    _unchanged(targets)
    assert load_checkpoint(run, which="last")["epoch"] == 1
    for name in ("last.ckpt", "metrics.csv"):
        assert not (run / name).is_symlink(), name
