"""Study 1's ``ensemble`` row: FixMatch's network and the k-means-features classifier, averaged."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from aelab.train.ensemble import NETWORK_WEIGHT, combine


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
    + 0.7·(the k-means-features classifier's), image by image, and its accuracy is that of its CSV."""
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
