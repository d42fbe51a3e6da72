"""Anomaly maps and their reductions to image scores, on generated images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from aelab.anomaly import (
    base_scores,
    combine_scores,
    error_maps,
    pixel_errors,
    reduce_maps,
    smooth_maps,
)
from aelab.errors import AelabError


def _scenes(seed: int = 0, n: int = 40):
    """Clean images with uniform reconstruction noise everywhere, and one image with a single bright 3x3 patch.

    The noisy clean images have a *larger* total error than the patch image, so the mean ranks
    the patch image below them; the patch is the one thing a local score should find.
    """
    rng = np.random.default_rng(seed)
    target = torch.zeros(n + 1, 1, 32, 32)
    recon = torch.from_numpy(rng.uniform(0.0, 0.2, (n + 1, 1, 32, 32)).astype(np.float32))
    recon[n] = 0.02
    recon[n, 0, 10:13, 20:23] = 0.9
    return target, recon


@pytest.mark.parametrize("kind", ["mse", "mae"])
def test_max_and_topk_rank_a_single_bright_patch_first_where_the_mean_does_not(kind):
    target, recon = _scenes()
    maps = error_maps(target, recon, kind)
    mean = reduce_maps(maps, "mean").numpy()
    assert np.argmax(mean) != len(mean) - 1 and mean[-1] < np.median(mean[:-1])  # the mean hides the patch
    for reduction, smoothing in (("max", 0.0), ("max", 1.0), ("topk", 0.0), ("topk", 1.0)):
        scores = reduce_maps(smooth_maps(maps, smoothing), reduction, top_k=0.01).numpy()
        assert np.argmax(scores) == len(scores) - 1, (reduction, smoothing)


def test_reductions_match_their_definitions():
    maps = torch.from_numpy(np.random.default_rng(1).random((5, 10, 10)).astype(np.float32))
    flat = maps.numpy().reshape(5, -1)
    np.testing.assert_allclose(reduce_maps(maps, "mean").numpy(), flat.mean(1), rtol=1e-6)
    np.testing.assert_allclose(reduce_maps(maps, "max").numpy(), flat.max(1))
    top3 = np.sort(flat, axis=1)[:, -3:].mean(1)  # 3 % of 100 pixels
    np.testing.assert_allclose(reduce_maps(maps, "topk", top_k=0.03).numpy(), top3, rtol=1e-6)
    with pytest.raises(AelabError, match="reduction"):
        reduce_maps(maps, "median")
    with pytest.raises(AelabError, match="top_k"):
        reduce_maps(maps, "topk", top_k=0.0)


def test_smoothing_keeps_a_constant_map_and_spreads_a_spike():
    const = torch.full((1, 16, 16), 0.3)
    np.testing.assert_allclose(smooth_maps(const, 1.5).numpy(), 0.3, rtol=1e-5)
    spike = torch.zeros(1, 16, 16)
    spike[0, 8, 8] = 1.0
    out = smooth_maps(spike, 1.0)[0].numpy()
    assert out.sum() == pytest.approx(1.0, rel=1e-4) and out[8, 8] == out.max() < 0.2 and out[8, 9] > 0
    assert smooth_maps(spike, 0.0) is spike


def test_gms_map_is_zero_for_a_perfect_reconstruction_and_sees_a_missing_edge():
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:12, 7:9] = 1.0  # a vertical bar
    recon = target.clone()
    recon[1, :, 8:12, 7:9] = 0.0  # its lower half missing
    maps = error_maps(target, recon, "gms")
    assert float(maps[0].abs().max()) < 1e-5
    assert float(maps[1, 8:12, 6:10].mean()) > 0.5 and float(maps[1, :, :4].abs().max()) < 1e-5
    base = base_scores(target, recon, kinds=("gms",), reduction="max")
    assert base["gms"][1] > base["gms"][0]


def test_local_score_finds_painted_defects_better_than_the_mean_on_generated_blobs():
    """Reconstructions of 60 images with errors of varying size everywhere, 30 with a 2x2 defect
    left in: the top-k and smoothed-max scores separate them, the mean barely does."""
    rng = np.random.default_rng(3)
    target = torch.zeros(60, 1, 24, 24)
    scale = rng.uniform(0.1, 0.4, (60, 1, 1, 1))
    recon = torch.from_numpy((scale * rng.uniform(0, 1, (60, 1, 24, 24))).astype(np.float32))
    for i in range(30, 60):
        y, x = rng.integers(0, 22, 2)
        recon[i, 0, y : y + 2, x : x + 2] = 0.9
    y = np.r_[np.zeros(30), np.ones(30)]
    mean = base_scores(target, recon, kinds=("mse",))["mse"]
    topk = base_scores(target, recon, kinds=("mse",), reduction="topk", top_k=0.01)["mse"]
    peak = base_scores(target, recon, kinds=("mse",), reduction="max", smoothing=1.0)["mse"]
    assert roc_auc_score(y, topk) == 1.0 and roc_auc_score(y, peak) == 1.0 and roc_auc_score(y, mean) < 0.75


def test_joined_score_is_the_mean_of_median_scaled_parts():
    from aelab.anomaly import combine_scores
    from aelab.anomaly.scores import check_score_kind, needed_kinds

    base = {"mse": np.array([0.01, 0.04]), "gms": np.array([0.2, 0.1]), "ssim": np.array([0.3, 0.3])}
    medians = {"mse": 0.02, "gms": 0.1, "ssim": 0.3}
    np.testing.assert_allclose(combine_scores(base, "mse+gms", medians), [(0.5 + 2.0) / 2, (2.0 + 1.0) / 2])
    assert needed_kinds("mse+gms") == ("mse", "gms") and needed_kinds("gms") == ("gms",)
    for bad in ("mse+psnr", "mse+mse", "+"):
        with pytest.raises(AelabError, match="unknown anomaly score"):
            check_score_kind(bad)
    with pytest.raises(AelabError, match="median"):
        combine_scores(base, "mse+gms")


def test_scores_match_their_definitions():
    rng = np.random.default_rng(2)
    target = torch.from_numpy(rng.random((3, 3, 16, 16), dtype=np.float32))
    recon = torch.from_numpy(rng.random((3, 3, 16, 16), dtype=np.float32))
    base = base_scores(target, recon)
    diff = recon.numpy() - target.numpy()
    np.testing.assert_allclose(base["mse"], (diff**2).reshape(3, -1).mean(1), rtol=1e-5)
    np.testing.assert_allclose(base["mae"], np.abs(diff).reshape(3, -1).mean(1), rtol=1e-5)
    assert np.all(base["ssim"] > 0.5)  # unrelated noise images: SSIM near 0
    same = base_scores(target, target)
    np.testing.assert_allclose(same["ssim"], 0.0, atol=1e-4)
    np.testing.assert_allclose(pixel_errors(target, recon, "mse").mean((1, 2)).numpy(), base["mse"], rtol=1e-5)
    np.testing.assert_allclose(pixel_errors(target, recon, "ssim").mean((1, 2)).numpy(), base["ssim"], rtol=1e-4)
    medians = {"mse": 0.5, "mae": 1.0, "ssim": 2.0}
    expected = (np.sqrt(base["mse"] / 0.5) + base["ssim"] / 2.0) / 2
    np.testing.assert_allclose(combine_scores(base, "combined", medians), expected)
    with pytest.raises(AelabError, match="median"):
        combine_scores(base, "combined")
    with pytest.raises(AelabError, match="unknown anomaly score"):
        combine_scores(base, "psnr")
