"""`GeometricDetector`: which geometric transformation was applied? A normal image's answer is confident.

A small CNN is trained on normal images only to classify which of ``K`` transformations
``T_0 .. T_{K-1}`` (rotations by 0/90/180/270 degrees, optionally times a horizontal flip and
translations by ``shift`` pixels along x and y) was applied to an image (Golan & El-Yaniv 2018,
"Deep Anomaly Detection Using Geometric Transformations", Sec. 4; Hendrycks et al. 2019, "Using
Self-Supervised Learning Can Improve Model Robustness and Uncertainty", Sec. 4.2, which adds the
translations). Solving the task needs what normal images look like: where the sky, the wheels, the
ground are. On an image of another kind the network is unsure, whatever how busy it is.

**Score** (higher = more anomalous): minus the mean over all ``K`` transformations of the
log-probability the network gives to the right one,

    s(x) = -(1/K) * sum_k log softmax(f(T_k(x)))_k,

the negative of the "simplified normality score" ``n_S(x) = (1/K) sum_k log y(T_k(x))_k`` of Golan
& El-Yaniv 2018 (Sec. 4.1, used beside their Dirichlet score, Eq. 2) and the negative
log-likelihood over all transformations that Hendrycks et al. 2019 (Sec. 4.2) score with. It is
``>= 0`` (so ``score / (score + threshold)`` is defined) and 0 only for a network certain and right
on every transformation.

``score="knn"`` instead uses the mean cosine distance of the image's pooled features (averaged
over its ``K`` transformed copies) to their ``knn`` nearest training images (Bergman, Cohen &
Hoshen 2020, "Deep Nearest Neighbor Anomaly Detection", Eq. 1, on features learned here
rather than ImageNet's). `benchmarks/bench_oneclass.py` compares the two.

The detector has the estimator interface of `ReconstructionDetector` (``fit`` on normal images,
``decision_function``, ``predict``, the same thresholds and ``save``/``load``) but gives image
scores only: ``has_maps`` is False and it has no ``anomaly_map``/``reconstruct``.

Example:
    >>> det = GeometricDetector(epochs=2).fit(normal_images)        # doctest: +SKIP
    >>> det.decision_function(other_images)                          # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aelab.anomaly.base import BaseDetector
from aelab.data.rows import RowReader
from aelab.errors import ParameterError
from aelab.runs import set_seed, to_plain
from aelab.train.checkpoint import load_checkpoint, save_checkpoint
from aelab.train.inference import pick_device
from aelab.train.options import Engine, Interval, OneOf
from aelab.train.trainer import Rows, Task, TrainData, Trainer, TrainerConfig

__all__ = ["GEOMETRIC_SCORES", "GeometricDetector", "TransformNet", "transform", "transform_scores",
           "num_transforms"]

METHOD = "geometric"
GEOMETRIC_SCORES: tuple[str, ...] = ("transform", "knn")


def num_transforms(flips: bool, shift: int) -> int:
    """``K``: 4 rotations, times 2 with ``flips``, times 9 (x and y shift in {0, -shift, +shift}) with ``shift``."""
    return 4 * (2 if flips else 1) * (9 if shift else 1)


_OFFSETS = ((0, 0), (-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


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


def transform_scores(log_probs: np.ndarray) -> np.ndarray:
    """``s(x) = -(1/K) sum_k log p_k(T_k x)`` from ``(N, K, K)`` log-probabilities.

    ``log_probs[n, k, j]`` is the log-probability of transformation ``j`` for image ``n`` under
    transformation ``k``; the score takes the diagonal (the right transformation).
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    return -np.mean(np.diagonal(lp, axis1=1, axis2=2), axis=1)


class TransformNet(nn.Module):
    """Three VGG-style blocks (two 3x3 conv + batch norm + ReLU, then 2x2 max pool) of ``width``,
    ``2 width``, ``4 width`` channels, global average pooling, and a linear head over ``K`` transformations."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for mult in (1, 2, 4):
            for _ in range(2):
                layers += [nn.Conv2d(c, width * mult, 3, padding=1, bias=False), nn.BatchNorm2d(width * mult),
                           nn.ReLU(inplace=True)]
                c = width * mult
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class GeometricDetector(BaseDetector):
    """Transformation-prediction anomaly detector on images (PyOD-style API; see the module doc).

    Args:
        image_size: square input side; default: the array's size, or 32 for folders.
        channels: 1 or 3; default: the array's channels, or 3 for folders.
        width: channels of the first block (then 2x and 4x).
        flips: add a horizontal flip to the 4 rotations (``K`` = 8).
        shift: translations by this many pixels in x and y (3 x 3 grid, ``K`` x 9); 0 = none.
        augment: random translation of up to this many pixels (reflected border) before the
            transformation, while training only (less overfitting on a few hundred images).
        score: ``transform`` (the module's ``s(x)``) or ``knn`` (feature kNN distance).
        knn: neighbours for ``score="knn"``.
        contamination, threshold, threshold_rule: as `ReconstructionDetector` (conformal by default).
        epochs, batch_size, lr, weight_decay, patience: training (SGD with Nesterov momentum 0.9,
            cosine schedule; early stopping on the held-out normals' mean score).
        val_fraction: share of the normal images held out (early stopping and threshold).
        random_state: seed of the split, the initialisation and the transformations drawn.
    """

    method = METHOD
    has_maps = False
    _parameter_constraints = {
        "score": OneOf(GEOMETRIC_SCORES), "shift": Interval(0, integer=True), "augment": Interval(0, integer=True),
    }

    def __init__(
        self, *, image_size: int | None = None, channels: int | None = None, width: int = 16, flips: bool = True,
        shift: int = 0, augment: int = 2, score: str = "transform", knn: int = 5, contamination: float = 0.01,
        threshold: float | None = None, threshold_rule: str = "auto", epochs: int = 30, batch_size: int = 64,
        lr: float = 0.05, weight_decay: float = 5e-4, val_fraction: float = 0.2, patience: int = 10,
        random_state: int = 0,
    ):
        self.image_size = image_size
        self.channels = channels
        self.width = width
        self.flips = flips
        self.shift = shift
        self.augment = augment
        self.score = score
        self.knn = knn
        self.contamination = contamination
        self.threshold = threshold
        self.threshold_rule = threshold_rule
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.val_fraction = val_fraction
        self.patience = patience
        self.random_state = random_state

    @property
    def num_transforms(self) -> int:
        return num_transforms(self.flips, self.shift)

    def _input_size(self) -> tuple[int | None, int | None]:
        return getattr(self, "image_size_", None), getattr(self, "channels_", None)

    def fit(self, X: Any, y: Any = None, *, anomalies: Any = None, engine: Engine | None = None,
            run_dir: str | os.PathLike | None = None, recursive: bool = False) -> GeometricDetector:
        """Train on normal images ``X`` and choose the threshold on the held-out share (arguments as
        `ReconstructionDetector.fit`)."""
        from aelab.data import Preprocessing

        data, train_idx, val_idx = self._begin_fit(X, anomalies, engine, recursive,
                                                   ("image_size_", "channels_", "model_"))
        images = data.images
        side = images.shape[-1]
        if self.shift >= side // 2 or self.augment >= side // 2:
            raise ParameterError(f"shift and augment must be below half the image side ({side} pixels)")
        self.image_size_, self.channels_ = int(side), int(images.shape[1])
        # Per-channel statistics of every training image, read in chunks (the one definition, Preprocessing.fitted).
        stats = Preprocessing(max(int(side), 8), int(images.shape[1])).fitted(images[train_idx], sample=len(train_idx))
        self.mean_, self.std_ = list(stats.mean), list(stats.std)
        with self._run_folder(run_dir) as folder:
            self._train(images, train_idx, val_idx, folder)
        self._record_split(data, train_idx, val_idx)
        lp, ft = self._passes(images[train_idx])  # one pass of the K transformations over the training images
        self.train_features_ = ft
        self.val_scores_ = self._score(images[val_idx])[0]
        self._finish_fit(transform_scores(lp) if self.score == "transform" else self.knn_scores(ft), anomalies)
        return self

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean_, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std_, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random translation by up to ``augment`` pixels (reflected border), one per image."""
        a = self.augment
        if not a:
            return x
        n, _, h, w = x.shape
        pad = F.pad(x, (a, a, a, a), mode="reflect")
        off = torch.randint(0, 2 * a + 1, (n, 2), generator=gen)
        return torch.stack([pad[i, :, off[i, 0] : off[i, 0] + h, off[i, 1] : off[i, 1] + w] for i in range(n)])

    def _transformed_batch(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image under one random transformation, and its label."""
        K = self.num_transforms
        labels = torch.randint(0, K, (len(x),), generator=gen)
        out = torch.empty_like(x)
        for k in labels.unique().tolist():
            sel = labels == k
            out[sel] = transform(x[sel], k, self.flips, self.shift)
        return out, labels

    def _train(self, images: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, run_dir: Path) -> None:
        """One aelab training stage (`aelab.train.trainer.Trainer`, as `ReconstructionDetector._train`)."""
        set_seed(self.random_state)
        fabric = self.engine_.fabric()
        raw_model = TransformNet(self.channels_, self.num_transforms, self.width)
        rows = RowReader(images)
        config = TrainerConfig(epochs=self.epochs, batch_size=min(self.batch_size, len(train_idx)), lr=self.lr,
                               weight_decay=self.weight_decay, seed=self.random_state, optimizer="sgd",
                               monitor="val_score", mode="min", patience=self.patience, desc="anomaly-geometric")
        trainer = Trainer(config, raw_model, TrainData(Rows(rows, index=train_idx)), fabric=fabric, run_dir=run_dir)
        val_images = rows.gather(val_idx)
        model, gen = trainer.model, torch.Generator().manual_seed(self.random_state + fabric.global_rank)

        def train_step(b, _step: int):
            x = self._augment(self._normalize(b[0]), gen)
            xt, labels = self._transformed_batch(x, gen)
            return {"loss": F.cross_entropy(model(xt).float(), labels.to(xt.device))}

        # Held-out score over at most 8 of the K transformations (a fixed, evenly spread subset): all 72 of
        # ``shift`` would cost 9 training epochs per validation.
        ks = np.unique(np.linspace(0, self.num_transforms - 1, min(self.num_transforms, 8)).round().astype(int))

        def validate():
            lp = self._passes(val_images.numpy(), raw_model, ks=ks)[0]
            score = float(-np.mean(lp[:, np.arange(len(ks)), ks]))
            # Each process's BatchNorm statistics differ: rank 0's score decides for all, so none stops alone.
            return {"val_score": float(fabric.broadcast(score, src=0)) if fabric.world_size > 1 else score}

        payload = dict(stage="anomaly", method=METHOD, config=to_plain(self.get_params()))
        state = trainer.fit(Task(train_step, validate), payload=payload)
        raw_model.load_state_dict(load_checkpoint(run_dir, which="best")["state_dict"])
        self.model_ = raw_model.cpu().eval()
        self.history_, self.best_epoch_ = state.history, state.best_epoch

    # --- scoring ---------------------------------------------------------------------------------

    @torch.no_grad()
    def _passes(self, images: np.ndarray, model: TransformNet | None = None, chunk: int = 256,
                ks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(N, K, K)`` log-probabilities (``[n, k, j]``: transformation ``j`` for image ``n`` under
        ``T_k``) and ``(N, D)`` pooled features averaged over the ``K`` transformed copies.

        ``model``: the network being trained (validation); default the fitted ``model_``.
        ``ks``: only these transformations (the second axis then follows ``ks``).
        """
        fitted = model is None
        model = self.model_ if fitted else model
        device = pick_device(self.engine.device) if fitted else next(model.parameters()).device
        model.to(device)
        K = self.num_transforms
        ks = range(K) if ks is None else [int(k) for k in ks]
        lps, feats = [], []
        for start in range(0, len(images), chunk):
            x = self._normalize(torch.from_numpy(np.ascontiguousarray(images[start : start + chunk])).to(device))
            lp, ft = [], 0.0
            for k in ks:
                emb = model.embed(transform(x, k, self.flips, self.shift)).float()
                lp.append(F.log_softmax(model.head(emb), dim=1).cpu())
                ft = ft + emb.cpu()
            lps.append(torch.stack(lp, 1).double().numpy())
            feats.append((ft / len(ks)).double().numpy())
        if fitted:
            model.cpu()
        return np.concatenate(lps), np.concatenate(feats)

    def knn_scores(self, features: np.ndarray) -> np.ndarray:
        """Mean cosine distance to the ``knn`` nearest training images' features (DN2, Eq. 1)."""
        a = self.train_features_ / np.maximum(np.linalg.norm(self.train_features_, axis=1, keepdims=True), 1e-12)
        b = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        d = 1.0 - b @ a.T
        k = min(self.knn, a.shape[0])
        return np.clip(np.sort(d, axis=1)[:, :k].mean(1), 0.0, None)

    def all_scores(self, X: Any) -> dict[str, np.ndarray]:
        """Both scores (``transform`` and ``knn``) of ``X`` from one pass, for comparisons."""
        self._check_fitted()
        lp, ft = self._passes(self.as_images(X).images)
        return {"transform": transform_scores(lp), "knn": self.knn_scores(ft)}

    def _score(self, images: np.ndarray, chunk: int = 256,
               index: np.ndarray | None = None) -> tuple[np.ndarray, None]:
        """Image scores of ``images`` (rows ``index``); the second value (the reconstruction loss
        of `ReconstructionDetector`) is None: this detector reconstructs nothing."""
        if index is not None:
            images = images[index]
        lp, ft = self._passes(images, chunk=chunk)
        return (transform_scores(lp) if self.score == "transform" else self.knn_scores(ft)), None

    # --- persistence -----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the detector as a plain-dict aelab checkpoint (a folder gets ``detector.ckpt``)."""
        file = self._checkpoint_path(path)
        save_checkpoint(
            file, **self._common_payload(),
            state_dict={k: v.detach().cpu() for k, v in self.model_.state_dict().items()},
            image_size=self.image_size_, channels=self.channels_, mean=self.mean_, std=self.std_,
            config=to_plain(self.get_params()), train_features=torch.from_numpy(self.train_features_),
        )
        return file

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> GeometricDetector:
        """Rebuild a saved detector from a checkpoint file or a run folder holding ``detector.ckpt``."""
        det, ckpt = cls._read(path, device)
        det.image_size_, det.channels_ = int(ckpt["image_size"]), int(ckpt["channels"])
        det.mean_, det.std_ = list(ckpt["mean"]), list(ckpt["std"])
        det.model_ = TransformNet(det.channels_, det.num_transforms, det.width)
        det.model_.load_state_dict(ckpt["state_dict"])
        det.model_.eval()
        det.train_features_ = ckpt["train_features"].double().numpy()
        det._restore_common(ckpt)
        return det
