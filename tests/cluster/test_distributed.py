"""EKM over 2 processes (torch.distributed, gloo on CPU) equals one process on all the points."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from aelab.cluster import EquilibriumKMeans, MiniBatchEquilibriumKMeans, SemiSupervisedEquilibriumKMeans
from aelab.cluster.core import EKMStats
from aelab.cluster.distributed import GatheredRows, allreduce_stats, gather_rows, shard_bounds
from tests.cluster.cluster_data import imbalanced_balls
from tests.processes import run_processes

START = [0, 650, 700]  # the same start in one and two processes: rows of the big, small and middle ball
MB = dict(batch_size=64, max_iter=15, tol=1e-9, random_state=3)  # 12 global batches per epoch, split unevenly


def _minibatch(X, shard=None, **kw):
    """Mini-batch EKM with the given start (or k-means++), and 4 partial_fit calls on halves of X."""
    part = (lambda A: A) if shard is None else (lambda A: A[shard])  # noqa: E731
    fit = MiniBatchEquilibriumKMeans(3, alpha=1.0, distributed=shard is not None, **MB, **kw).fit(part(X))
    stream = MiniBatchEquilibriumKMeans(3, alpha=1.0, init=X[START], distributed=shard is not None)
    for rows in np.array_split(np.random.default_rng(0).permutation(len(X)), 4):
        rows = np.sort(rows)
        stream.partial_fit(X[rows[np.isin(rows, part(np.arange(len(X))))]])
    return fit, stream


def _no_labels_below(y, row):
    y = y.copy()
    y[:row] = -1
    return y


def _worker(rank, world, init_file, out_dir, X, y):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        shard = np.arange(*shard_bounds(len(X), rank, world))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ekm = EquilibriumKMeans(3, alpha=1.0, init=X[START], tol=1e-8, distributed=True).fit(X[shard])
            ss = SemiSupervisedEquilibriumKMeans(3, alpha=1.0, init=X[START], tol=1e-8, distributed=True).fit(
                X[shard], y[shard])
            # init="labels": class means of the labelled points, and θ = N / |S|, when rank 0 holds no label
            ss_labels = SemiSupervisedEquilibriumKMeans(3, alpha=1.0, tol=1e-8, distributed=True).fit(
                X[shard], _no_labels_below(y, 360)[shard])
            default = EquilibriumKMeans(3, random_state=0, tol=1e-8, distributed=True).fit(X[shard])
            mb, _ = _minibatch(X, shard, init=X[START])
            mb_pp, stream = _minibatch(X, shard)  # k-means++ start drawn from both ranks' points
        st = allreduce_stats(EKMStats(np.full((2, 2), rank + 1.0), np.ones(2), np.ones(2), float(rank)))
        seen = GatheredRows(X[shard])
        rows = np.array([5, 400, 719, 0])
        np.savez(os.path.join(out_dir, f"rank{rank}.npz"), ekm=ekm.cluster_centers_, ss=ss.cluster_centers_,
                 objective=ekm.objective_, labels=ekm.labels_, sum_wx=st.sum_wx, J=st.objective,
                 default=default.cluster_centers_, ss_labels=ss_labels.cluster_centers_, theta=ss_labels.theta_,
                 alpha=default.alpha_, mb=mb.cluster_centers_,
                 mb_pp=mb_pp.cluster_centers_, mb_steps=mb_pp.n_steps_, mb_objective=mb_pp.objective_,
                 mb_labels=gather_rows(mb_pp.labels_), stream=stream.cluster_centers_, rows=seen[rows],
                 all_rows=np.asarray(seen), shape=seen.shape)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    X, y_true = imbalanced_balls((600, 30, 90))
    y = np.full(len(X), -1)
    for k in range(3):  # a few labels per class, spread over both shards
        y[np.flatnonzero(y_true == k)[::15]] = k
    tmp = tmp_path_factory.mktemp("dist")
    run_processes(_worker, (2, str(tmp / "init"), str(tmp), X, y), "EKM")
    return X, y, [dict(np.load(tmp / f"rank{r}.npz")) for r in range(2)]


def test_all_reduce_sums_every_statistic(two_ranks):
    _, _, ranks = two_ranks
    for r in ranks:
        np.testing.assert_array_equal(r["sum_wx"], np.full((2, 2), 3.0))
        assert r["J"] == 1.0


def test_two_processes_give_one_process_centroids(two_ranks):
    X, y, ranks = two_ranks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = EquilibriumKMeans(3, alpha=1.0, init=X[START], tol=1e-8).fit(X)
        ss = SemiSupervisedEquilibriumKMeans(3, alpha=1.0, init=X[START], tol=1e-8).fit(X, y)
        default = EquilibriumKMeans(3, random_state=0, tol=1e-8).fit(X)
        ss_labels = SemiSupervisedEquilibriumKMeans(3, alpha=1.0, tol=1e-8).fit(X, _no_labels_below(y, 360))
    for r in ranks:
        np.testing.assert_allclose(r["ekm"], one.cluster_centers_, atol=1e-6, rtol=0)
        np.testing.assert_allclose(r["ss"], ss.cluster_centers_, atol=1e-6, rtol=0)
        np.testing.assert_allclose(r["ss_labels"], ss_labels.cluster_centers_, atol=1e-6, rtol=0)
        assert r["theta"] == ss_labels.theta_ == len(X) / np.sum(_no_labels_below(y, 360) >= 0)  # N / |S|, all ranks
        assert r["objective"] == pytest.approx(one.objective_, rel=1e-9)
        assert r["alpha"] == pytest.approx(default.alpha_, rel=1e-12)  # "dvariance" from the global data scale
    np.testing.assert_array_equal(np.concatenate([ranks[0]["labels"], ranks[1]["labels"]]), one.labels_)
    # default seeding (screened, drawn from both ranks' points): one process's starts, so its centroids
    np.testing.assert_array_equal(ranks[0]["default"], ranks[1]["default"])
    # (its two starts reach the same solution in another cluster order: which one wins is rounding)
    order = lambda C: C[np.lexsort(C.T)]  # noqa: E731
    np.testing.assert_allclose(order(ranks[0]["default"]), order(default.cluster_centers_), atol=1e-6, rtol=0)


def test_without_a_process_group_it_is_a_clear_error():
    with pytest.raises(ValueError, match="process group"):
        EquilibriumKMeans(2, distributed=True).fit(np.arange(20.0).reshape(10, 2))


def test_gathered_rows_show_both_shards_as_one_array(two_ranks):
    X, _, ranks = two_ranks
    for r in ranks:
        assert tuple(r["shape"]) == X.shape
        np.testing.assert_array_equal(r["rows"], X[[5, 400, 719, 0]])
        np.testing.assert_array_equal(r["all_rows"], X)


def test_two_process_minibatch_walks_the_same_batches_as_one_process(two_ranks):
    X, _, ranks = two_ranks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one, one_stream = _minibatch(X, init=X[START])
        one_pp, _ = _minibatch(X)
    for r in ranks:
        np.testing.assert_allclose(r["mb"], one.cluster_centers_, atol=1e-6, rtol=0)
        np.testing.assert_allclose(r["mb_pp"], one_pp.cluster_centers_, atol=1e-6, rtol=0)
        np.testing.assert_allclose(r["stream"], one_stream.cluster_centers_, atol=1e-6, rtol=0)
        assert r["mb_steps"] == one_pp.n_steps_ and r["mb_objective"] == pytest.approx(one_pp.objective_, rel=1e-9)
        np.testing.assert_array_equal(r["mb_labels"], one_pp.labels_)
    assert not np.allclose(one.cluster_centers_, one_pp.cluster_centers_, atol=1e-3)  # two different runs compared
