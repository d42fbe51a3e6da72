"""The clustering study (aelab.cluster.study) end to end on small generated embeddings."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from aelab.cluster.study import ClusterConfig, ClusterResult, run_cluster_study
from aelab.errors import AelabError


def cluster(input, **kwargs):
    return run_cluster_study(ClusterConfig(input=input, **kwargs)).run_dir


def write_embed_run(folder, sizes=(300, 150, 150, 100), d=16, seed=0):
    """A fake `aelab embed` run folder: embeddings.npy (float32) and embeddings.csv."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(sizes), d)) * 4
    X = np.vstack([rng.normal(c, 1.0, (n, d)) for c, n in zip(centres, sizes)]).astype(np.float32)
    labels = [f"c{k}" for k, n in enumerate(sizes) for _ in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "embeddings.npy", X)
    with open(folder / "embeddings.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "label"])
        w.writerows([f"img_{i}.png", lab] for i, lab in enumerate(labels))
    return X, labels


def read_csv(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def test_cluster_run_folder_end_to_end(tmp_path):
    write_embed_run(tmp_path / "embed")
    run = cluster(str(tmp_path / "embed"), out=str(tmp_path / "run"), classes="c0,c1,c2", ratio="2:1:1", seed=0)
    assert run == tmp_path / "run"
    header, rows = read_csv(run / "clusters.csv")
    assert header == ["filename", "label", "cluster"]
    assert len(rows) == 300 + 150 + 150 and {r[1] for r in rows} == {"c0", "c1", "c2"}
    header, sweep = read_csv(run / "alpha_sweep.csv")
    assert header == ["alpha", "sizes", "ratio", "ratio_distance", "objective", "min_separation", "converged",
                      "n_iter", "ari", "nmi", "acc"]
    assert len(sweep) >= 11
    m = json.loads((run / "metrics.json").read_text())
    assert m["method"] == "ekm" and m["n_clusters"] == 3 and m["classes"] == ["c0", "c1", "c2"]
    assert m["ari"] >= 0.95 and m["acc"] >= 0.95 and m["nmi"] >= 0.9
    assert m["sizes"] == [300, 150, 150] and m["ratio"] == [2.0, 1.0, 1.0]
    assert m["search"]["separated"] and m["search"]["alpha"] == m["alpha"]
    assert m["alpha_sklekmeans"] == pytest.approx(m["alpha"] / 2)
    assert (run / "figures" / "clusterings.png").exists() and (run / "figures" / "ratio_vs_alpha.png").exists()
    assert (run / "config.yaml").exists()


def test_subsampling_to_a_ratio_is_deterministic(tmp_path):
    write_embed_run(tmp_path / "embed", sizes=(100, 100, 100, 10))
    a = cluster(str(tmp_path / "embed"), out=str(tmp_path / "a"), classes="c2,c0", ratio="1:2", alpha="1.0")
    b = cluster(str(tmp_path / "embed"), out=str(tmp_path / "b"), classes="c2,c0", ratio="1:2", alpha="1.0")
    ra, rb = read_csv(a / "clusters.csv")[1], read_csv(b / "clusters.csv")[1]
    assert ra == rb
    assert sum(r[1] == "c2" for r in ra) == 50 and sum(r[1] == "c0" for r in ra) == 100


def test_csv_input_without_classes_and_a_baseline(tmp_path):
    X, labels = write_embed_run(tmp_path / "embed", sizes=(80, 40, 40))
    with open(tmp_path / "feat.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label"] + [f"f{j}" for j in range(X.shape[1])])
        w.writerows([lab] + row.tolist() for lab, row in zip(labels, X))
    run = cluster(str(tmp_path / "feat.csv"), out=str(tmp_path / "run"), n_clusters=3, method="kmeans")
    m = json.loads((run / "metrics.json").read_text())
    assert m["method"] == "kmeans" and m["alpha"] is None and m["ari"] >= 0.95
    header, rows = read_csv(run / "clusters.csv")
    assert header == ["filename", "label", "cluster"] and rows[0][0] == "0"


def test_npy_without_labels(tmp_path):
    X, _ = write_embed_run(tmp_path / "embed", sizes=(60, 30, 30))
    np.save(tmp_path / "bare.npy", X)
    run = cluster(str(tmp_path / "bare.npy"), out=str(tmp_path / "run"), n_clusters=3, alpha="0.5")
    m = json.loads((run / "metrics.json").read_text())
    assert "ari" not in m and m["alpha"] == 0.5 and sorted(m["sizes"]) == [30, 30, 60]


@pytest.mark.parametrize("kwargs, match", [
    (dict(input="missing_dir"), "input not found"),
    (dict(classes="c0,c9"), "unknown class 'c9'"),
    (dict(ratio="2:1"), "--ratio needs --classes"),
    (dict(), "--n_clusters is required"),
    (dict(classes="c0,c1", ratio="2:1:1"), "has 3 parts but --classes names 2"),
    (dict(classes="c0,c1", alpha="big"), "--alpha must be"),
    (dict(classes="c0,c1"), "--target_ratio 2:1:1 has 3 parts but n_clusters=2"),
    (dict(classes="c0,c1", method="dbscan"), "--method must be one of"),
    (dict(classes="c0,c1", method="ssekm", target_ratio="1:1", label_fraction=0.0), "--label_fraction must be"),
])
def test_bad_input_is_one_line_aelab_error(tmp_path, monkeypatch, kwargs, match):
    write_embed_run(tmp_path / "embed", sizes=(20, 20, 20))
    monkeypatch.chdir(tmp_path)
    args = dict(input=str(tmp_path / "embed"), out=str(tmp_path / "run")) | kwargs
    with pytest.raises(AelabError, match=match) as info:
        cluster(**args)
    assert "\n" not in str(info.value)


def test_nan_embeddings_are_rejected(tmp_path):
    X, _ = write_embed_run(tmp_path / "embed", sizes=(10, 10))
    X[3, 2] = np.nan
    np.save(tmp_path / "embed" / "embeddings.npy", X)
    with pytest.raises(AelabError, match="NaN or inf"):
        cluster(str(tmp_path / "embed"), out=str(tmp_path / "run"), classes="c0,c1", target_ratio="1:1")


def test_result_holds_labels_metrics_and_every_file(tmp_path):
    write_embed_run(tmp_path / "embed", sizes=(120, 60, 60))
    res = run_cluster_study(ClusterConfig(input=str(tmp_path / "embed"), out=str(tmp_path / "run"), classes="c0,c1,c2",
                                          alpha="1.0"))
    assert isinstance(res, ClusterResult) and res.run_dir == tmp_path / "run"
    assert res.labels.shape == (240,) and res.alpha == 1.0 and res.metrics["method"] == "ekm"
    assert set(res.files) == {"clusters", "alpha_sweep", "metrics", "config", "clusterings", "ratio_vs_alpha"}
    assert all(p.is_file() for p in res.files.values())
    assert json.loads(res.files["metrics"].read_text()) == json.loads(json.dumps(res.metrics))
    _, rows = read_csv(res.files["clusters"])
    assert [int(r[2]) for r in rows] == res.labels.tolist()


def test_ssekm_uses_a_fraction_of_the_labels(tmp_path):
    write_embed_run(tmp_path / "embed", sizes=(200, 100, 100))
    res = run_cluster_study(ClusterConfig(input=str(tmp_path / "embed"), out=str(tmp_path / "run"), classes="c0,c1,c2",
                                          method="ssekm", label_fraction=0.1))
    m = res.metrics
    assert m["method"] == "ssekm" and m["n_labels_used"] == 20 + 10 + 10 and m["label_fraction"] == 0.1
    assert m["search"]["alpha"] == m["alpha"]  # α from the label-blind EKM search
    assert m["ari"] >= 0.95


def _npy(tmp_path, X, name="emb.npy"):
    import numpy as np

    path = tmp_path / name
    np.save(path, np.asarray(X, dtype=np.float64))
    return str(path)


def test_bad_inputs_are_one_line_and_leave_no_folder(tmp_path):
    import numpy as np
    import pytest

    from aelab.cluster.study import ClusterConfig, run_cluster_study
    from aelab.errors import AelabError

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (60, 2)), rng.normal(6, 1, (30, 2)), rng.normal((0, 6), 1, (30, 2))])
    cases = [
        (dict(input=_npy(tmp_path, X[:1], "one.npy"), n_clusters=1), "at least 2 samples"),
        (dict(input=_npy(tmp_path, X), n_clusters=3, alpha="1e308"), "too large"),
        (dict(input=_npy(tmp_path, X), n_clusters=3, target_ratio="2:1"), "2 parts but n_clusters=3"),
    ]
    for i, (kw, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        with pytest.raises(AelabError, match=message):
            run_cluster_study(ClusterConfig(out=str(out), **kw))
        assert not out.exists()


def test_data_scaled_by_1e200_clusters_like_the_original(tmp_path):
    import numpy as np

    from aelab.cluster.study import ClusterConfig, run_cluster_study

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (60, 2)), rng.normal(8, 1, (30, 2)), rng.normal((0, 8), 1, (30, 2))])
    base = run_cluster_study(ClusterConfig(input=_npy(tmp_path, X), n_clusters=3, alpha="1.0", out=str(tmp_path / "a")))
    (tmp_path / "emb.npy").unlink()
    big = run_cluster_study(ClusterConfig(input=_npy(tmp_path, X * 1e200), n_clusters=3, alpha="1.0",
                                          out=str(tmp_path / "b")))
    assert sorted(np.bincount(big.labels)) == sorted(np.bincount(base.labels)) and min(np.bincount(big.labels)) > 10


def _sweep_table(path):
    header, rows = read_csv(path)
    return [dict(zip(header, r)) for r in rows]


@pytest.mark.slow
def test_two_processes_write_the_clustering_of_one_process(tmp_path):
    """``aelab cluster --devices 2`` (Fabric, gloo) shards every EKM fit of the α search; rank 0 writes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    write_embed_run(tmp_path / "embed", sizes=(120, 60, 60, 40), d=8)
    common = dict(classes="c0,c1,c2", ratio="2:1:1")
    one = cluster(str(tmp_path / "embed"), out=str(tmp_path / "one"), **common)
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "aelab.cli.main", "cluster", str(tmp_path / "embed"), "--classes",
                          "c0,c1,c2", "--ratio", "2:1:1", "--device", "cpu", "--devices", "2", "--out",
                          str(tmp_path / "two")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    two = tmp_path / "two"
    assert "2 processes" in res.stderr and res.stderr.count("[cluster] sizes") == 1  # rank 0 alone reports
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir() if p.name != ".aelab.lock")
    assert (two / "clusters.csv").read_bytes() == (one / "clusters.csv").read_bytes()
    a, b = _sweep_table(one / "alpha_sweep.csv"), _sweep_table(two / "alpha_sweep.csv")
    assert len(a) == len(b) >= 11
    for p, q in zip(a, b):  # every α of the search: same clustering, same number of iterations
        # Where α is so small that the centroids coincide (separation 0), every point is a tie between
        # identical centroids and the last bits of the sums decide the sizes: only the objective must agree.
        tie = max(float(p["min_separation"]), float(q["min_separation"])) < 1e-12
        keys = ("alpha", "converged", "n_iter") if tie else ("alpha", "sizes", "converged", "n_iter", "ari")
        assert {k: p[k] for k in keys} == {k: q[k] for k in keys}
        assert float(q["objective"]) == pytest.approx(float(p["objective"]), rel=1e-9)
        assert float(q["min_separation"]) == pytest.approx(float(p["min_separation"]), rel=1e-6, abs=1e-9)
    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (one, two))
    assert m2["alpha"] == m1["alpha"] and m2["sizes"] == m1["sizes"] == [120, 60, 60] and m2["ari"] == m1["ari"]


def test_devices_are_checked_before_any_process_starts(tmp_path):
    write_embed_run(tmp_path / "embed", sizes=(6, 3, 3, 2), d=4)
    with pytest.raises(AelabError, match="too few for 8 processes"):
        cluster(str(tmp_path / "embed"), out=str(tmp_path / "r"), classes="c0,c1,c2", devices=8)
    with pytest.raises(AelabError, match="--device"):
        cluster(str(tmp_path / "embed"), out=str(tmp_path / "r"), classes="c0,c1,c2", device="tpu")
    assert not (tmp_path / "r").exists()
