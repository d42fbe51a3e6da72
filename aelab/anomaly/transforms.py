"""The transformations of `GeometricDetector`, their labels, the training loss and the score.

Transformation ``k`` of ``K = num_transforms(flips, shift)`` is a translation, then a horizontal
flip, then a rotation (`transform`). The network predicts which one was applied in one of two ways:

- ``heads="joint"``: one softmax over all ``K`` transformations (Golan & El-Yaniv 2018, "Deep
  Anomaly Detection Using Geometric Transformations", Sec. 4). Loss: the cross-entropy of ``k``;
  score ``s(x) = -(1/K) sum_k log p(k | T_k x)`` (`transform_scores`, their simplified normality
  score of Sec. 4.1 with the sign turned).
- ``heads="separate"``: one softmax per factor of ``k`` (Hendrycks, Mazeika, Kadavath & Song 2019,
  "Using Self-Supervised Learning Can Improve Model Robustness and Uncertainty", Sec. 4.2): a
  4-way rotation head, a 2-way flip head (with ``flips``; not in the paper, which has no flips) and
  two 3-way heads for the horizontal and vertical translation in ``{-shift, 0, +shift}`` (with
  ``shift``; the paper translates by 8 pixels on 32 x 32). `head_labels` decomposes ``k`` into
  the heads' answers. Loss: the sum over heads of their cross-entropies (`separate_loss`); score:
  the sum over heads of ``-log p_h(right answer of head h | T_k x)``, averaged over all ``K``
  transformations applied at test time (`separate_scores`),

      s(x) = (1/K) sum_k sum_h -log softmax(f_h(T_k x))_{y_h(k)}.

  (Sec. 4.2's text could not be read here; this follows its description as the total
  cross-entropy of the heads over all transformations. The authors' released ImageNet one-class
  script sums the heads' probabilities of the right answers instead of their logs.)

Both scores are ``>= 0`` and 0 only for a network certain and right on every transformation.

**The Dirichlet score** (`dirichlet_fit`, `dirichlet_scores`; Golan & El-Yaniv 2018, Sec. 4, Eq. 2)
looks at the whole softmax vector, not only the right transformation's probability: for each
transformation ``k`` a Dirichlet distribution with parameters ``α_k`` is fitted by maximum
likelihood to the softmax outputs ``y(T_k x_i)`` of the normal training images (`dirichlet_mle`:
Newton's method of Minka 2000, "Estimating a Dirichlet distribution", Sec. 1), and an image's
normality is the log-density of its outputs under them, up to constants,

    n(x) = sum_k (α_k - 1) · log y(T_k x).

So the confusions normal images share (a bird photographed upside down is often read as upright) cost
nothing, and unusual ones cost much. With separate heads each head gets its own Dirichlet. The anomaly
score is ``-n(x)/K`` shifted to be ``>= 0``: the log-probabilities are floored at ``log DIRICHLET_FLOOR``,
and each term measures how far ``log y`` lies from the end of ``[log floor, 0]`` its ``α`` favours,

    s(x) = (1/K) sum_k sum_j |α_kj - 1| · (-log y_kj       if α_kj >= 1
                                          log y_kj - log floor  otherwise),

each term ``>= 0``; the sum is ``-n(x)/K`` plus a constant of the fitted ``α``, so the ranking is Eq. 2's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

HEADS: tuple[str, ...] = ("joint", "separate")
#: Probabilities below this are read as it in the Dirichlet score (its log-densities are then bounded).
DIRICHLET_FLOOR = 1e-6
#: Dirichlet parameters stop here: identical outputs (one training image, a network that answers the same
#: for all) have no finite maximum-likelihood estimate; a precision of 10^6 is already a point mass.
MAX_DIRICHLET_ALPHA = 1e6

# Translation t of the 3 x 3 grid: offsets (dy, dx) in units of ``shift``; t = 0 is no translation.
_OFFSETS = ((0, 0), (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def num_transforms(flips: bool, shift: int) -> int:
    """``K``: 4 rotations, times 2 with ``flips``, times 9 (x and y shift in {0, -shift, +shift}) with ``shift``."""
    return 4 * (2 if flips else 1) * (9 if shift else 1)


def transform(x: torch.Tensor, k: int, flips: bool, shift: int) -> torch.Tensor:
    """``T_k(x)`` for a batch ``(N, C, H, W)``: translate (reflecting the border), flip, then rotate.

    ``k = rot + 4 * flip + 4 * (2 if flips else 1) * t``: ``rot`` quarter turns counter-clockwise,
    ``flip`` (with ``flips``) a horizontal flip, ``t`` (with ``shift``) the translation by
    ``_OFFSETS[t] * shift`` pixels in (y, x); ``k = 0`` is the identity.
    """
    per = 8 if flips else 4
    rot, flip, t = k % 4, (k // 4) % 2 if flips else 0, k // per
    if t:
        dy, dx = _OFFSETS[t][0] * shift, _OFFSETS[t][1] * shift
        h, w = x.shape[-2:]
        pad = F.pad(x, (shift, shift, shift, shift), mode="reflect")
        x = pad[..., shift - dy : shift - dy + h, shift - dx : shift - dx + w]
    if flip:
        x = torch.flip(x, dims=(-1,))
    if rot:
        x = torch.rot90(x, rot, dims=(-2, -1))
    return x


def head_sizes(flips: bool, shift: int) -> tuple[int, ...]:
    """Classes of each separate head: rotation 4, then flip 2 (``flips``), then horizontal and
    vertical translation 3 and 3 (``shift``)."""
    return (4,) + ((2,) if flips else ()) + ((3, 3) if shift else ())


def head_labels(k: int, flips: bool, shift: int) -> tuple[int, ...]:
    """The separate heads' right answers for transformation ``k`` (in `head_sizes` order).

    Rotation ``k % 4``; flip ``(k // 4) % 2``; translation ``t = k // (8 or 4)`` gives
    ``dx + 1`` (horizontal: 0 = left by ``shift``, 1 = none, 2 = right) and ``dy + 1`` (vertical:
    0 = up, 1 = none, 2 = down) with ``(dy, dx) = _OFFSETS[t]``.
    """
    per = 8 if flips else 4
    labels = [k % 4]
    if flips:
        labels.append((k // 4) % 2)
    if shift:
        dy, dx = _OFFSETS[k // per]
        labels += [dx + 1, dy + 1]
    return tuple(labels)


def label_table(flips: bool, shift: int) -> np.ndarray:
    """``(K, H)`` int64: row ``k`` is `head_labels` of ``k``."""
    return np.array([head_labels(k, flips, shift) for k in range(num_transforms(flips, shift))], dtype=np.int64)


def num_outputs(heads: str, flips: bool, shift: int) -> int:
    """Outputs of the network: ``K`` (one joint softmax) or the sum of the separate heads' sizes."""
    return num_transforms(flips, shift) if heads == "joint" else sum(head_sizes(flips, shift))


def head_log_softmax(logits: torch.Tensor, heads: str, flips: bool, shift: int) -> torch.Tensor:
    """Log-softmax of ``(N, num_outputs)`` logits: over all outputs (joint) or within each head (separate)."""
    if heads == "joint":
        return F.log_softmax(logits, dim=1)
    return torch.cat([F.log_softmax(z, dim=1) for z in logits.split(head_sizes(flips, shift), dim=1)], dim=1)


def separate_loss(logits: torch.Tensor, k: torch.Tensor, flips: bool, shift: int) -> torch.Tensor:
    """Sum over the separate heads of the mean cross-entropy of their answers for transformations ``k``."""
    table = torch.from_numpy(label_table(flips, shift)).to(logits.device)[k]
    chunks = logits.split(head_sizes(flips, shift), dim=1)
    return sum(F.cross_entropy(z, table[:, h]) for h, z in enumerate(chunks))


def transform_loss(logits: torch.Tensor, k: torch.Tensor, heads: str, flips: bool, shift: int) -> torch.Tensor:
    """The training loss for transformations ``k``: cross-entropy of ``k`` (joint) or `separate_loss`."""
    if heads == "joint":
        return F.cross_entropy(logits, k)
    return separate_loss(logits, k, flips, shift)


def transform_scores(log_probs: np.ndarray, ks: np.ndarray | None = None) -> np.ndarray:
    """``s(x) = -(1/K) sum_k log p_k(T_k x)`` from ``(N, K', K)`` joint log-probabilities.

    ``log_probs[n, i, j]`` is the log-probability of transformation ``j`` for image ``n`` under
    transformation ``ks[i]`` (default ``ks = 0 .. K-1``); the score takes the right transformation's.
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    ks = np.arange(lp.shape[1]) if ks is None else np.asarray(ks)
    return -np.mean(lp[:, np.arange(len(ks)), ks], axis=1)


def separate_scores(log_probs: np.ndarray, flips: bool, shift: int, ks: np.ndarray | None = None) -> np.ndarray:
    """``s(x) = (1/K) sum_k sum_h -log p_h(y_h(k) | T_k x)`` from ``(N, K', sum(head_sizes))``
    per-head log-probabilities (`head_log_softmax` with ``heads="separate"``) under transformations ``ks``."""
    lp = np.asarray(log_probs, dtype=np.float64)
    ks = np.arange(lp.shape[1]) if ks is None else np.asarray(ks)
    starts = np.cumsum((0,) + head_sizes(flips, shift)[:-1])
    cols = label_table(flips, shift)[ks] + starts  # (K', H): the right answer's column in each head
    return -lp[:, np.arange(len(ks))[:, None], cols].sum(2).mean(1)


def scores(log_probs: np.ndarray, heads: str, flips: bool, shift: int, ks: np.ndarray | None = None) -> np.ndarray:
    """The transformation score of each image: `transform_scores` (joint) or `separate_scores`."""
    if heads == "joint":
        return transform_scores(log_probs, ks)
    return separate_scores(log_probs, flips, shift, ks)


def dirichlet_mle(log_p: np.ndarray, max_iter: int = 200, tol: float = 1e-10) -> np.ndarray:
    """Maximum-likelihood Dirichlet parameters ``(J,)`` of ``(N, J)`` log-probability vectors.

    Newton's method on the (concave) mean log-likelihood ``f(α) = lnΓ(Σα) - Σ lnΓ(α_j) + Σ (α_j - 1) mean log p_j``,
    whose Hessian is a diagonal plus a constant matrix, so ``H⁻¹ g`` costs ``O(J)`` (Minka 2000, Sec. 1: his
    fixed point ``digamma(α_j) = digamma(Σα) + mean log p_j`` has the same solution but needed thousands of steps
    for the large precisions of confident networks). Started from the moment estimate (precision from the first
    coordinate's mean and second moment); a step that leaves ``α > 0`` or lowers ``f`` is halved.
    """
    from scipy.special import digamma, gammaln, polygamma

    lp = np.asarray(log_p, dtype=np.float64)
    mean_log = lp.mean(0)
    p = np.exp(lp)
    m1, m2 = p[:, 0].mean(), (p[:, 0] ** 2).mean()
    precision = (m1 - m2) / (m2 - m1 ** 2) if m2 - m1 ** 2 > 1e-12 else 1.0
    alpha = np.maximum(p.mean(0) * (precision if np.isfinite(precision) and precision > 0 else 1.0), 1e-3)

    def f(a: np.ndarray) -> float:
        return float(gammaln(a.sum()) - gammaln(a).sum() + ((a - 1.0) * mean_log).sum())

    value = f(alpha)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(max_iter):
            g = digamma(alpha.sum()) - digamma(alpha) + mean_log
            q = -polygamma(1, alpha)  # the Hessian's diagonal part; z its constant part
            z = float(polygamma(1, alpha.sum()))
            b = (g / q).sum() / (1.0 / z + (1.0 / q).sum())
            step = (g - b) / q  # H⁻¹ g (Minka 2000, Sec. 1)
            t = 1.0
            while t > 1e-12:
                new = alpha - t * step
                new_value = f(new) if np.all(new > 0) else -np.inf
                if new_value >= value - 1e-15 * abs(value):
                    break
                t *= 0.5
            else:
                break
            if new.max() >= MAX_DIRICHLET_ALPHA:  # outputs (nearly) all alike: the likelihood grows without end
                return np.minimum(new, MAX_DIRICHLET_ALPHA)
            done = np.max(np.abs(new - alpha) / new) < tol
            alpha, value = new, new_value
            if done:
                break
    return alpha


def _floored(log_probs: np.ndarray) -> np.ndarray:
    return np.maximum(np.asarray(log_probs, dtype=np.float64), np.log(DIRICHLET_FLOOR))


def dirichlet_fit(log_probs: np.ndarray, heads: str, flips: bool, shift: int) -> np.ndarray:
    """``(K, O)`` Dirichlet parameters from the ``(N, K, O)`` log-probabilities of normal images (`_passes`):
    row ``k`` for the outputs under ``T_k``, one Dirichlet over all ``O`` (joint) or one per head (separate)."""
    lp = _floored(log_probs)
    sizes = (lp.shape[2],) if heads == "joint" else head_sizes(flips, shift)
    bounds = np.cumsum((0,) + tuple(sizes))
    return np.stack([np.concatenate([dirichlet_mle(lp[:, k, a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
                     for k in range(lp.shape[1])])


def dirichlet_scores(log_probs: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The module's Dirichlet anomaly score ``s(x) >= 0`` of ``(N, K, O)`` log-probabilities under ``(K, O)``
    parameters from `dirichlet_fit`."""
    lp = _floored(log_probs)
    a = np.asarray(alpha, dtype=np.float64)[None]
    dist = np.where(a >= 1.0, -lp, lp - np.log(DIRICHLET_FLOOR))
    return (np.abs(a - 1.0) * dist).sum((1, 2)) / lp.shape[1]
