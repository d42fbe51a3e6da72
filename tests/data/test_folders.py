"""Folder listings, class folders, ids and the course layout (paths only, no decoding)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aelab.data import (
    IMAGE_EXTENSIONS,
    DataLayout,
    image_ids,
    list_images,
    read_labels_csv,
    resolve_layout,
    scan_labelled,
)
from aelab.errors import DataError


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)
    return path


def test_natural_order_puts_2_before_10(tmp_path):
    for name in ["10.png", "2.png", "1.png", "img10.png", "img9.png"]:
        _png(tmp_path / name)
    assert [p.name for p in list_images(tmp_path)] == ["1.png", "2.png", "10.png", "img9.png", "img10.png"]


def test_listing_filters_extensions_case_insensitively_and_skips_hidden(tmp_path):
    _png(tmp_path / "a.PNG")
    (tmp_path / "b.JPEG").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "._a.png").write_bytes(b"\x00")  # macOS resource fork
    (tmp_path / "sub.png").mkdir()  # a folder with an image-like name is not a file
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.JPEG"]


def test_recursive_listing_sorts_by_relative_path(tmp_path):
    _png(tmp_path / "b" / "1.png")
    _png(tmp_path / "a" / "10.png")
    _png(tmp_path / "a" / "2.png")
    _png(tmp_path / "0.png")
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)]
    assert got == ["0.png", "a/2.png", "a/10.png", "b/1.png"]
    assert [p.name for p in list_images(tmp_path)] == ["0.png"]


def test_missing_folder_is_a_one_line_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        list_images(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value) and "\n" not in str(err.value)
    assert ".png" in str(err.value) and ".webp" in str(err.value)


def test_empty_folder_error_lists_extensions(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError) as err:
        list_images(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message
    assert all(ext in message for ext in IMAGE_EXTENSIONS)


def test_scan_labelled_sorts_classes_and_labels_each_file(tmp_path):
    for cls, n in [("dog", 2), ("cat", 3), ("bird", 1)]:
        for i in range(n):
            _png(tmp_path / cls / f"{i}.png")
    files = scan_labelled(tmp_path)
    assert files.classes == ["bird", "cat", "dog"]
    assert files.labels.dtype == np.int64
    assert files.labels.tolist() == [0, 1, 1, 1, 2, 2]
    assert [p.parent.name for p in files.paths] == ["bird", "cat", "cat", "cat", "dog", "dog"]


def test_labelled_folder_without_class_subfolders_is_an_error(tmp_path):
    _png(tmp_path / "1.png")
    with pytest.raises(DataError, match="no class subfolders") as err:
        scan_labelled(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_empty_class_folder_warns_but_keeps_class_indices(tmp_path):
    _png(tmp_path / "a" / "1.png")
    (tmp_path / "b").mkdir()
    _png(tmp_path / "c" / "1.png")
    with pytest.warns(UserWarning, match="without images.*b"):
        files = scan_labelled(tmp_path)
    assert files.classes == ["a", "b", "c"]
    assert files.labels.tolist() == [0, 2]


def test_all_class_folders_empty_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no images"):
        scan_labelled(tmp_path)


def test_image_ids_use_stems_when_all_integer_else_names():
    assert image_ids(["t/10.png", "t/2.png", "t/007.jpg"]) == ["10", "2", "007"]
    assert image_ids(["t/10.png", "t/cat.png"]) == ["10.png", "cat.png"]
    assert image_ids([]) == []


def test_image_ids_stay_unique_across_subfolders():
    ids = image_ids(["/d/a/1.png", "/d/b/1.png"])
    assert ids == ["a/1.png", "b/1.png"]


def _seed_layout(root, split_anomaly):
    _png(root / "dev" / "labelled" / "x" / "1.png")
    _png(root / "dev" / "unlabelled" / "1.png")
    _png(root / "test" / "1.png")
    (root / "test_labels.csv").write_text("id,label\n1,x\n")
    if split_anomaly:
        _png(root / "anomaly" / "normal" / "1.png")
        _png(root / "anomaly" / "anomalous" / "1.png")
    else:
        _png(root / "anomaly" / "1.png")


@pytest.mark.parametrize("split_anomaly", [True, False])
def test_resolve_layout_finds_every_part(tmp_path, split_anomaly):
    _seed_layout(tmp_path, split_anomaly)
    layout = resolve_layout(tmp_path)
    assert isinstance(layout, DataLayout)
    assert layout.labelled == tmp_path / "dev" / "labelled"
    assert layout.unlabelled == tmp_path / "dev" / "unlabelled"
    assert layout.test == tmp_path / "test"
    assert layout.test_labels == tmp_path / "test_labels.csv"
    if split_anomaly:
        assert layout.anomaly_normal == tmp_path / "anomaly" / "normal"
        assert layout.anomaly_anomalous == tmp_path / "anomaly" / "anomalous"
    else:
        assert layout.anomaly_normal is None
        assert layout.anomaly_anomalous == tmp_path / "anomaly"


def test_resolve_layout_missing_parts_are_none_and_required_ones_error(tmp_path):
    _png(tmp_path / "test" / "1.png")
    layout = resolve_layout(tmp_path)
    assert layout.labelled is None and layout.test_labels is None and layout.anomaly is None
    assert layout.require("test") == tmp_path / "test"
    with pytest.raises(DataError, match="dev/labelled"):
        layout.require("labelled")


def test_resolve_layout_rejects_missing_or_unrelated_folders(tmp_path):
    with pytest.raises(DataError, match="not found"):
        resolve_layout(tmp_path / "nope")
    _png(tmp_path / "1.png")
    with pytest.raises(DataError, match="dev/labelled"):
        resolve_layout(tmp_path)


def test_read_labels_csv(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("id,label\n2,cat\n10,dog\n")
    assert read_labels_csv(path) == {"2": "cat", "10": "dog"}
    path.write_text("name,label\n2,cat\n")
    with pytest.raises(DataError, match="id,label"):
        read_labels_csv(path)
    path.write_text("id,label\n2,cat\n2,dog\n")
    with pytest.raises(DataError, match=r"labels.csv:3.*twice"):
        read_labels_csv(path)


# --- hostile folders and labels files (issue 12) -------------------------------------------------


def _png(path):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4)).save(path)


def test_hidden_class_folders_are_ignored_with_a_warning(tmp_path):
    from aelab.data import scan_labelled

    for cls in ("a", "b", ".c"):
        _png(tmp_path / cls / "1.png")
    with pytest.warns(UserWarning, match=r"ignored hidden folder\(s\) '\.c'"):
        files = scan_labelled(tmp_path)
    assert files.classes == ["a", "b"]


def test_recursive_listing_says_it_skipped_a_symlinked_folder(tmp_path):
    from aelab.data import list_images

    _png(tmp_path / "root" / "1.png")
    _png(tmp_path / "elsewhere" / "2.png")
    (tmp_path / "root" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.warns(UserWarning, match="skipped linked folder.*'linked'"):
        paths = list_images(tmp_path / "root", recursive=True)
    assert [p.name for p in paths] == ["1.png"]


def test_labels_match_by_id_name_or_stem():
    from aelab.data.folders import match_labels

    paths = ["t/7.png", "t/cat.png", "t/dog.jpg", "t/x.png"]
    assert match_labels(paths, {"7": "seven", "cat.jpg": "c", "dog.jpg": "d"}) == ["seven", "c", "d", None]
    # Two keys with one stem but different labels are ambiguous: no label rather than a guess.
    assert match_labels(["t/a.png"], {"a.jpg": "1", "a.bmp": "2"}) == [None]


def test_labels_file_errors_name_the_file(tmp_path):
    import csv

    from aelab.data import read_labels_csv
    from aelab.errors import DataError

    (tmp_path / "latin.csv").write_bytes("id,label\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv is not UTF-8"):
        read_labels_csv(tmp_path / "latin.csv")
    (tmp_path / "huge.csv").write_text("id,label\n1," + "x" * (csv.field_size_limit() + 10) + "\n")
    with pytest.raises(DataError, match=r"huge\.csv is not a readable CSV"):
        read_labels_csv(tmp_path / "huge.csv")
