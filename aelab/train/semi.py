"""Semi-supervised fine-tuning: FixMatch-style consistency on the unlabelled images.

FixMatch (Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and
Confidence", NeurIPS 2020):

- supervised loss on a weakly augmented labelled batch, Eq. (1):
  ``ℓs = 1/B Σ_b H(p_b, p_m(y | α(x_b)))``
- unlabelled loss, Eq. (2): the prediction on a weak view ``q_b = p_m(y | α(u_b))`` becomes the
  hard pseudo-label ``q̂_b = argmax q_b`` when it is confident, and the strong view must predict it:
  ``ℓu = 1/(μB) Σ_b 1(max q_b ≥ τ) H(q̂_b, p_m(y | A(u_b)))``
- total ``ℓs + λu ℓu`` (Sec. 3.2), evaluated with an exponential moving average of the weights
  (Sec. 4, "we report the EMA of model parameters").

aelab keeps the autoencoder: with ``recon_weight`` w > 0 the labelled and unlabelled weak views are
also reconstructed, ``(1 − w)(ℓs + λu ℓu) + w·MSE``, which is the course report's objective plus
the consistency term.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aelab.data.rows import as_reader

__all__ = ["fixmatch_unlabelled_loss", "ModelEMA", "LabelledStream"]


def fixmatch_unlabelled_loss(
    logits_weak: torch.Tensor, logits_strong: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's unlabelled loss ℓu, Eq. (2) of Sohn et al. (2020).

    Args:
        logits_weak: ``(N, K)`` logits of the weak views (no gradient flows through them).
        logits_strong: ``(N, K)`` logits of the strong views of the same images.
        threshold: confidence τ a weak prediction needs to become a pseudo-label.

    Returns:
        ``(loss, mask)``: the loss averaged over all N images (masked ones count as 0, as in the
        paper's 1/(μB) normalisation) and the float mask of images that passed τ.

    Example:
        >>> weak = torch.tensor([[10.0, 0.0], [0.0, 0.1]])
        >>> loss, mask = fixmatch_unlabelled_loss(weak, torch.zeros(2, 2), 0.95)
        >>> mask.tolist(), round(loss.item(), 4)
        ([1.0, 0.0], 0.3466)
    """
    with torch.no_grad():
        probs = torch.softmax(logits_weak.detach().float(), dim=1)
        confidence, pseudo = probs.max(dim=1)
        mask = (confidence >= threshold).float()
    per_image = F.cross_entropy(logits_strong.float(), pseudo, reduction="none")
    return (per_image * mask).mean(), mask


class ModelEMA(nn.Module):
    """Exponential moving average of a model's weights and float buffers (BatchNorm statistics); integer buffers are copied.

    ``ema = decay · ema + (1 − decay) · θ`` after every optimiser step; the first steps use
    ``min(decay, (1 + t) / (10 + t))`` so that a short run is not dominated by the random start.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        t = int(self.updates)
        d = min(self.decay, (1 + t) / (10 + t))
        own = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = own[name]
            if target.dtype.is_floating_point:
                target.mul_(d).add_(value.detach().to(target.dtype), alpha=1 - d)
            else:
                target.copy_(value)
        self.updates += 1


class LabelledStream:
    """Labelled batches drawn by step number: batch ``t`` depends only on (seed, rank, t).

    FixMatch steps through the unlabelled images and draws a labelled batch at every step; making
    that draw a function of the global step keeps ``--resume`` exact without saving a sampler.
    ``images`` (an array, memory map or tensor) is read by row, only the rows of each batch;
    ``index``, when given, lists the rows of ``images`` (and ``labels``) to draw from.
    """

    def __init__(self, images, labels: torch.Tensor, batch_size: int, seed: int, rank: int = 0,
                 index: np.ndarray | None = None):
        self.rows = as_reader(images)
        self.labels = torch.as_tensor(labels)
        self.index = np.arange(len(self.labels)) if index is None else np.asarray(index, dtype=np.int64)
        self.batch_size = min(batch_size, len(self.index))
        self.seed, self.rank = seed, rank

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(((self.seed * 1_000_003) + self.rank * 7919 + step) % (2**63))
        rows = self.index[torch.randperm(len(self.index), generator=g)[: self.batch_size].numpy()]
        return self.rows.gather(rows), self.labels[torch.from_numpy(rows)]
