"""FixMatch's unlabelled loss, its confidence mask, the weight average and the labelled stream."""

from __future__ import annotations

import numpy as np
import torch

from aelab.train.semi import (
    CurriculumThresholds,
    DistributionAlignment,
    LabelledStream,
    ModelEMA,
    fixmatch_unlabelled_loss,
)


def _reference(weak: np.ndarray, strong: np.ndarray, tau: float) -> float:
    """Eq. (2) of Sohn et al. (2020) in plain numpy: 1/(muB) sum 1(max q >= tau) H(argmax q, p(strong))."""
    q = np.exp(weak - weak.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    pseudo = q.argmax(1)
    logp = strong - strong.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    h = -logp[np.arange(len(pseudo)), pseudo]
    return float(np.mean((q.max(1) >= tau) * h))


def test_unlabelled_loss_equals_the_papers_equation():
    rng = np.random.default_rng(0)
    weak = rng.normal(size=(64, 5)) * 3
    strong = rng.normal(size=(64, 5))
    for tau in (0.0, 0.5, 0.8, 0.95):
        loss, mask = fixmatch_unlabelled_loss(torch.tensor(weak), torch.tensor(strong), tau)
        assert abs(float(loss) - _reference(weak, strong, tau)) < 1e-6
        q = np.exp(weak) / np.exp(weak).sum(1, keepdims=True)
        assert mask.numpy().tolist() == (q.max(1) >= tau).astype(float).tolist()


def test_only_confident_images_become_pseudo_labels():
    weak = torch.tensor([[8.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.0, 0.0, 9.0]])
    strong = torch.zeros(3, 3, requires_grad=True)
    loss, mask = fixmatch_unlabelled_loss(weak, strong, threshold=0.95)
    assert mask.tolist() == [1.0, 0.0, 1.0]
    loss.backward()
    # No gradient from the unconfident image; the confident ones are pushed toward their pseudo-label.
    assert torch.all(strong.grad[1] == 0)
    assert strong.grad[0, 0] < 0 and strong.grad[2, 2] < 0
    # Above every confidence, nothing is learned from the unlabelled images.
    assert float(fixmatch_unlabelled_loss(weak, strong, threshold=1.0)[0].detach()) == 0.0


def _flexmatch_reference(latest: np.ndarray, n_classes: int, tau: float) -> np.ndarray:
    """Eqs. (6), (11), (7) of Zhang et al. (2021) in plain numpy, one class at a time."""
    sigma = np.array([np.sum(latest == c) for c in range(n_classes)], dtype=float)
    unused = np.sum(latest == -1)
    beta = sigma / max(sigma.max(), unused, 1)
    return np.array([b / (2 - b) * tau for b in beta])


def test_class_thresholds_follow_flexmatch_and_set_the_mask():
    rng = np.random.default_rng(1)
    n, k, tau = 50, 4, 0.9
    ct = CurriculumThresholds(n, k, tau)
    latest = np.full(n, -1)
    for _ in range(12):
        idx = rng.choice(n, size=8, replace=False)
        logits = rng.normal(size=(8, k)) * 4
        q = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        expected = _flexmatch_reference(latest, k, tau)
        assert np.allclose(ct.thresholds().numpy(), expected, atol=1e-6)
        # Each image's threshold is its pseudo-label's class threshold, from before this batch.
        _, mask = fixmatch_unlabelled_loss(torch.tensor(logits), torch.zeros(8, k), tau, curriculum=ct,
                                           index=torch.tensor(idx))
        assert mask.numpy().tolist() == (q.max(1) >= expected[q.argmax(1)]).astype(float).tolist()
        sure = q.max(1) >= tau
        latest[idx[sure]] = q.argmax(1)[sure]
    assert (latest >= 0).sum() > n // 2  # the reference really moved
    assert np.array_equal(ct.latest.numpy(), latest)
    # By hand: sigma = (3, 1, 0), one image unseen -> beta = (1, 1/3, 0) -> T = tau * (1, 1/5, 0).
    small = CurriculumThresholds(5, 3, 0.9)
    small.latest.copy_(torch.tensor([0, 0, 0, 1, -1]))
    assert np.allclose(small.thresholds().numpy(), [0.9, 0.18, 0.0])


def test_distribution_alignment_matches_remixmatch():
    rng = np.random.default_rng(2)
    prior = np.array([0.5, 0.3, 0.2])
    da = DistributionAlignment(torch.tensor(prior * 10), momentum=0.9)  # counts are normalised
    running = prior.copy()
    for _ in range(5):
        logits = rng.normal(size=(16, 3)) * 2
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        running = 0.9 * running + 0.1 * p.mean(0)
        q = p * prior / running
        q /= q.sum(1, keepdims=True)
        assert np.allclose(da(torch.tensor(p, dtype=torch.float32)).numpy(), q, atol=1e-5)
    # A model that predicts (0.6, 0.3, 0.1) for every image, against a uniform prior, is aligned to uniform.
    da = DistributionAlignment(torch.ones(3), momentum=0.0)
    assert torch.allclose(da(torch.tensor([[0.6, 0.3, 0.1]] * 20)), torch.full((20, 3), 1 / 3))


def test_weak_view_gets_no_gradient():
    weak = torch.randn(4, 3, requires_grad=True)
    loss, _ = fixmatch_unlabelled_loss(weak, torch.randn(4, 3, requires_grad=True), 0.0)
    loss.backward()
    assert weak.grad is None


def test_ema_follows_the_weights_and_the_batchnorm_statistics():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9)
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    for _ in range(200):
        ema.update(model)
    assert torch.allclose(ema.module[0].weight, before + 1.0, atol=1e-6)
    assert torch.allclose(ema.module[1].running_mean, model[1].running_mean, atol=1e-6)
    assert torch.equal(ema.module[1].num_batches_tracked, model[1].num_batches_tracked)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_labelled_stream_depends_only_on_seed_rank_and_step():
    images, labels = torch.arange(40).view(40, 1), torch.arange(40) % 4
    a = LabelledStream(images, labels, 8, seed=1)
    b = LabelledStream(images, labels, 8, seed=1)
    assert torch.equal(a.batch(5)[0], b.batch(5)[0]) and not torch.equal(a.batch(5)[0], a.batch(6)[0])
    assert not torch.equal(a.batch(5)[0], LabelledStream(images, labels, 8, seed=1, rank=1).batch(5)[0])
    x, y = a.batch(0)
    assert torch.equal(y, x.view(-1) % 4)  # images keep their labels


def test_a_threshold_floor_keeps_flexmatch_from_accepting_everything_at_the_start():
    ct = CurriculumThresholds(n_images=4, n_classes=2, threshold=0.9, floor=0.5)
    assert ct.thresholds().tolist() == [0.5, 0.5]  # FlexMatch alone: [0.0, 0.0] (see its docstring example)
    ct.update(torch.tensor([0, 1, 2]), torch.tensor([0.95, 0.99, 0.97]), torch.tensor([0, 0, 1]))
    # beta = (1, 0.5): T = floor + (tau - floor) * beta / (2 - beta) = 0.9 and 0.5 + 0.4 / 3
    assert torch.allclose(ct.thresholds(), torch.tensor([0.9, 0.5 + 0.4 / 3]))
