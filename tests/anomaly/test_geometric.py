"""`GeometricDetector`: the score formula against numpy, ranking on oriented images, persistence, the CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from aelab.anomaly import GeometricDetector, ReconstructionDetector, default_method, load_detector
from aelab.anomaly.geometric import num_transforms, transform, transform_scores
from aelab.errors import AelabError
from aelab.runs import read_csv_rows
from aelab.train.options import Engine

SIDE = 16


def oriented(n: int, seed: int) -> np.ndarray:
    """Colour "landscapes" with a canonical up: blue sky above green ground, the horizon and a red
    post standing on the ground at random places, plus noise. uint8 ``(n, 3, SIDE, SIDE)``."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 3, SIDE, SIDE))
    for i in range(n):
        h = rng.integers(6, 10)
        x[i, 2, :h], x[i, 1, :h] = 0.9, 0.5
        x[i, 1, h:], x[i, 0, h:] = 0.7, 0.2
        c = rng.integers(2, SIDE - 3)
        x[i, 0, h - 4 : h, c : c + 2], x[i, 1:, h - 4 : h, c : c + 2] = 1.0, 0.1
    x += rng.normal(0, 0.05, x.shape)
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def unoriented(n: int, seed: int) -> np.ndarray:
    """The same colours in blobs without an up: each image a random mix of the normal images' parts."""
    rng = np.random.default_rng(seed)
    base = oriented(n, seed + 100)
    return np.stack([np.rot90(b, rng.integers(1, 4), axes=(1, 2)) if rng.random() < 0.5 else b[:, ::-1] for b in base])


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    det = GeometricDetector(width=8, epochs=8, batch_size=16, lr=0.05, augment=1, patience=8, random_state=0)
    return det.fit(oriented(96, 0), engine=Engine(device="cpu"))


OFFSETS = [(0, 0), (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]  # (dy, dx) of translation t


def numpy_transform(x: np.ndarray, k: int, flips: bool, s: int) -> np.ndarray:
    """``T_k`` in numpy: translate by ``OFFSETS[t] * s`` (reflected border), flip, rotate ``k % 4`` quarter turns."""
    per = 8 if flips else 4
    dy, dx = (OFFSETS[k // per][0] * s, OFFSETS[k // per][1] * s) if s else (0, 0)
    if (dy, dx) != (0, 0):
        p = np.pad(x, ((0, 0), (0, 0), (s, s), (s, s)), mode="reflect")
        x = p[..., s - dy : s - dy + SIDE, s - dx : s - dx + SIDE]
    if flips and (k // 4) % 2:
        x = x[..., ::-1]
    return np.rot90(x, k % 4, axes=(2, 3))


def numpy_logits(det: GeometricDetector, images: np.ndarray, k: int) -> np.ndarray:
    mean, std = np.array(det.mean_).reshape(1, -1, 1, 1), np.array(det.std_).reshape(1, -1, 1, 1)
    y = numpy_transform((images / 255.0 - mean) / std, k, det.flips, det.shift)
    with torch.no_grad():
        return det.model_(torch.from_numpy(np.ascontiguousarray(y)).float()).double().numpy()


def numpy_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def numpy_reference(det: GeometricDetector, images: np.ndarray) -> np.ndarray:
    """``-(1/K) sum_k log softmax(f(T_k x))_k`` with the transformations and softmax written in numpy."""
    K = num_transforms(det.flips, det.shift)
    return -sum(numpy_log_softmax(numpy_logits(det, images, k))[:, k] for k in range(K)) / K


def numpy_separate_reference(det: GeometricDetector, images: np.ndarray) -> np.ndarray:
    """Hendrycks et al. 2019 (Sec. 4.2): ``(1/K) sum_k sum_heads -log p_head(right answer | T_k x)``, the
    logits split into a 4-way rotation, 2-way flip, 3-way horizontal and 3-way vertical shift softmax."""
    K, per = num_transforms(det.flips, det.shift), 8 if det.flips else 4
    total = np.zeros(len(images))
    for k in range(K):
        z = numpy_logits(det, images, k)
        rot, flip, (dy, dx) = k % 4, (k // 4) % 2, OFFSETS[k // per]
        total += numpy_log_softmax(z[:, 0:4])[:, rot] + numpy_log_softmax(z[:, 4:6])[:, flip]
        if det.shift:
            total += numpy_log_softmax(z[:, 6:9])[:, {-1: 0, 0: 1, 1: 2}[dx]]
            total += numpy_log_softmax(z[:, 9:12])[:, {-1: 0, 0: 1, 1: 2}[dy]]
    return -total / K


def test_score_matches_numpy_reference(fitted):
    imgs = np.concatenate([oriented(5, 7), unoriented(5, 8)])
    np.testing.assert_allclose(fitted.all_scores(imgs)["transform"], numpy_reference(fitted, imgs), rtol=1e-4,
                               atol=1e-5)


def test_score_with_translations_matches_numpy_reference():
    det = GeometricDetector(width=4, epochs=1, batch_size=16, shift=3, score="transform").fit(
        oriented(24, 1), engine=Engine(device="cpu"))
    assert det.num_transforms == 72
    imgs = oriented(4, 9)
    np.testing.assert_allclose(det.decision_function(imgs), numpy_reference(det, imgs), rtol=1e-4, atol=1e-5)


def test_dirichlet_mle_matches_a_generic_optimiser_and_recovers_the_parameters():
    """Minka's fixed point against L-BFGS on the mean Dirichlet log-likelihood (scipy), on samples of known α."""
    from scipy.optimize import minimize
    from scipy.special import gammaln

    from aelab.anomaly.transforms import MAX_DIRICHLET_ALPHA, dirichlet_mle

    rng = np.random.default_rng(0)
    for truth in ([5.0, 0.3, 0.3, 1.2, 0.5], [40.0, 15.0, 1.0], [0.6, 0.2]):
        truth = np.array(truth)
        lp = np.log(rng.dirichlet(truth, 4000))
        nll = lambda t: -np.mean(gammaln(np.exp(t).sum()) - gammaln(np.exp(t)).sum() + lp @ (np.exp(t) - 1))  # noqa: E731
        reference = np.exp(minimize(nll, np.zeros(len(truth)), method="L-BFGS-B", options={"gtol": 1e-10}).x)
        alpha = dirichlet_mle(lp)
        np.testing.assert_allclose(alpha, reference, rtol=1e-4)
        np.testing.assert_allclose(alpha, truth, rtol=0.1)
    with warnings.catch_warnings():  # identical outputs: no finite estimate; capped, without numpy warnings
        warnings.simplefilter("error")
        alpha = dirichlet_mle(np.log([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]]))
    assert np.all(np.isfinite(alpha)) and alpha.max() == MAX_DIRICHLET_ALPHA and alpha[0] > alpha[1] > alpha[2]


def numpy_dirichlet_reference(det: GeometricDetector, train: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Golan & El-Yaniv's Eq. 2 in numpy: ``-(1/K) sum_k (α_k - 1) · log y(T_k x)``, each ``α_k`` the maximum of
    the Dirichlet likelihood of the training images' softmax outputs under ``T_k`` (found by L-BFGS here)."""
    from scipy.optimize import minimize
    from scipy.special import gammaln

    floor = np.log(1e-6)
    K, total = num_transforms(det.flips, det.shift), np.zeros(len(images))
    for k in range(K):
        fit = np.maximum(numpy_log_softmax(numpy_logits(det, train, k)), floor)
        nll = lambda t: -np.mean(gammaln(np.exp(t).sum()) - gammaln(np.exp(t)).sum() + fit @ (np.exp(t) - 1))  # noqa: E731,B023
        alpha = np.exp(minimize(nll, np.zeros(K), method="L-BFGS-B", options={"gtol": 1e-10}).x)
        total += np.maximum(numpy_log_softmax(numpy_logits(det, images, k)), floor) @ (alpha - 1)
    return -total / K


def test_dirichlet_score_is_equation_2_up_to_a_constant_and_is_the_default(fitted):
    """The default score ranks as Eq. 2 does: the same values up to one constant of the fitted α, and >= 0."""
    assert GeometricDetector().score == "dirichlet" and fitted.score == "dirichlet"
    from aelab.anomaly.transforms import dirichlet_fit
    from aelab.train.loaders import split_indices

    train = oriented(96, 0)[split_indices(96, fitted.val_fraction, fitted.random_state)[0]]  # the fixture's
    lp = fitted._passes(train)[0]
    np.testing.assert_allclose(fitted.dirichlet_alpha_, dirichlet_fit(lp, "joint", True, 0))
    imgs = np.concatenate([oriented(5, 7), unoriented(5, 8)])
    got, expected = fitted.decision_function(imgs), numpy_dirichlet_reference(fitted, train, imgs)
    assert np.all(got >= 0)
    np.testing.assert_allclose(got - got.mean(), expected - expected.mean(), rtol=1e-3, atol=1e-3 * np.ptp(expected))


def test_transformations_are_distinct_and_zero_is_identity():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    outs = [transform(x, k, True, 2) for k in range(72)]
    assert torch.equal(outs[0], x)
    assert len({o.numpy().tobytes() for o in outs}) == 72


def test_transform_scores_is_minus_mean_diagonal():
    lp = np.log(np.array([[[0.5, 0.5], [0.1, 0.9]]]))
    assert transform_scores(lp)[0] == pytest.approx(-(np.log(0.5) + np.log(0.9)) / 2)


def test_ranks_unoriented_images_above_held_out_normals(fitted):
    normal, anomalous = oriented(60, 11), unoriented(60, 12)
    s = fitted.decision_function(np.concatenate([normal, anomalous]))
    assert roc_auc_score(np.r_[np.zeros(60), np.ones(60)], s) > 0.85
    assert np.all(s >= 0)
    assert fitted.threshold_info_.rule == "conformal" and fitted.threshold_ == pytest.approx(np.max(fitted.val_scores_))


def test_save_load_round_trip_gives_identical_scores(fitted, tmp_path):
    imgs = np.concatenate([oriented(6, 3), unoriented(6, 4)])
    file = fitted.save(tmp_path / "det.ckpt")
    for back in (GeometricDetector.load(file), load_detector(file)):
        assert isinstance(back, GeometricDetector)
        np.testing.assert_array_equal(back.decision_function(imgs), fitted.decision_function(imgs))
        np.testing.assert_array_equal(back.predict(imgs), fitted.predict(imgs))
        assert back.threshold_ == fitted.threshold_
    with pytest.raises(AelabError, match="load_detector"):
        ReconstructionDetector.load(file)


def test_a_detector_saved_before_the_dirichlet_score_loads_with_its_own_score(fitted, tmp_path):
    """A checkpoint without Dirichlet parameters (saved with score="transform" before they existed) scores as it
    did, and asking it for the Dirichlet score is a one-line error, not a crash."""
    from aelab.errors import ParameterError
    from aelab.train.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(fitted.save(tmp_path / "new.ckpt"))
    del ckpt["dirichlet_alpha"], ckpt["format"]
    ckpt["config"]["score"] = "transform"
    save_checkpoint(tmp_path / "old.ckpt", **ckpt)
    old = load_detector(tmp_path / "old.ckpt")
    imgs = oriented(4, 3)
    assert old.score == "transform" and set(old.all_scores(imgs)) == {"transform", "knn", "transform+knn"}
    np.testing.assert_array_equal(old.decision_function(imgs), fitted.all_scores(imgs)["transform"])
    with pytest.raises(ParameterError, match="before the Dirichlet score"):
        old.set_params(score="dirichlet").decision_function(imgs)


@pytest.fixture(scope="module")
def fitted_separate():
    """Hendrycks et al.'s separate heads with translations by 2 pixels (K = 72: rotation, flip, x and y shift)."""
    torch.set_num_threads(1)
    det = GeometricDetector(width=8, epochs=8, batch_size=16, lr=0.05, augment=1, patience=8, random_state=0,
                            heads="separate", shift=2)
    return det.fit(oriented(96, 0), engine=Engine(device="cpu"))


def test_separate_heads_score_matches_numpy_reference(fitted_separate):
    assert fitted_separate.model_.head.out_features == 4 + 2 + 3 + 3
    imgs = np.concatenate([oriented(4, 7), unoriented(4, 8)])
    expected = numpy_separate_reference(fitted_separate, imgs)
    np.testing.assert_allclose(fitted_separate.all_scores(imgs)["transform"], expected, rtol=1e-4, atol=1e-5)
    assert fitted_separate.dirichlet_alpha_.shape == (72, 4 + 2 + 3 + 3)  # one Dirichlet per head and transformation


def test_separate_heads_rank_unoriented_images_above_held_out_normals(fitted_separate):
    normal, anomalous = oriented(60, 11), unoriented(60, 12)
    s = fitted_separate.decision_function(np.concatenate([normal, anomalous]))
    assert roc_auc_score(np.r_[np.zeros(60), np.ones(60)], s) > 0.85
    assert np.all(s >= 0)


def test_separate_heads_save_load_round_trip(fitted_separate, tmp_path):
    imgs = np.concatenate([oriented(4, 3), unoriented(4, 4)])
    file = fitted_separate.save(tmp_path / "det.ckpt")
    back = load_detector(file)
    assert isinstance(back, GeometricDetector) and (back.heads, back.shift) == ("separate", 2)
    np.testing.assert_array_equal(back.decision_function(imgs), fitted_separate.decision_function(imgs))
    np.testing.assert_array_equal(back.predict(imgs), fitted_separate.predict(imgs))


def test_bad_parameters_fail_before_training():
    with pytest.raises(AelabError, match="heads"):
        GeometricDetector(heads="both").fit(oriented(8, 0))
    with pytest.raises(AelabError, match="score"):
        GeometricDetector(score="mse").fit(oriented(8, 0))
    with pytest.raises(AelabError, match="half the image"):
        GeometricDetector(shift=8, epochs=1).fit(oriented(8, 0))
    with pytest.raises(AelabError, match="not fitted"):
        GeometricDetector().decision_function(oriented(2, 0))


def _write(folder, images):
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im.transpose(1, 2, 0)).save(folder / f"{i}.png")


def test_default_method_by_data_kind(tmp_path):
    _write(tmp_path / "colour", oriented(8, 0))
    grey = np.repeat(oriented(8, 0)[:, 1:2], 3, axis=1)  # digits saved as RGB: three equal channels
    _write(tmp_path / "grey", grey)
    assert default_method("auto", tmp_path / "colour") == "geometric"
    assert default_method("auto", tmp_path / "grey") == "reconstruction"
    assert default_method("auto", tmp_path / "colour", mvtec=True) == "reconstruction"
    assert default_method("auto", tmp_path / "colour", channels=1) == "reconstruction"
    assert default_method("geometric", tmp_path / "grey") == "geometric"


def test_cli_fit_score_evaluate_with_method_geometric(tmp_path):
    from aelab.cli import main as cli_main

    _write(tmp_path / "data" / "anomaly" / "normal", oriented(40, 20))
    _write(tmp_path / "data" / "anomaly" / "anomalous", unoriented(12, 21))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit = tmp_path / "fit"
        assert cli_main.main(["anomaly", "fit", "--data", str(tmp_path / "data"), "--method", "geometric",
                              "--image_size", str(SIDE), "--geometric.width", "4", "--geometric.epochs", "2",
                              "--geometric.batch_size", "8",
                              "--device", "cpu", "--out", str(fit)]) == 0
        th = json.loads((fit / "threshold.json").read_text())
        assert th["method"] == "geometric" and th["rule"] == "conformal" and th["n_train"] + th["n_held_out"] == 40
        assert isinstance(load_detector(fit), GeometricDetector)
        out = tmp_path / "score"
        anomalous = str(tmp_path / "data" / "anomaly" / "anomalous")
        assert cli_main.main(["anomaly", "score", "--model", str(fit), "--images", anomalous,
                              "--out", str(out), "--top", "4"]) == 0
        rows = read_csv_rows(out / "anomaly_scores.csv")
        assert (out / "anomaly_scores.csv").read_text().splitlines()[0] == "filename,score,normalized_score,is_anomaly"
        assert len(rows) == 12 and not (out / "maps").exists()
        assert (out / "figures" / "most_anomalous.png").stat().st_size > 0
        for r in rows:
            s, z = float(r["score"]), float(r["normalized_score"])
            assert z == pytest.approx(s / (s + th["value"])) and int(r["is_anomaly"]) == int(s > th["value"])
        ev = tmp_path / "eval"
        assert cli_main.main(["anomaly", "evaluate", "--model", str(fit), "--data", str(tmp_path / "data"),
                              "--out", str(ev)]) == 0
        m = json.loads((ev / "metrics.json").read_text())
        assert m["method"] == "geometric" and m["n_normal"] == th["n_held_out"] and m["n_anomalous"] == 12
        assert m["normal_loss"] is None and 0 <= m["auroc"] <= 1
        header = ["filename", "group", "defect", "score", "normalized_score", "is_anomaly"]
        assert list(read_csv_rows(ev / "scores.csv")[0]) == header
        for name in ("score_histogram.png", "roc_curve.png", "cases_normal.png", "cases_anomalous.png"):
            assert (ev / "figures" / name).stat().st_size > 0, name
    finally:
        torch.set_num_threads(n)


def test_cli_geometric_defaults_are_the_detectors():
    """One default per option: `--geometric.NAME` defaults are GeometricDetector()'s."""
    import inspect

    from aelab.anomaly import GEOMETRIC_KEYS, SHARED_KEYS
    from aelab.cli.main import build_parser

    sig = {n: p.default for n, p in inspect.signature(GeometricDetector.__init__).parameters.items() if n != "self"}
    assert set(GEOMETRIC_KEYS) | set(SHARED_KEYS) == set(sig) - {"random_state"}
    parsed = build_parser().parse_args(["anomaly", "fit"])["anomaly"]["fit"]
    assert parsed["method"] == "auto"
    assert {k: parsed["geometric"][k] for k in GEOMETRIC_KEYS} == {k: sig[k] for k in GEOMETRIC_KEYS}


def test_combined_score_is_the_sum_of_the_two_scaled_by_held_out_spread(fitted):
    """``transform+knn`` = s_t/σ_t + s_knn/σ_knn, σ the standard deviation over the held-out normals."""
    imgs = np.concatenate([oriented(6, 3), unoriented(6, 4)])
    scores = fitted.all_scores(imgs)
    assert set(scores) == {"dirichlet", "transform", "knn", "transform+knn"}
    scale = fitted.score_scale_
    np.testing.assert_allclose(scores["transform+knn"],
                               scores["transform"] / scale["transform"] + scores["knn"] / scale["knn"])
    np.testing.assert_allclose(scores["transform"], numpy_reference(fitted, imgs), rtol=1e-4, atol=1e-5)


def test_combined_score_ranks_unoriented_images_and_survives_save_load(tmp_path):
    torch.set_num_threads(1)
    det = GeometricDetector(width=8, epochs=8, batch_size=16, lr=0.05, augment=1, patience=8, random_state=0,
                            score="transform+knn").fit(oriented(96, 0), engine=Engine(device="cpu"))
    normal, anomalous = oriented(60, 11), unoriented(60, 12)
    s = det.decision_function(np.concatenate([normal, anomalous]))
    assert roc_auc_score(np.r_[np.zeros(60), np.ones(60)], s) > 0.85 and np.all(s >= 0)
    assert det.threshold_ == pytest.approx(np.max(det.val_scores_))
    back = GeometricDetector.load(det.save(tmp_path / "det.ckpt"))
    np.testing.assert_array_equal(back.decision_function(anomalous), det.decision_function(anomalous))
