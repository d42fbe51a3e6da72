"""Single-layer k-means features (Coates, Lee & Ng 2011): encoding, whitening, and the study-1 row."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from aelab.train.baselines import kmeans_features_baseline
from aelab.train.patch_features import KMeansFeatures, normalise_patches, sample_patches


def _smooth_images(n, size=12, channels=3, seed=0):
    """Random images with correlated neighbouring pixels (so whitening has work to do)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, channels, size + 2, size + 2))
    x = (x[:, :, 1:-1, 1:-1] * 2 + x[:, :, :-2, 1:-1] + x[:, :, 2:, 1:-1] + x[:, :, 1:-1, :-2] + x[:, :, 1:-1, 2:])
    return np.clip(128 + 25 * x, 0, 255).astype(np.uint8)


def _reference_transform(f: KMeansFeatures, images: np.ndarray) -> np.ndarray:
    """The paper's encoding, one patch at a time: normalise, whiten, z_k = ‖x − c_k‖, f_k = max(0, mean(z) − z_k),
    pooled (sum or max) over the g × g regions of the map; region a holds the patch rows i with
    ceil(a · rows / g) ≤ i < ceil((a + 1) · rows / g) (g 2: the first half is ceil(rows / 2), the demo's round)."""
    N, C, H, W = images.shape
    p, s, g = f.patch, f.stride, f.grid
    rows, cols = (H - p) // s + 1, (W - p) // s + 1
    K = len(f.centroids_)
    out = np.zeros((N, g * g, K))

    def region(i, n):  # the region a with ceil(a·n/g) <= i < ceil((a+1)·n/g)
        return max(a for a in range(g) if -(-a * n // g) <= i)

    for n in range(N):
        for i in range(rows):
            for j in range(cols):
                x = images[n, :, i * s : i * s + p, j * s : j * s + p].astype(np.float64).reshape(-1)
                x = (x - x.mean()) / np.sqrt(x.var(ddof=1) + 10.0)
                x = (x - f.mean_) @ f.whiten_
                z = np.sqrt(((x[None, :] - f.centroids_) ** 2).sum(1))
                code = np.maximum(0.0, z.mean() - z)
                q = g * region(i, rows) + region(j, cols)
                out[n, q] = out[n, q] + code if f.pooling == "sum" else np.maximum(out[n, q], code)
    return out.reshape(N, g * g * K)


@pytest.mark.parametrize("stride,pooling,grid,width", [(1, "sum", 2, 11), (2, "sum", 2, 11), (1, "max", 3, 11),
                                                       (2, "max", 3, 11), (1, "sum", 3, 11), (1, "max", 1, 11),
                                                       (1, "max", 3, 8), (1, "sum", 2, 8)])
def test_encoding_matches_a_patch_by_patch_reference(stride, pooling, grid, width):
    """Square and non-square maps (11 × 11 pixels: 9 × 9 patches; 11 × 8: 9 × 6), 3 images in batches of 2."""
    images = np.ascontiguousarray(_smooth_images(40, size=11)[..., :width])
    f = KMeansFeatures(n_centroids=7, patch=3, stride=stride, n_patches=2000, pooling=pooling, grid=grid,
                       batch_images=2, random_state=0).fit(images)
    got = f.transform(images[:3])
    want = _reference_transform(f, images[:3])
    assert got.shape == (3, grid * grid * 7) == (3, f.n_features_out)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-3)
    assert (got >= 0).all() and (got > 0).any()


def test_max_pooling_of_one_region_is_the_largest_code_and_sum_pooling_adds_them():
    images = _smooth_images(40, size=11)
    kw = dict(n_centroids=5, patch=3, n_patches=2000, grid=1, random_state=0)
    mx = KMeansFeatures(pooling="max", **kw).fit(images).transform(images[:3])
    sm = KMeansFeatures(pooling="sum", **kw).fit(images).transform(images[:3])
    # 9 × 9 patch positions: the sum lies between the largest code and 81 times it
    assert (sm >= mx - 1e-5).all() and (sm <= 81 * mx + 1e-4).all() and (sm > mx + 1e-3).any()


def test_zca_whitening_gives_identity_covariance_on_the_patches():
    images = _smooth_images(200, size=12)
    f = KMeansFeatures(n_centroids=4, patch=4, n_patches=20_000, zca_eps=1e-6, random_state=0).fit(images)
    x = normalise_patches(sample_patches(images, 20_000, 4, np.random.default_rng(0)))
    raw = np.cov(x, rowvar=False)
    cov = np.cov((x - f.mean_) @ f.whiten_, rowvar=False)
    d = cov.shape[0]
    # every normalised patch sums to 0, so whitening can only reach the identity on the other d − 1 directions
    ones = np.ones((d, 1)) / np.sqrt(d)
    np.testing.assert_allclose(cov, np.eye(d) - ones @ ones.T, atol=1e-3)
    assert np.abs(raw - np.eye(d)).max() > 0.3  # the raw patches were far from white
    # with the paper's ε = 0.1 the eigenvalues become λ / (λ + 0.1)
    g = KMeansFeatures(n_centroids=4, patch=4, n_patches=20_000, random_state=0).fit(images)
    lam = np.linalg.eigvalsh(raw)
    np.testing.assert_allclose(np.linalg.eigvalsh(np.cov((x - g.mean_) @ g.whiten_, rowvar=False)),
                               np.sort(np.clip(lam, 0, None) / (np.clip(lam, 0, None) + 0.1)), atol=1e-3)


def _texture_classes(n_per_class, size=16, seed=0):
    """Three classes of texture with random phase, frequency, brightness and contrast: horizontal
    stripes, vertical stripes, checkerboard. Class means are flat, so pixel positions carry little."""
    rng = np.random.default_rng(seed)
    ii, jj = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    images, labels = [], []
    for label in range(3):
        for _ in range(n_per_class):
            w = rng.uniform(0.6, 1.4)
            a, b = rng.uniform(0, 2 * np.pi, 2)
            pattern = [np.sin(w * ii + a), np.sin(w * jj + a), np.sin(w * ii + a) * np.sin(w * jj + b)][label]
            img = rng.uniform(80, 170) + rng.uniform(30, 70) * pattern + rng.normal(0, 12, (size, size))
            images.append(np.repeat(np.clip(img, 0, 255)[None], 3, 0))
            labels.append(label)
    return np.asarray(images, dtype=np.uint8), np.asarray(labels)


@pytest.mark.parametrize("learner", ["kmeans", "ekm"])
def test_features_and_logistic_regression_beat_chance_on_textures(learner):
    x, y = _texture_classes(40, seed=0)
    unl, _ = _texture_classes(60, seed=1)
    query, y_query = _texture_classes(30, seed=2)
    train_idx = np.arange(0, len(y), 2)
    val_idx = np.arange(1, len(y), 2)
    res = kmeans_features_baseline(x, y, train_idx, val_idx, unl, query, n_centroids=24, learner=learner, seed=0,
                                   patch=5, n_patches=5000)
    assert res.query_pred.shape == y_query.shape and res.val_pred.shape == val_idx.shape
    assert np.mean(res.query_pred == y_query) >= 0.8  # chance: 1/3
    assert np.mean(res.val_pred == y[val_idx]) >= 0.8


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="learner"):
        KMeansFeatures(learner="spectral")
    with pytest.raises(RuntimeError, match="not fitted"):
        KMeansFeatures().transform(np.zeros((1, 1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="pooling"):
        KMeansFeatures(pooling="mean")
    with pytest.raises(ValueError, match="grid"):
        KMeansFeatures(grid=0)
    f = KMeansFeatures(n_centroids=3, patch=3, n_patches=500, grid=3).fit(_smooth_images(20, size=8))
    with pytest.raises(ValueError, match="too few for a 3x3 pooling grid"):
        f.transform(_smooth_images(2, size=4))  # 2 × 2 patches


def test_study_method_writes_predictions_with_id_and_label(demo_root, tmp_path):
    from aelab.data import image_ids, list_images, read_labels_csv
    from aelab.train.methods import METHODS
    from aelab.train.study import ClassificationStudyConfig, classification_study

    cfg = ClassificationStudyConfig(methods="kmeans-features", channels=1, kmeans_features_centroids=16, device="cpu")
    result = classification_study(cfg, demo_root, tmp_path / "run")
    (row,) = result.rows
    assert row.method == "kmeans-features" and METHODS[row.method].uses_unlabelled and row.run is None
    with open(row.predictions, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        body = list(reader)
    assert header == ["id", "label"]
    test_ids = image_ids(list_images(demo_root / "test"))
    assert [r[0] for r in body] == test_ids
    classes = sorted(p.name for p in (demo_root / "dev" / "labelled").iterdir())
    assert {r[1] for r in body} <= set(classes)
    truth = read_labels_csv(demo_root / "test_labels.csv")
    assert row.test_acc == pytest.approx(np.mean([truth[i] == lab for i, lab in body]))
    assert row.test_acc > 0.3  # digits, 4 labelled per class: chance is 0.1
    assert result.chosen == "kmeans-features" and (tmp_path / "run" / "predictions.csv").exists()


def test_unknown_learner_is_one_line():
    from aelab.errors import AelabError
    from aelab.train.study import ClassificationStudyConfig

    with pytest.raises(AelabError, match="kmeans_features_learner"):
        ClassificationStudyConfig(kmeans_features_learner="dbscan")


@pytest.mark.parametrize("baseline", ["kmeans-features", "label-spreading"])
def test_the_test_images_are_predicted_with_the_validation_labels_too(baseline):
    """The classical rows predict the validation images from the training split and, with ``refit``, the test
    images from every labelled image: a class only the validation split holds is then found in the test."""
    from functools import partial

    from aelab.train.baselines import label_spreading_baseline

    fn = (partial(kmeans_features_baseline, n_centroids=24, patch=5, n_patches=5000)
          if baseline == "kmeans-features" else label_spreading_baseline)
    x, y = _texture_classes(40, seed=0)
    unl, _ = _texture_classes(60, seed=1)
    query, y_query = _texture_classes(30, seed=2)
    train_idx = np.flatnonzero((y != 2) & (np.arange(len(y)) % 2 == 0))  # class 2 only in the validation split
    val_idx = np.setdiff1d(np.arange(len(y)), train_idx)
    kept = fn(x, y, train_idx, val_idx, unl, query, seed=0, refit=False)
    both = fn(x, y, train_idx, val_idx, unl, query, seed=0)
    assert not np.any(kept.query_pred == 2) and not np.any(both.val_pred == 2)  # the hold-out stays unseen
    assert np.mean(both.query_pred[y_query == 2] == 2) >= 0.7
    assert np.mean(both.query_pred == y_query) > np.mean(kept.query_pred == y_query) + 0.2


def test_labelled_copies_shift_by_an_eighth_and_mirror_photos_only():
    """The k-means-features classifier's copies: the images first, then (photos) their mirrors, then each set
    shifted by an eighth of the side (the picture moves up, down, left, right), with reflected borders; ``auto``
    copies photos only, and grey images are never mirrored."""
    from aelab.train.baselines import labelled_copies

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    grey = np.repeat(photo[:, :1], 3, axis=1)
    copies = labelled_copies(photo, "auto")
    assert len(copies) == 10 and all(c.shape == photo.shape and c.dtype == np.uint8 for c in copies)
    mirror = photo[..., ::-1]
    assert np.array_equal(copies[0], photo) and np.array_equal(copies[1], mirror)
    d = 2  # 16 // 8
    up, down, left, right = copies[2:6]
    assert np.array_equal(up[:, :, : 16 - d], photo[:, :, d:])  # row i of the copy is row i + d of the image
    assert np.array_equal(up[:, :, 16 - d :], photo[:, :, 14:12:-1])  # reflected border: rows 14, 13
    assert np.array_equal(down[:, :, d:], photo[:, :, : 16 - d])
    assert np.array_equal(left[:, :, :, : 16 - d], photo[:, :, :, d:])
    assert np.array_equal(right[:, :, :, d:], photo[:, :, :, : 16 - d])
    assert np.array_equal(copies[6][:, :, : 16 - d], mirror[:, :, d:])  # then the mirror, moved up
    assert len(labelled_copies(grey, "auto")) == 1
    grey_copies = labelled_copies(grey, "shift")
    assert len(grey_copies) == 5 and not any(np.array_equal(c, grey[..., ::-1]) for c in grey_copies)
    assert len(labelled_copies(photo[:, :1], "auto")) == 1  # (N, 1, H, W): grey
    one_channel = labelled_copies(photo[:, :1], "flip-shift")
    assert len(one_channel) == 10 and one_channel[1].shape == (3, 1, 16, 16)
    tiny = labelled_copies(photo[:, :, :6, :6], "shift")  # 6 // 8 = 0: shifted by one pixel
    assert np.array_equal(tiny[1][:, :, :5], photo[:, :, 1:6, :6])
    assert len(labelled_copies(photo[:, :, :1, :1], "flip-shift")) == 2  # a 1-pixel image is not shifted
    assert len(labelled_copies(photo, "none")) == 1


def test_the_row_cap_keeps_whole_groups_of_copies():
    """With many labelled images only whole groups are kept (the images, the mirrors, a shift with its opposite):
    a shift in one direction alone would teach the classifier where objects sit."""
    from aelab.train.baselines import labelled_copies

    photo = np.random.default_rng(1).integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    grey = photo[:, :1]
    assert len(labelled_copies(photo, "flip-shift", max_rows=7)) == 2  # 7 rows hold the images and the mirrors
    assert len(labelled_copies(grey, "shift", max_rows=12)) == 3  # the images, up and down; not left alone
    assert len(labelled_copies(grey, "shift", max_rows=15)) == 5
    assert len(labelled_copies(photo, "flip-shift", max_rows=1)) == 1  # never fewer than the images
    with pytest.raises(ValueError, match="augment"):
        labelled_copies(photo, "rotate")


def test_bad_augment_is_one_line_and_the_study_passes_it_on(monkeypatch, demo_root, tmp_path):
    from aelab.errors import AelabError
    from aelab.train import baselines
    from aelab.train.study import ClassificationStudyConfig, classification_study

    with pytest.raises(AelabError, match="kmeans_features_augment"):
        ClassificationStudyConfig(kmeans_features_augment="flip")
    with pytest.raises(AelabError, match="kmeans_features_pooling must be one of max, sum"):
        ClassificationStudyConfig(kmeans_features_pooling="mean")
    with pytest.raises(AelabError, match="kmeans_features_grid"):
        ClassificationStudyConfig(kmeans_features_grid=0)
    seen = {}
    real = baselines.kmeans_features_baseline

    def spy(*args, **kwargs):
        seen.update({k: kwargs.get(k) for k in ("augment", "pooling", "grid")})
        return real(*args, **kwargs)

    monkeypatch.setattr(baselines, "kmeans_features_baseline", spy)
    cfg = ClassificationStudyConfig(methods="kmeans-features", channels=1, kmeans_features_centroids=8,
                                    kmeans_features_augment="none", kmeans_features_pooling="sum",
                                    kmeans_features_grid=2, device="cpu")
    classification_study(cfg, demo_root, tmp_path / "run")
    assert seen == {"augment": "none", "pooling": "sum", "grid": 2}


def test_copies_teach_the_classifier_a_pattern_seen_only_mirrored():
    """Classes whose labelled images all show their object on the left are still recognised on the right when
    the classifier learns from the mirrored copies too (the pooling grid keeps left and right apart)."""
    rng = np.random.default_rng(0)

    def images(n, side):  # class 0: a red block, class 1: a green block, on the left half or the right
        x = rng.normal(110, 10, (2 * n, 3, 16, 16))
        cols = slice(2, 6) if side == "left" else slice(10, 14)
        x[:n, 0, 4:12, cols] += 110
        x[n:, 1, 4:12, cols] += 110
        return np.clip(x, 0, 255).astype(np.uint8), np.repeat([0, 1], n)

    x, y = images(20, "left")
    unl = np.concatenate([images(30, "left")[0], images(30, "right")[0]])
    query, y_query = images(30, "right")
    train_idx, val_idx = np.arange(0, 40, 2), np.arange(1, 40, 2)
    kwargs = dict(n_centroids=16, patch=4, n_patches=4000, seed=0)
    plain = kmeans_features_baseline(x, y, train_idx, val_idx, unl, query, augment="none", **kwargs)
    mirrored = kmeans_features_baseline(x, y, train_idx, val_idx, unl, query, augment="auto", **kwargs)
    assert np.mean(mirrored.query_pred == y_query) >= 0.9
    assert np.mean(mirrored.query_pred == y_query) > np.mean(plain.query_pred == y_query)
