"""`GeometricDetector`: which geometric transformation was applied? A normal image's answer is confident.

A small CNN is trained on normal images only to classify which of ``K`` transformations
``T_0 .. T_{K-1}`` (rotations by 0/90/180/270 degrees, optionally times a horizontal flip and
translations by ``shift`` pixels along x and y) was applied to an image (Golan & El-Yaniv 2018,
"Deep Anomaly Detection Using Geometric Transformations", Sec. 4; Hendrycks et al. 2019, "Using
Self-Supervised Learning Can Improve Model Robustness and Uncertainty", Sec. 4.2, which adds the
translations). Solving the task needs what normal images look like: where the sky, the wheels, the
ground are. On an image of another kind the network is unsure, whatever how busy it is.

**Score** (higher = more anomalous), with ``heads="joint"`` (one softmax over the ``K``
transformations): minus the mean over all ``K`` transformations of the log-probability the network
gives to the right one,

    s(x) = -(1/K) * sum_k log softmax(f(T_k(x)))_k,

the negative of the "simplified normality score" ``n_S(x) = (1/K) sum_k log y(T_k(x))_k`` of Golan
& El-Yaniv 2018 (Sec. 4.1, used beside their Dirichlet score, Eq. 2). With ``heads="separate"``
(Hendrycks et al. 2019, Sec. 4.2) the network has one softmax per factor of ``T_k`` (rotation,
flip, horizontal and vertical translation), is trained on the sum of their cross-entropies, and
the score sums the heads' ``-log p(right answer)`` before the mean over ``k``
(`aelab.anomaly.transforms`, which holds the transformations, labels, losses and scores). The
default is ``heads="separate"`` with ``shift=8`` (``K`` = 72) and 60 epochs: on one-class
CIFAR-10 it beat the joint softmax over rotations x flips (``K`` = 8, 30 epochs) on both tuning
classes (benchmarks/README.md, "One-class CIFAR-10: photos"). Either
score is ``>= 0`` (so ``score / (score + threshold)`` is defined) and 0 only for a network certain
and right on every transformation.

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

import contextlib
import inspect
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from torch import nn

from aelab.anomaly import transforms as _tf
from aelab.anomaly.inputs import ImageBatch, ScoreResult, _array_images, _match
from aelab.anomaly.thresholds import Threshold, check_threshold_params, choose_threshold
from aelab.anomaly.transforms import num_transforms, transform, transform_scores  # re-exported (they lived here)
from aelab.data.rows import RowReader
from aelab.errors import AelabError, DataError
from aelab.runs import set_seed, to_plain
from aelab.train.checkpoint import load_checkpoint, save_checkpoint
from aelab.train.engine import fit_loop, make_fabric
from aelab.train.inference import pick_device
from aelab.train.loaders import make_loader, split_indices

__all__ = ["GEOMETRIC_SCORES", "GeometricDetector", "TransformNet", "transform", "transform_scores", "num_transforms"]

_KIND = "anomaly-detector"
METHOD = "geometric"
GEOMETRIC_SCORES: tuple[str, ...] = ("transform", "knn")


class TransformNet(nn.Module):
    """Three VGG-style blocks (two 3x3 conv + batch norm + ReLU, then 2x2 max pool) of ``width``,
    ``2 width``, ``4 width`` channels, global average pooling, and a linear head of ``num_classes`` outputs:
    the ``K`` transformations (``heads="joint"``) or the separate heads' classes side by side (rotation 4,
    flip 2, x and y translation 3 + 3; one linear map per head is one linear map with its rows split)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for mult in (1, 2, 4):
            for _ in range(2):
                layers += [nn.Conv2d(c, width * mult, 3, padding=1, bias=False), nn.BatchNorm2d(width * mult), nn.ReLU(inplace=True)]
                c = width * mult
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class GeometricDetector(BaseEstimator):
    """Transformation-prediction anomaly detector on images (PyOD-style API; see the module doc).

    Args:
        image_size: square input side; default: the array's size, or 32 for folders.
        channels: 1 or 3; default: the array's channels, or 3 for folders.
        width: channels of the first block (then 2x and 4x).
        flips: add a horizontal flip to the 4 rotations (``K`` = 8).
        shift: translations by this many pixels in x and y (3 x 3 grid, ``K`` x 9); 0 = none.
        heads: ``joint`` (one softmax over the ``K`` transformations) or ``separate`` (one softmax
            each for rotation, flip and the x and y translation; `aelab.anomaly.transforms`).
        augment: random translation of up to this many pixels (reflected border) before the
            transformation, while training only (less overfitting on a few hundred images).
        score: ``transform`` (the module's ``s(x)``) or ``knn`` (feature kNN distance).
        knn: neighbours for ``score="knn"``.
        contamination, threshold, threshold_rule: as `ReconstructionDetector` (conformal by default).
        epochs, batch_size, lr, weight_decay, patience: training (SGD with Nesterov momentum 0.9,
            cosine schedule; early stopping on the held-out normals' mean score).
        val_fraction: share of the normal images held out (early stopping and threshold).
        recursive, strict, seed, device, devices, precision, run_dir: as `ReconstructionDetector`.
    """

    method = METHOD
    has_maps = False

    def __init__(
        self, *, image_size: int | None = None, channels: int | None = None, width: int = 16, flips: bool = True,
        shift: int = 8, heads: str = "separate", augment: int = 2, score: str = "transform", knn: int = 5,
        contamination: float = 0.01, threshold: float | None = None, threshold_rule: str = "auto", epochs: int = 60,
        batch_size: int = 64, lr: float = 0.05, weight_decay: float = 5e-4, val_fraction: float = 0.2,
        patience: int = 10,
        recursive: bool = False, strict: bool = False, seed: int = 0, device: str = "auto", devices: int = 1,
        precision: str = "auto", run_dir: str | None = None,
    ):
        params = dict(locals())
        for name in inspect.signature(type(self).__init__).parameters:
            if name != "self":
                setattr(self, name, params[name])

    @property
    def num_transforms(self) -> int:
        return num_transforms(self.flips, self.shift)

    # --- input -----------------------------------------------------------------------------------

    def as_images(self, X: Any, image_size: int | None = None, channels: int | None = None) -> ImageBatch:
        """Read ``X`` (folder, file list, array, tensor, ImageSet) as uint8 images for this detector."""
        size = image_size or getattr(self, "image_size_", None)
        chans = channels or getattr(self, "channels_", None)
        is_files = isinstance(X, (str, os.PathLike)) or (
            isinstance(X, (list, tuple)) and len(X) > 0 and all(isinstance(p, (str, os.PathLike)) for p in X)
        )
        if is_files:
            from aelab.data import list_images, load_images

            paths = list_images(X, recursive=self.recursive) if isinstance(X, (str, os.PathLike)) else list(X)
            data = load_images(paths, size or 32, chans or 3, strict=self.strict)
            return ImageBatch(data.images, list(data.paths), list(data.skipped))
        is_set = hasattr(X, "images") and hasattr(X, "paths")
        images = _array_images(X.images if is_set else X)
        images = _match(images, size or images.shape[-1], chans or images.shape[1])
        return ImageBatch(images, list(X.paths), list(X.skipped)) if is_set else ImageBatch(images)

    # --- fitting ---------------------------------------------------------------------------------

    def _check_params(self, anomalies: Any = None) -> None:
        if self.score not in GEOMETRIC_SCORES:
            raise AelabError(f"score of the geometric detector must be one of {', '.join(GEOMETRIC_SCORES)}, got {self.score!r}")
        if self.heads not in _tf.HEADS:
            raise AelabError(f"heads of the geometric detector must be one of {', '.join(_tf.HEADS)}, "
                             f"got {self.heads!r}")
        check_threshold_params(self.threshold_rule, self.threshold, self.contamination, self.val_fraction, anomalies)
        if self.epochs < 1 or self.batch_size < 1 or self.width < 1 or self.knn < 1:
            raise AelabError("epochs, batch_size, width and knn must be >= 1")
        if self.shift < 0 or self.augment < 0:
            raise AelabError(f"shift and augment are pixels >= 0, got {self.shift} and {self.augment}")

    def fit(self, X: Any, y: Any = None, *, anomalies: Any = None) -> GeometricDetector:
        """Train on normal images ``X`` and choose the threshold on the held-out share (see `ReconstructionDetector.fit`)."""
        self._check_params(anomalies)
        for name in ("image_size_", "channels_", "model_"):
            self.__dict__.pop(name, None)
        data = self.as_images(X, self.image_size, self.channels)
        images = data.images
        if len(images) < 2:
            raise DataError(f"fitting needs at least 2 normal images, got {len(images)}")
        side = images.shape[-1]
        if self.shift >= side // 2 or self.augment >= side // 2:
            raise AelabError(f"shift and augment must be below half the image side ({side} pixels): "
                             f"set shift (--geometric.shift, 0 = no translations) and augment lower")
        self.image_size_, self.channels_ = int(side), int(images.shape[1])
        train_idx, val_idx = split_indices(len(images), self.val_fraction, self.seed)
        if len(val_idx) == 0:
            warnings.warn("no held-out normal images: the threshold is chosen on training scores (too low)", stacklevel=2)
            val_idx = train_idx
        from aelab.data import Preprocessing

        # Per-channel statistics of every training image, read in chunks (the one definition, Preprocessing.fitted).
        stats = Preprocessing(max(int(side), 8), int(images.shape[1])).fitted(images[train_idx], sample=len(train_idx))
        self.mean_, self.std_ = list(stats.mean), list(stats.std)
        with contextlib.ExitStack() as stack:
            if self.run_dir is None:
                run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aelab-anomaly-")))
            else:
                run_dir = Path(self.run_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
            self._train(images, train_idx, val_idx, run_dir)
        self.run_dir_ = None if self.run_dir is None else run_dir
        paths = data.paths
        self.train_files_ = None if paths is None else [str(paths[i]) for i in train_idx]
        self.val_files_ = None if paths is None else [str(paths[i]) for i in val_idx]
        self.skipped_ = [(str(p), r) for p, r in data.skipped]
        lp, ft = self._passes(images[train_idx])  # one pass of the K transformations over the training images
        self.train_features_ = ft
        self.val_scores_ = self._score(images[val_idx])[0]
        self.set_threshold(anomalies=anomalies)
        self.decision_scores_ = self._transform_scores(lp) if self.score == "transform" else self.knn_scores(ft)
        self.labels_ = self.threshold_info_.predict(self.decision_scores_)
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
        """One aelab training stage (``make_fabric`` + ``fit_loop``, as `ReconstructionDetector._train`)."""
        set_seed(self.seed)
        fabric = make_fabric(self.device, self.devices, self.precision)
        raw_model = TransformNet(self.channels_, _tf.num_outputs(self.heads, self.flips, self.shift), self.width)
        optimizer = torch.optim.SGD(raw_model.parameters(), lr=self.lr, momentum=0.9, nesterov=True, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.epochs, 1))
        model, optimizer = fabric.setup(raw_model, optimizer)
        rows = RowReader(images)
        batch = min(self.batch_size, len(train_idx))
        train_loader = fabric.setup_dataloaders(make_loader(
            rows, index=train_idx, batch_size=batch, shuffle=True, seed=self.seed, drop_last=True))
        val_images = rows.gather(val_idx)
        gen = torch.Generator().manual_seed(self.seed + fabric.global_rank)

        def train_step(b):
            x = self._augment(self._normalize(b[0]), gen)
            xt, labels = self._transformed_batch(x, gen)
            return {"loss": self._transform_loss(model(xt).float(), labels.to(xt.device))}

        # Held-out score over at most 8 of the K transformations (a fixed, evenly spread subset): all 72 of
        # ``shift`` would cost 9 training epochs per validation.
        ks = np.unique(np.linspace(0, self.num_transforms - 1, min(self.num_transforms, 8)).round().astype(int))

        def validate():
            lp = self._passes(val_images.numpy(), raw_model, ks=ks)[0]
            score = float(np.mean(self._transform_scores(lp, ks)))
            # Each process's BatchNorm statistics differ: rank 0's score decides for all, so none stops alone.
            return {"val_score": float(fabric.broadcast(score, src=0)) if fabric.world_size > 1 else score}

        payload = dict(stage="anomaly", method=METHOD, config=to_plain(self.get_params()))
        state = fit_loop(
            fabric=fabric, model=model, raw_model=raw_model, optimizer=optimizer, scheduler=scheduler,
            train_loader=train_loader, train_step=train_step, validate=validate, epochs=self.epochs,
            run_dir=run_dir, monitor="val_score", mode="min", patience=self.patience, payload=payload, desc="anomaly-geometric",
        )
        raw_model.load_state_dict(load_checkpoint(run_dir, which="best")["state_dict"])
        self.model_ = raw_model.cpu().eval()
        self.history_, self.best_epoch_ = state.history, state.best_epoch

    # --- scoring ---------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise AelabError("this GeometricDetector is not fitted yet: call fit() or GeometricDetector.load()")

    @torch.no_grad()
    def _passes(self, images: np.ndarray, model: TransformNet | None = None, chunk: int = 256,
                ks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(N, K, O)`` log-probabilities (``[n, k, j]``: output ``j`` for image ``n`` under ``T_k``;
        ``O = K`` joint, the heads' classes side by side with ``heads="separate"``) and ``(N, D)`` pooled
        features averaged over the ``K`` transformed copies.

        ``model``: the network being trained (validation); default the fitted ``model_``.
        ``ks``: only these transformations (the second axis then follows ``ks``).
        """
        fitted = model is None
        model = self.model_ if fitted else model
        device = torch.device(pick_device(self.device)) if fitted else next(model.parameters()).device
        model.to(device)
        K = self.num_transforms
        ks = range(K) if ks is None else [int(k) for k in ks]
        lps, feats = [], []
        for start in range(0, len(images), chunk):
            x = self._normalize(torch.from_numpy(np.ascontiguousarray(images[start : start + chunk])).to(device))
            lp, ft = [], 0.0
            for k in ks:
                emb = model.embed(transform(x, k, self.flips, self.shift)).float()
                lp.append(_tf.head_log_softmax(model.head(emb), self.heads, self.flips, self.shift).cpu())
                ft = ft + emb.cpu()
            lps.append(torch.stack(lp, 1).double().numpy())
            feats.append((ft / len(ks)).double().numpy())
        if fitted:
            model.cpu()
        return np.concatenate(lps), np.concatenate(feats)

    def _transform_loss(self, logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Training loss for transformations ``k``: one cross-entropy (joint) or the heads' sum (separate)."""
        return _tf.transform_loss(logits, k, self.heads, self.flips, self.shift)

    def _transform_scores(self, lp: np.ndarray, ks: np.ndarray | None = None) -> np.ndarray:
        """The module's ``s(x)`` from `_passes`' log-probabilities (joint or separate heads)."""
        return _tf.scores(lp, self.heads, self.flips, self.shift, ks)

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
        return {"transform": self._transform_scores(lp), "knn": self.knn_scores(ft)}

    def _score(self, images: np.ndarray, chunk: int = 256, index: np.ndarray | None = None) -> tuple[np.ndarray, None]:
        """Image scores of ``images`` (rows ``index``); the second value (the reconstruction loss
        of `ReconstructionDetector`) is None: this detector reconstructs nothing."""
        if index is not None:
            images = images[index]
        lp, ft = self._passes(images, chunk=chunk)
        return (self._transform_scores(lp) if self.score == "transform" else self.knn_scores(ft)), None

    def set_threshold(self, value: float | None = None, *, rule: str | None = None, normal: Any = None,
                      anomalies: Any = None) -> GeometricDetector:
        """(Re)choose the threshold without retraining (see `ReconstructionDetector.set_threshold`)."""
        self._check_fitted()
        normal_scores = self.val_scores_ if normal is None else self._score(self.as_images(normal).images)[0]
        anom_scores = None if anomalies is None else self._score(self.as_images(anomalies).images)[0]
        self.threshold_info_ = choose_threshold(
            normal_scores, anom_scores, rule=rule or self.threshold_rule, quantile=1.0 - self.contamination,
            value=self.threshold if value is None else value, alpha=self.contamination,
        )
        self.threshold_ = self.threshold_info_.value
        return self

    def score_images(self, X: Any) -> ScoreResult:
        """Scores, normalised scores and 0/1 decisions in one pass (``loss`` is all NaN: no reconstruction)."""
        self._check_fitted()
        data = self.as_images(X)
        scores, _ = self._score(data.images)
        th = self.threshold_info_
        return ScoreResult(scores, np.full(len(scores), np.nan), th.normalize(scores), th.predict(scores), data.paths, data.skipped)

    def decision_function(self, X: Any) -> np.ndarray:
        """``(N,)`` anomaly scores, higher = more anomalous."""
        return self.score_images(X).scores

    def predict(self, X: Any) -> np.ndarray:
        """``(N,)`` int64: 1 = anomaly (score above ``threshold_``), 0 = normal."""
        return self.score_images(X).is_anomaly

    def normalized_scores(self, X: Any) -> np.ndarray:
        """``(N,)`` ``score / (score + threshold_)``: monotone, 0.5 at the threshold."""
        return self.score_images(X).normalized

    # --- persistence -----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the detector as a plain-dict aelab checkpoint (a folder gets ``detector.ckpt``)."""
        from aelab.anomaly.detector import DETECTOR_FILE

        self._check_fitted()
        path = Path(path)
        file = path / DETECTOR_FILE if path.is_dir() else path
        save_checkpoint(
            file, kind=_KIND, method=METHOD, stage="anomaly",
            state_dict={k: v.detach().cpu() for k, v in self.model_.state_dict().items()},
            image_size=self.image_size_, channels=self.channels_, mean=self.mean_, std=self.std_,
            threshold=self.threshold_info_.to_dict(), config=to_plain(self.get_params()),
            train_features=torch.from_numpy(self.train_features_), decision_scores=self.decision_scores_,
            val_scores=self.val_scores_, train_files=self.train_files_, val_files=self.val_files_, best_epoch=self.best_epoch_,
        )
        return file

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> GeometricDetector:
        """Rebuild a saved detector from a checkpoint file or a run folder holding ``detector.ckpt``."""
        from aelab.anomaly.detector import DETECTOR_FILE

        p = Path(path)
        file = p / DETECTOR_FILE if p.is_dir() else p
        if not file.is_file():
            raise AelabError(f"no anomaly detector at {file} (written by `aelab anomaly fit` or GeometricDetector.save)")
        ckpt = load_checkpoint(file)
        if ckpt.get("kind") != _KIND or ckpt.get("method") != METHOD:
            raise AelabError(f"{file} is not a geometric anomaly detector")
        names = set(inspect.signature(cls.__init__).parameters) - {"self"}
        det = cls(**{k: v for k, v in ckpt["config"].items() if k in names})
        if device is not None:
            det.device = device
        det.image_size_, det.channels_ = int(ckpt["image_size"]), int(ckpt["channels"])
        det.mean_, det.std_ = list(ckpt["mean"]), list(ckpt["std"])
        det.model_ = TransformNet(det.channels_, _tf.num_outputs(det.heads, det.flips, det.shift), det.width)
        det.model_.load_state_dict(ckpt["state_dict"])
        det.model_.eval()
        det.train_features_ = ckpt["train_features"].double().numpy()
        det.threshold_info_ = Threshold.from_dict(ckpt["threshold"])
        det.threshold_ = det.threshold_info_.value
        det.decision_scores_ = np.asarray(ckpt["decision_scores"], dtype=np.float64)
        det.val_scores_ = np.asarray(ckpt["val_scores"], dtype=np.float64)
        det.labels_ = det.threshold_info_.predict(det.decision_scores_)
        det.train_files_, det.val_files_ = ckpt.get("train_files"), ckpt.get("val_files")
        det.best_epoch_, det.history_, det.skipped_, det.run_dir_ = ckpt.get("best_epoch", -1), [], [], None
        return det
