"""ReconstructionDetector on real digits: ranking, threshold semantics, inputs, persistence, bad files.

One detector is fitted once per session (tiny network, 10 short epochs on 240 "0"s) and reused.
"""

from __future__ import annotations

import contextlib
import shutil

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from aelab.anomaly import ReconstructionDetector, anomaly_metrics
from aelab.errors import AelabError, DataError
from aelab.train.options import Engine


@contextlib.contextmanager
def one_thread():
    """CI shares 2 cores between jobs; one intra-op thread trains these tiny nets several times faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def anomaly_demo(tmp_path_factory):
    """300 normal "0"s and 200 other digits as 32x32 grayscale PNGs (ROOT/anomaly/{normal,anomalous})."""
    from aelab.data import make_demo_data

    root = tmp_path_factory.mktemp("anomaly_demo") / "data"
    make_demo_data(root, seed=0, labelled_per_class=1, n_unlabelled=0, n_test=0, image_size=32,
                   normal_class=0, n_anomaly_normal=300, n_anomalous=200)
    return root


@pytest.fixture(scope="session")
def fitted(anomaly_demo, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp, one_thread():
        mp.setenv("AELAB_CACHE_DIR", str(tmp_path_factory.mktemp("fit_cache")))
        det = ReconstructionDetector(preset="tiny", depth=4, channels=1, epochs=10, batch_size=16, lr=3e-3,
                                     random_state=0)
        return det.fit(str(anomaly_demo / "anomaly" / "normal"), engine=Engine(device="cpu"))


@pytest.fixture(scope="session")
def anomalous_scores(fitted, anomaly_demo, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp, one_thread():
        mp.setenv("AELAB_CACHE_DIR", str(tmp_path_factory.mktemp("score_cache")))
        return fitted.decision_function(str(anomaly_demo / "anomaly" / "anomalous"))


def test_model_is_the_aelab_autoencoder_without_skips_and_head(fitted):
    cfg = fitted.model_config_
    assert (cfg.skip_connections, cfg.head, cfg.num_classes) == (False, "none", 0)
    assert (cfg.in_channels, cfg.image_size) == (1, 32)
    assert fitted.preprocessing_.channels == 1 and fitted.best_epoch_ >= 0 and len(fitted.history_) >= 1
    assert clone(fitted).get_params() == fitted.get_params()  # scikit-learn parameter contract


def test_other_digits_rank_above_held_out_normals(fitted, anomalous_scores):
    assert len(fitted.val_files_) == 60 and not set(fitted.val_files_) & set(fitted.train_files_)
    y = np.r_[np.zeros(len(fitted.val_scores_)), np.ones(len(anomalous_scores))]
    assert roc_auc_score(y, np.r_[fitted.val_scores_, anomalous_scores]) > 0.85


def test_pure_noise_scores_above_every_digit(fitted, anomalous_scores, anomaly_demo):
    noise = np.random.default_rng(0).integers(0, 256, (10, 1, 32, 32), dtype=np.uint8)
    assert np.all(fitted.predict(noise) == 1)
    raw = fitted.get_params()
    try:  # noise is wrong everywhere: its mean error is above every digit's
        fitted.set_params(score="mse", reduction="mean", smoothing=0.0)
        anomalous = [str(p) for p in sorted((anomaly_demo / "anomaly" / "anomalous").iterdir())]
        digits = fitted.decision_function(fitted.val_files_ + anomalous)
        assert fitted.decision_function(noise).min() > digits.max()
    finally:
        fitted.set_params(**raw)


def test_conformal_threshold_is_the_kth_smallest_held_out_score(fitted):
    th = fitted.threshold_info_
    n_val = len(fitted.val_scores_)
    # 60 held-out scores, alpha 0.01: ceil(61 * 0.99) = 61 > 60, so the largest score (rank 60).
    assert th.rule == "conformal" and th.alpha == fitted.contamination and th.n_normal == n_val == 60 and th.rank == 60
    assert th.value == np.sort(fitted.val_scores_)[59] and th.expected_false_alarm_rate == pytest.approx(1 / 61)
    rate = np.mean(fitted.val_scores_ > fitted.threshold_)
    assert rate == 0.0
    # Rescoring the held-out files gives the same scores and decisions as stored at fit time.
    np.testing.assert_allclose(fitted.decision_function(fitted.val_files_), fitted.val_scores_, rtol=1e-6)
    assert np.mean(fitted.predict(fitted.val_files_)) == rate


def test_decisions_scores_and_normalised_scores_agree(fitted, anomaly_demo):
    res = fitted.score_images(str(anomaly_demo / "anomaly" / "anomalous"))
    assert np.array_equal(res.is_anomaly, (res.scores > fitted.threshold_).astype(int))
    assert np.array_equal(res.is_anomaly, (res.normalized > 0.5).astype(int))
    raw = fitted.get_params()
    try:  # the mean of the unsmoothed mse map is the per-image loss
        fitted.set_params(score="mse", reduction="mean", smoothing=0.0)
        np.testing.assert_allclose(fitted.score_images(res.paths).scores, res.loss, rtol=1e-6)
    finally:
        fitted.set_params(**raw)
    assert len(res.paths) == 200 and res.skipped == []
    assert fitted.decision_scores_.shape == (len(fitted.train_files_),)
    assert fitted.labels_.shape == fitted.decision_scores_.shape


def test_f1_threshold_from_labelled_anomalies(fitted, anomaly_demo):
    anomalous = str(anomaly_demo / "anomaly" / "anomalous")
    scores = fitted.decision_function(anomalous)
    before = anomaly_metrics(fitted.val_scores_, scores, fitted.threshold_)["f1"]
    quantile_threshold = fitted.threshold_
    try:
        fitted.set_threshold(anomalies=anomalous)
        assert fitted.threshold_info_.rule == "f1" and fitted.threshold_info_.n_anomalous == 200
        assert anomaly_metrics(fitted.val_scores_, scores, fitted.threshold_)["f1"] >= before
    finally:
        fitted.set_threshold(rule="conformal")
    assert fitted.threshold_ == quantile_threshold  # the shared detector is left as it was


def test_saved_detector_scores_identically_after_reload(fitted, tmp_path):
    path = fitted.save(tmp_path / "detector.ckpt")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model_config", "preprocessing", "state_dict", "threshold", "score", "score_medians", "config"):
        assert key in raw
    assert raw["threshold"]["rule"] == "conformal" and raw["score"]["kind"] == "mse+gms"
    loaded = ReconstructionDetector.load(tmp_path)  # a folder holding detector.ckpt works too
    images = np.random.default_rng(1).integers(0, 256, (20, 1, 32, 32), dtype=np.uint8)
    assert np.array_equal(loaded.decision_function(images), fitted.decision_function(images))
    assert loaded.threshold_ == fitted.threshold_ and loaded.get_params() == fitted.get_params()
    assert loaded.val_files_ == fitted.val_files_
    np.testing.assert_array_equal(loaded.decision_scores_, fitted.decision_scores_)


def test_arrays_tensors_and_channels_are_read_like_folders(fitted, anomaly_demo):
    from aelab.data import list_images, load_images

    data = load_images(list_images(anomaly_demo / "anomaly" / "anomalous")[:16], 32, 1)
    ref = fitted.decision_function(data.images)
    np.testing.assert_allclose(fitted.decision_function(data.images[:, 0]), ref)  # (N, H, W)
    np.testing.assert_allclose(fitted.decision_function(torch.from_numpy(data.images).float() / 255), ref, rtol=1e-6)
    np.testing.assert_allclose(fitted.decision_function(np.repeat(data.images, 3, axis=1)), ref)  # RGB -> luma
    np.testing.assert_allclose(fitted.decision_function(data.paths), ref, rtol=1e-6)  # a list of files


def test_bad_inputs_raise_one_line_errors(fitted, tmp_path):
    bad = [np.zeros((2, 2, 32, 32), np.uint8), np.full((2, 1, 32, 32), 2.0), np.zeros((2, 1, 32, 30), np.uint8),
           np.zeros((0, 1, 32, 32), np.uint8)]
    for x in bad:
        with pytest.raises(DataError):
            fitted.decision_function(x)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        fitted.decision_function(str(tmp_path / "empty"))
    with pytest.raises(AelabError, match="not fitted"):
        ReconstructionDetector().predict(np.zeros((1, 1, 32, 32), np.uint8))
    with pytest.raises(AelabError, match="score must be one of"):
        ReconstructionDetector(score="psnr").fit(np.zeros((4, 1, 32, 32), np.uint8))
    with pytest.raises(AelabError, match="needs labelled anomalies"):
        ReconstructionDetector(threshold_rule="f1").fit(np.zeros((4, 1, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="contamination must be a number in \\(0, 0.5\\]"):  # a ParameterError
        ReconstructionDetector(contamination=0.0).fit(np.zeros((4, 1, 32, 32), np.uint8))
    with pytest.raises(AelabError, match="not an anomaly detector|no anomaly detector"):
        ReconstructionDetector.load(tmp_path)


def test_folder_with_bad_files_skips_and_lists_them(fitted, anomaly_demo, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("1.png", "2.png", "3.png"):
        shutil.copy(anomaly_demo / "anomaly" / "anomalous" / name, folder / name)
    (folder / "10.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(UserWarning, match="skipped 1 of 4"):
        res = fitted.score_images(str(folder))
    assert [p.name for p in res.paths] == ["1.png", "2.png", "3.png"] and len(res.scores) == 3
    assert [p.name for p, _ in res.skipped] == ["10.png"]
    strict = clone(fitted)
    strict.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
    strict.use(strict=True)
    with pytest.raises(DataError, match="10.png"):
        strict.decision_function(str(folder))


@pytest.mark.parametrize("cls", ["ReconstructionDetector", "GeometricDetector"])
def test_detectors_follow_the_scikit_learn_estimator_rules(cls):
    """An explicit __init__ that only stores its parameters; random_state, not seed; bad values are ValueErrors."""
    from sklearn.utils.estimator_checks import check_get_params_invariance, check_no_attributes_set_in_init

    import aelab.anomaly as anomaly
    from aelab.errors import ParameterError

    est = getattr(anomaly, cls)()
    check_no_attributes_set_in_init(cls, est)
    check_get_params_invariance(cls, est)
    params = est.get_params()
    assert "random_state" in params and not {"seed", "device", "devices", "precision", "run_dir"} & set(params)
    assert issubclass(ParameterError, ValueError) and issubclass(ParameterError, AelabError)
    with pytest.raises(ParameterError, match="val_fraction"):
        est.set_params(val_fraction=1.0).fit(np.zeros((4, 1, 32, 32), np.uint8))
