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

aelab's default replaces the single τ by FlexMatch's class-wise thresholds (Zhang et al., "FlexMatch:
Boosting Semi-Supervised Learning with Curriculum Pseudo Labeling", NeurIPS 2021; `CurriculumThresholds`):
with 5 labels per digit, plain FixMatch locked a group of 7s onto the pseudo-label 2 early on and
reinforced it; lower thresholds for the classes with few confident pseudo-labels let those images
be learnt as 7s first (benchmarks/README.md, "5 labels per class: what plain FixMatch got wrong"). ReMixMatch's
distribution alignment (`DistributionAlignment`, Berthelot et al. 2020) is available and off: it assumes
the unlabelled images have the labelled images' class shares, which the demo data (and many folders)
do not.

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

__all__ = ["fixmatch_unlabelled_loss", "DistributionAlignment", "CurriculumThresholds", "ModelEMA", "LabelledStream"]


def _all_processes(t: torch.Tensor, reduce: str) -> torch.Tensor:
    """``t`` of every process of the training group: concatenated (``"cat"``, equal sizes) or averaged (``"mean"``).

    Lightning Fabric has started the group; with one process ``t`` itself. The per-image memory of
    `CurriculumThresholds` and the running average of `DistributionAlignment` stay the same on
    every process this way, as with one process over the whole batch.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    if reduce == "mean":
        t = t.clone()
        dist.all_reduce(t)
        return t / dist.get_world_size()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class DistributionAlignment(nn.Module):
    """Distribution alignment of ReMixMatch (Berthelot et al., ICLR 2020, Sec. 3.2, Eq. before Alg. 1).

    The weak-view prediction ``q`` is rescaled by the ratio of the class prior ``p(y)`` (the labelled
    images' class shares) to ``p̃(y)``, the running average of the model's predictions on unlabelled
    images, and renormalised: ``q̃ = Normalize(q · p(y) / p̃(y))``. A class the model over-predicts
    gets its pseudo-labels' confidence lowered, one it under-predicts raised, so that the pseudo-labels
    keep the class shares of the labelled images instead of drifting towards the classes learnt first.
    ReMixMatch averages the last 128 batches; here an exponential average with ``momentum``
    (0.99: about the last 100 steps), over the batches of all processes.

    Example:
        >>> da = DistributionAlignment(torch.tensor([0.5, 0.5]), momentum=0.0)
        >>> q = da(torch.tensor([[0.9, 0.1], [0.7, 0.3]]))  # p̃ = (0.8, 0.2): class 0 over-predicted
        >>> [[round(v, 3) for v in row] for row in q.tolist()]
        [[0.692, 0.308], [0.368, 0.632]]
    """

    def __init__(self, prior: torch.Tensor, momentum: float = 0.99):
        super().__init__()
        prior = torch.as_tensor(prior, dtype=torch.float32)
        self.register_buffer("prior", prior / prior.sum())
        self.register_buffer("running", self.prior.clone())
        self.momentum = momentum

    @torch.no_grad()
    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        mean = _all_processes(probs.mean(0).to(self.running), "mean")
        self.running.mul_(self.momentum).add_(mean, alpha=1 - self.momentum)
        q = probs * (self.prior / self.running.clamp_min(1e-6)).to(probs)
        return q / q.sum(dim=1, keepdim=True)


class CurriculumThresholds(nn.Module):
    """FlexMatch's class-wise thresholds (curriculum pseudo-labelling; Zhang et al., NeurIPS 2021, Sec. 3.2).

    Remembers, for every unlabelled image, the class of its latest weak prediction that passed τ
    (-1: none yet). The learning effect of class c is the number of images so remembered,
    ``σ(c)``, Eq. (6); normalised with the warm-up of Eq. (11), ``β(c) = σ(c) / max(max_c σ, N − Σ_c σ)``,
    and mapped through the convex ``M(x) = x / (2 − x)``, Eq. (7)/(9), it gives the threshold of class c,
    ``T(c) = M(β(c)) · τ``: low for every class at the start, low for classes still hard later,
    τ for the classes learnt best. Under several processes each remembers every process's images.

    ``floor`` keeps a threshold under which no pseudo-label is accepted, ``T(c) = floor + (τ − floor) · M(β(c))``
    (``floor`` 0 is FlexMatch's rule). Without it every prediction passes at the start, when no class is
    learnt yet: on photos, where the first predictions are mostly wrong, the network then learns its own
    mistakes (benchmarks/README.md, "Study 1 on photos").

    Example:
        >>> ct = CurriculumThresholds(n_images=4, n_classes=2, threshold=0.9)
        >>> ct.thresholds().tolist()          # nothing learnt yet: every prediction counts
        [0.0, 0.0]
        >>> ct.update(torch.tensor([0, 1, 2]), torch.tensor([0.95, 0.99, 0.97]), torch.tensor([0, 0, 1]))
        >>> [round(t, 3) for t in ct.thresholds().tolist()]   # sigma = (2, 1), one image unseen: beta = (1, 0.5)
        [0.9, 0.3]
    """

    def __init__(self, n_images: int, n_classes: int, threshold: float, floor: float = 0.0):
        super().__init__()
        self.n_classes, self.threshold, self.floor = n_classes, threshold, floor
        self.register_buffer("latest", torch.full((n_images,), -1, dtype=torch.long))

    def thresholds(self) -> torch.Tensor:
        learnt = self.latest[self.latest >= 0]
        sigma = torch.bincount(learnt, minlength=self.n_classes).float()
        unseen = float(len(self.latest) - len(learnt))
        beta = sigma / max(float(sigma.max()), unseen, 1.0)
        return self.floor + (self.threshold - self.floor) * beta / (2.0 - beta)

    @torch.no_grad()
    def update(self, index: torch.Tensor, confidence: torch.Tensor, pseudo: torch.Tensor) -> None:
        dev = self.latest.device
        index, confidence, pseudo = (_all_processes(t.to(dev), "cat") for t in (index, confidence, pseudo))
        sure = confidence >= self.threshold
        self.latest[index[sure]] = pseudo[sure].to(self.latest)


def fixmatch_unlabelled_loss(
    logits_weak: torch.Tensor, logits_strong: torch.Tensor, threshold: float, align: nn.Module | None = None,
    curriculum: CurriculumThresholds | None = None, index: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's unlabelled loss ℓu, Eq. (2) of Sohn et al. (2020).

    Args:
        logits_weak: ``(N, K)`` logits of the weak views (no gradient flows through them).
        logits_strong: ``(N, K)`` logits of the strong views of the same images.
        threshold: confidence τ a weak prediction needs to become a pseudo-label.
        align: optional `DistributionAlignment` applied to the weak predictions before τ and argmax.
        curriculum: optional `CurriculumThresholds` (FlexMatch): each pseudo-label's class sets its threshold
            instead of τ; ``index`` (the images' rows in the unlabelled set) updates what it remembers.

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
        if align is not None:
            probs = align(probs)
        confidence, pseudo = probs.max(dim=1)
        if curriculum is None:
            mask = (confidence >= threshold).float()
        else:
            mask = (confidence >= curriculum.thresholds().to(confidence)[pseudo]).float()
            curriculum.update(index, confidence, pseudo)
    per_image = F.cross_entropy(logits_strong.float(), pseudo, reduction="none")
    return (per_image * mask).mean(), mask


class ModelEMA(nn.Module):
    """Exponential moving average of a model's weights and float buffers (BatchNorm statistics); integer buffers
    are copied.

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
