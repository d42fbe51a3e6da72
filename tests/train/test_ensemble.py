"""Study 1's ``ensemble`` row: FixMatch's network and the k-means-features classifier, averaged."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from aelab.train.ensemble import (
    MIN_CALIBRATION_IMAGES,
    NETWORK_WEIGHT,
    calibrated_combine,
    combine,
    ensemble_probabilities,
    fit_temperature,
    temperature_scale,
)


def test_combine_is_the_weighted_sum_rule():
    rng = np.random.default_rng(0)
    a, b = rng.dirichlet(np.ones(4), 5), rng.dirichlet(np.ones(4), 5)
    np.testing.assert_allclose(combine(a, b, 0.25), 0.25 * a + 0.75 * b)
    np.testing.assert_allclose(combine(a, b).sum(1), 1.0)
    # a confident network outvotes soft features at the default weight; a hesitant one does not
    sharp, soft = np.array([[0.98, 0.01, 0.01]]), np.array([[0.30, 0.45, 0.25]])
    assert combine(sharp, soft).argmax() == 0
    assert combine(np.array([[0.5, 0.4, 0.1]]), soft).argmax() == 1
    assert combine(sharp, soft, NETWORK_WEIGHT).tolist() == combine(sharp, soft).tolist()


def _sample_labels(proba, rng):
    return (proba.cumsum(1) > rng.random((len(proba), 1))).argmax(1)


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels():
    """Labels drawn from softmax(z / 2): the temperature that calibrates softmax(z) is 2 (and 0.5 for z / 4)."""
    from scipy.special import softmax

    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (20_000, 5))
    y = _sample_labels(softmax(z / 2.0, axis=1), rng)
    assert fit_temperature(softmax(z, axis=1), y) == pytest.approx(2.0, rel=0.05)
    assert fit_temperature(softmax(z / 4.0, axis=1), y) == pytest.approx(0.5, rel=0.05)


def test_fit_temperature_stays_in_its_range_and_refuses_bad_labels():
    """A member right on every image would be sharpened without end: the search stops at the range's floor."""
    from aelab.errors import AelabError
    from aelab.train.ensemble import TEMPERATURE_RANGE

    p = np.array([[0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    assert fit_temperature(p, np.array([0, 1, 0])) == pytest.approx(TEMPERATURE_RANGE[0], rel=1e-3)
    assert fit_temperature(p, np.array([1, 0, 1])) <= TEMPERATURE_RANGE[1]
    for bad in (np.array([0, 2, 1]), np.array([0, -1, 1]), np.array([0.0, 1.0, 0.0]), np.array([0, 1])):
        with pytest.raises(AelabError):
            fit_temperature(p, bad)


def test_temperature_scale_keeps_each_rows_order_and_sums_to_one():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(6), 50)
    np.testing.assert_allclose(temperature_scale(p, 1.0), p, rtol=1e-9)
    for t in (0.3, 3.0):
        q = temperature_scale(p, t)
        np.testing.assert_allclose(q.sum(1), 1.0)
        assert (np.argsort(q, 1) == np.argsort(p, 1)).all()
    assert (temperature_scale(p, 3.0).max(1) < p.max(1)).all()  # softer


def test_calibration_gives_the_say_to_the_member_that_is_right_more_often():
    """A sharp network right 30 % of the time and soft features right 80 %: the raw 0.3/0.7 sum lets the sharp
    network decide where the two disagree; scaled to their validation likelihoods, the features decide."""
    rng = np.random.default_rng(2)
    k, n = 5, 4000
    y = rng.integers(0, k, n)

    def member(right, top):
        guess = np.where(rng.random(n) < right, y, (y + rng.integers(1, k, n)) % k)
        p = np.full((n, k), (1 - top) / (k - 1))
        p[np.arange(n), guess] = top
        return p

    net, feat = member(0.3, 0.98), member(0.8, 0.4)
    half = n // 2
    raw = combine(net[half:], feat[half:]).argmax(1) == y[half:]
    _, test, (t_net, t_feat) = calibrated_combine(net[:half], feat[:half], y[:half], net[half:], feat[half:])
    assert t_net > 1.5  # the overconfident member is softened
    assert raw.mean() < 0.5 and (test.argmax(1) == y[half:]).mean() > 0.75


def test_calibrated_validation_row_is_cross_fitted():
    """A validation image's combined probabilities come from temperatures fitted without its own label: changing
    the labels of one fold leaves that fold's rows as they were (and changes the others')."""
    rng = np.random.default_rng(3)
    n, k = 50, 10
    net, feat = rng.dirichlet(np.ones(k) * 0.2, n), rng.dirichlet(np.ones(k), n)
    y = rng.integers(0, k, n)
    val, test, temps = calibrated_combine(net, feat, y, net, feat)
    fold0 = np.arange(n) % 5 == 0
    y2 = y.copy()
    y2[fold0] = (y[fold0] + 1) % k
    val2, _, temps2 = calibrated_combine(net, feat, y2)
    np.testing.assert_allclose(val2[fold0], val[fold0])
    assert not np.allclose(val2[~fold0], val[~fold0]) and temps2 != temps
    assert temps == (fit_temperature(net, y), fit_temperature(feat, y))
    np.testing.assert_allclose(test, combine(temperature_scale(net, temps[0]), temperature_scale(feat, temps[1]), 0.5))
    # fold 0's own rows: the temperatures of the other four folds
    t0 = fit_temperature(net[~fold0], y[~fold0]), fit_temperature(feat[~fold0], y[~fold0])
    np.testing.assert_allclose(val[fold0], combine(temperature_scale(net[fold0], t0[0]),
                                                   temperature_scale(feat[fold0], t0[1]), 0.5))
    np.testing.assert_allclose(val.sum(1), 1.0)


def test_the_row_calibrates_with_enough_validation_images_only():
    """From `MIN_CALIBRATION_IMAGES` validation images on, the members are temperature-scaled and averaged as
    equals; with fewer, the uncalibrated 0.3/0.7 sum."""
    rng = np.random.default_rng(4)
    k = 10
    for n in (MIN_CALIBRATION_IMAGES - 1, MIN_CALIBRATION_IMAGES, 50):
        net, feat = rng.dirichlet(np.ones(k) * 0.1, n), rng.dirichlet(np.ones(k), n)
        nt, ft = rng.dirichlet(np.ones(k) * 0.1, 7), rng.dirichlet(np.ones(k), 7)
        y = rng.integers(0, k, n)
        val, test, info = ensemble_probabilities(net, feat, y, nt, ft)
        if n < MIN_CALIBRATION_IMAGES:
            assert info == {"rule": "uncalibrated", "network_weight": 0.3, "images": "grey", "temperatures": None,
                            "validation_images": n, "folds": None} and NETWORK_WEIGHT == 0.3
            np.testing.assert_allclose(test, combine(nt, ft, 0.3))
            np.testing.assert_allclose(val, combine(net, feat, 0.3))
        else:
            assert info["rule"] == "calibrated" and info["network_weight"] == 0.5 and info["validation_images"] == n
            ref_val, ref_test, temps = calibrated_combine(net, feat, y, nt, ft, 0.5)
            np.testing.assert_allclose(test, ref_test)
            np.testing.assert_allclose(val, ref_val)
            assert info["temperatures"]["fixmatch"] == pytest.approx(temps[0], abs=1e-4)
            assert info["temperatures"]["kmeans-features"] == pytest.approx(temps[1], abs=1e-4)
    assert ensemble_probabilities(net, feat, y)[1] is None  # no test images


def test_photos_give_the_network_less_weight_than_grey_images():
    """The calibrated rule averages the members as equals for grey images and gives the network 0.4 for colour
    photos, where the k-means features were the stronger member on every benchmark draw; an unknown kind is a
    one-line error."""
    rng = np.random.default_rng(5)
    k, n = 10, 40
    net, feat = rng.dirichlet(np.ones(k) * 0.1, n), rng.dirichlet(np.ones(k), n)
    nt, ft = rng.dirichlet(np.ones(k) * 0.1, 9), rng.dirichlet(np.ones(k), 9)
    y = rng.integers(0, k, n)
    for kind, weight in (("grey", 0.5), ("photo", 0.4)):
        val, test, info = ensemble_probabilities(net, feat, y, nt, ft, kind=kind)
        assert info["network_weight"] == weight and info["images"] == kind
        ref_val, ref_test, temps = calibrated_combine(net, feat, y, nt, ft, weight)
        np.testing.assert_allclose(test, ref_test)
        np.testing.assert_allclose(val, ref_val)
        np.testing.assert_allclose(test, weight * temperature_scale(nt, temps[0])
                                   + (1 - weight) * temperature_scale(ft, temps[1]))
    assert not np.allclose(ensemble_probabilities(net, feat, y, nt, ft, kind="photo")[1],
                           ensemble_probabilities(net, feat, y, nt, ft, kind="grey")[1])
    with pytest.raises(ValueError, match="kind must be one of photo, grey"):
        ensemble_probabilities(net, feat, y, kind="colour")


def _read(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def study(demo_root, tmp_path_factory):
    from aelab.train.study import ClassificationStudyConfig, classification_study

    out = tmp_path_factory.mktemp("ens") / "run"
    cfg = ClassificationStudyConfig(methods="fixmatch,kmeans-features,ensemble", preset="tiny", channels=1,
                                    fixmatch_epochs=3, kmeans_features_centroids=32, device="cpu")
    return cfg, out, classification_study(cfg, demo_root, out)


def test_ensemble_row_averages_the_two_members_probabilities(study, demo_root, tmp_path):
    """The row's predictions are the argmax of 0.3·(the network's probabilities, as `aelab predict` writes them)
    + 0.7·(the k-means-features classifier's), image by image (10 validation images: too few to calibrate on, as
    ``combination.json`` says), and its accuracy is that of its CSV."""
    from aelab.data import image_ids, list_images, read_labels_csv
    from aelab.train.predict import PredictConfig, predict_result

    cfg, out, result = study
    rows = {r.method: r for r in result.rows}
    assert set(rows) == {"fixmatch", "kmeans-features", "ensemble"} and not result.skipped
    header, body = _read(rows["ensemble"].predictions)
    ids = image_ids(list_images(demo_root / "test"))
    assert header == ["id", "label"] and [r[0] for r in body] == ids

    pred = predict_result(PredictConfig(model=str(out / "fixmatch"), data=str(demo_root), probabilities=True,
                                        out=str(tmp_path / "p"), device="cpu"))
    head, prob_rows = _read(pred.run_dir / "probabilities.csv")
    network = np.array([[float(v) for v in r[1:]] for r in prob_rows])
    with np.load(out / "kmeans-features" / "probabilities.npz") as f:
        features, feature_ids = f["test"], list(f["test_ids"])
    assert feature_ids == ids and np.allclose(features.sum(1), 1, atol=1e-5)
    info = json.loads((out / "ensemble" / "combination.json").read_text())
    assert rows["ensemble"].n_val < MIN_CALIBRATION_IMAGES
    assert info == {"rule": "uncalibrated", "network_weight": 0.3, "images": "grey", "temperatures": None,
                    "validation_images": rows["ensemble"].n_val, "folds": None}
    expected = 0.3 * network + 0.7 * features
    classes = head[1:]
    # the CSV's 6 decimals can flip a near tie only
    margin = np.sort(expected, 1)[:, -1] - np.sort(expected, 1)[:, -2]
    agree = [classes[e] == r[1] for e, r, m in zip(expected.argmax(1), body, margin) if m > 1e-4]
    assert len(agree) >= len(ids) - 2 and all(agree)

    truth = read_labels_csv(demo_root / "test_labels.csv")
    assert rows["ensemble"].test_acc == pytest.approx(np.mean([truth[i] == lab for i, lab in body]))
    assert rows["ensemble"].test_acc > 0.3  # digits, 4 labelled per class: chance is 0.1
    assert rows["ensemble"].n_val == rows["fixmatch"].n_val == rows["kmeans-features"].n_val


def test_ensemble_without_its_members_is_skipped_with_the_reason(demo_root, tmp_path):
    from aelab.train.study import ClassificationStudyConfig, classification_study

    cfg = ClassificationStudyConfig(methods="kmeans-features,ensemble", channels=1, kmeans_features_centroids=16,
                                    device="cpu")
    result = classification_study(cfg, demo_root, tmp_path / "run")
    assert [r.method for r in result.rows] == ["kmeans-features"]
    assert "fixmatch is not in --methods" in result.skipped["ensemble"]


def test_ensemble_before_its_members_is_refused_in_one_line():
    from aelab.errors import AelabError
    from aelab.train.study import ClassificationStudyConfig

    with pytest.raises(AelabError, match="put fixmatch before ensemble"):
        ClassificationStudyConfig(methods="kmeans-features,ensemble,fixmatch")


@pytest.mark.parametrize("kind, weight", [("grey", 0.5), ("photo", 0.4)])
def test_row_with_enough_validation_images_writes_the_calibrated_average(study, demo_root, tmp_path, monkeypatch,
                                                                          kind, weight):
    """The row's CSV and combination.json follow the calibrated rule once the validation images suffice (the
    threshold lowered to this small study's 10): each member scaled by the temperature fitted on the validation
    images, then averaged as equals for the digits; had the images been colour photos, with the network's weight
    0.4 (the kind the row sees made "photo")."""
    import shutil

    import aelab.data.kind
    from aelab.layout import RunLayout
    from aelab.train import ensemble

    cfg, out, _ = study
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    monkeypatch.setattr(ensemble, "MIN_CALIBRATION_IMAGES", 5)
    seen = []
    if kind == "photo":
        def photo(images, **kw):  # the labelled images, decoded as the network sees them
            seen.append(images.shape)
            return "photo"
        monkeypatch.setattr(aelab.data.kind, "image_kind", photo)
    row = ensemble.run_ensemble(cfg, demo_root, RunLayout(copy))
    info = json.loads((copy / "ensemble" / "combination.json").read_text())
    assert info["rule"] == "calibrated" and info["validation_images"] == row.n_val == 10
    assert info["images"] == kind and info["network_weight"] == weight

    s, net_val, net_test = ensemble.network_probabilities(copy / "fixmatch" / "best.ckpt", cfg, demo_root)
    assert seen == ([s.images.shape] if kind == "photo" else [])
    with np.load(copy / "kmeans-features" / "probabilities.npz") as f:
        feat_val, feat_test = f["val"], f["test"]
    y_val = s.labels[s.val_idx]
    assert info["temperatures"]["fixmatch"] == pytest.approx(fit_temperature(net_val, y_val), abs=1e-4)
    assert info["temperatures"]["kmeans-features"] == pytest.approx(fit_temperature(feat_val, y_val), abs=1e-4)
    expected = weight * temperature_scale(net_test, info["temperatures"]["fixmatch"]) + (
        1 - weight) * temperature_scale(feat_test, info["temperatures"]["kmeans-features"])
    _, body = _read(copy / "ensemble" / "predictions.csv")
    margin = np.sort(expected, 1)[:, -1] - np.sort(expected, 1)[:, -2]
    agree = [s.classes[e] == r[1] for e, r, m in zip(expected.argmax(1), body, margin) if m > 1e-5]
    assert len(agree) >= len(body) - 2 and all(agree)


def test_unfinished_member_is_an_error_so_a_resumed_run_retries_it(study, demo_root, tmp_path):
    """In an `aelab run` folder a member that failed (status in stages.json) must not be combined, even with a
    checkpoint on disk, and the row must fail (retried on resume), not be skipped for good."""
    import json
    import shutil

    from aelab.errors import AelabError, StageSkipped
    from aelab.layout import RunLayout
    from aelab.train.ensemble import run_ensemble

    cfg, out, _ = study
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "stages.json").write_text(json.dumps({"fixmatch": {"status": "failed"},
                                                  "kmeans-features": {"status": "done"}}))
    with pytest.raises(AelabError, match="fixmatch has not finished") as err:
        run_ensemble(cfg, demo_root, RunLayout(copy))
    assert not isinstance(err.value, StageSkipped)
    (copy / "kmeans-features" / "probabilities.npz").write_bytes(b"not a zip")
    (copy / "stages.json").write_text(json.dumps({"fixmatch": {"status": "done"}}))
    with pytest.raises(AelabError, match="cannot read .*probabilities.npz"):
        run_ensemble(cfg, demo_root, RunLayout(copy))


def test_submitted_ensemble_embeds_with_the_fixmatch_network(study):
    from aelab.layout import RunLayout
    from aelab.train.study import StudyResult, submission

    cfg, out, result = study
    chosen = StudyResult(result.rows, "ensemble", "test", result.predictions)
    assert submission(chosen, RunLayout(out)).model == "fixmatch"


def test_linked_labelled_images_keep_their_listed_names(demo_root, tmp_path):
    """A folder of symbolic links (how the benchmarks draw their folders) names its images, not the targets."""
    from aelab.train.method_runs import study_images
    from aelab.train.study import ClassificationStudyConfig

    linked = tmp_path / "data"
    for part in ("dev/unlabelled", "test"):
        (linked / part).parent.mkdir(parents=True, exist_ok=True)
        (linked / part).symlink_to(demo_root / part)
    for folder in sorted((demo_root / "dev" / "labelled").iterdir()):
        (linked / "dev" / "labelled" / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir()):
            (linked / "dev" / "labelled" / folder.name / f"link_{f.name}").symlink_to(f)
    s = study_images(ClassificationStudyConfig(channels=1, device="cpu"), linked, unlabelled=False)
    assert s.unlabelled is None and len(s.names) == len(s.labels) > 0
    assert all(n.split("/")[1].startswith("link_") for n in s.names)
    assert [s.classes.index(n.split("/")[0]) for n in s.names] == s.labels.tolist()


def test_ensemble_refuses_probabilities_of_another_split(study, demo_root, tmp_path):
    """A kmeans-features row of the same folder but another split must not be combined silently."""
    import shutil
    from dataclasses import replace

    from aelab.errors import AelabError
    from aelab.layout import RunLayout
    from aelab.train.ensemble import run_ensemble
    from aelab.train.method_runs import run_kmeans_features

    cfg, out, _ = study
    copy = tmp_path / "run"
    shutil.copytree(out / "fixmatch", copy / "fixmatch")
    run_kmeans_features(replace(cfg, seed=1), demo_root, RunLayout(copy))
    with pytest.raises(AelabError, match="other images than .* with this split"):
        run_ensemble(cfg, demo_root, RunLayout(copy))
