"""`aelab.anomaly.transforms`: the separate heads' labels, loss and score (Hendrycks et al. 2019, Sec. 4.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aelab.anomaly.transforms import (
    head_labels,
    head_log_softmax,
    head_sizes,
    num_outputs,
    num_transforms,
    separate_loss,
    separate_scores,
    transform,
)


@pytest.mark.parametrize("flips,shift", [(True, 2), (False, 2), (True, 0), (False, 0)])
def test_head_labels_name_the_transformation_applied(flips, shift):
    """Each k has its own answers, and rebuilding T_k from them (shift, flip, rotation) gives T_k."""
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    K = num_transforms(flips, shift)
    labels = [head_labels(k, flips, shift) for k in range(K)]
    assert len(set(labels)) == K and num_outputs("separate", flips, shift) == sum(head_sizes(flips, shift))
    for k, lab in enumerate(labels):
        assert all(0 <= a < n for a, n in zip(lab, head_sizes(flips, shift)))
        y = x
        if shift:
            dx, dy = (lab[-2] - 1) * shift, (lab[-1] - 1) * shift  # horizontal, vertical: 0 = minus, 2 = plus
            p = np.pad(y.numpy(), ((0, 0), (0, 0), (shift, shift), (shift, shift)), mode="reflect")
            y = torch.from_numpy(p[..., shift - dy : shift - dy + 8, shift - dx : shift - dx + 8].copy())
        if flips and lab[1]:
            y = torch.flip(y, dims=(-1,))
        y = torch.rot90(y, lab[0], dims=(-2, -1))
        assert torch.equal(transform(x, k, flips, shift), y), k


def test_separate_loss_is_the_sum_of_the_heads_cross_entropies():
    torch.manual_seed(0)
    logits, k = torch.randn(5, 12), torch.tensor([0, 7, 33, 50, 71])
    expected = 0.0
    for n in range(5):
        lab = head_labels(int(k[n]), True, 4)
        for (a, b), y in zip([(0, 4), (4, 6), (6, 9), (9, 12)], lab):
            z = logits[n, a:b].double().numpy()
            expected += (np.log(np.exp(z).sum()) - z[y]) / 5
    assert float(separate_loss(logits, k, True, 4)) == pytest.approx(expected, rel=1e-5)


def test_separate_scores_average_the_summed_head_nll_over_transformations():
    """Two transformations (k = 0, 1) of one image, rotation and flip heads (flips, no shift)."""
    p = np.array([[[0.7, 0.1, 0.1, 0.1, 0.6, 0.4], [0.2, 0.5, 0.2, 0.1, 0.9, 0.1]]])
    expected = -(np.log(0.7) + np.log(0.6) + np.log(0.5) + np.log(0.9)) / 2  # k = 1: rotation 1, no flip
    assert separate_scores(np.log(p), True, 0, ks=np.array([0, 1]))[0] == pytest.approx(expected)
    lp = head_log_softmax(torch.randn(3, 12), "separate", True, 3)
    for a, b in [(0, 4), (4, 6), (6, 9), (9, 12)]:  # a distribution per head
        assert torch.allclose(lp[:, a:b].exp().sum(1), torch.ones(3))
