"""`ReconstructionDetector`: an autoencoder trained on normal images only; poor reconstruction = anomaly.

The API follows PyOD (``fit`` on normal data, ``decision_function`` higher = more anomalous,
``predict`` 0/1, ``threshold_``, ``decision_scores_``, ``contamination``). Training is one
aelab training stage (``make_fabric`` + `aelab.train.trainer.Trainer`, composed like ``aelab.train.pretrain``);
a share of the normal images is held out for early stopping and for the threshold.

Two defects of the course report are avoided here: the network has no skip connections by default (a U-Net can
copy its input, anomalies included, through them), and every image, normal or not, goes through
the one stored `Preprocessing` (the course report greyscaled only its anomalies).
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

from aelab.anomaly.corruption import CORRUPTIONS, structured_corruption
from aelab.anomaly.inputs import (
    ImageBatch,
    Reconstruction,
    ScoreResult,
    _array_images,
    _match,
)
from aelab.anomaly.scores import (
    BASE_KINDS,
    base_scores,
    check_reduction,
    check_score_kind,
    combine_scores,
    error_maps,
    needed_kinds,
    normal_medians,
    score_parts,
    smooth_maps,
)
from aelab.anomaly.thresholds import Threshold, check_threshold_params, choose_threshold
from aelab.data.rows import RowReader
from aelab.errors import AelabError, DataError
from aelab.models import ModelConfig, build_model, preset_config
from aelab.runs import set_seed, to_plain
from aelab.train.checkpoint import load_checkpoint, save_checkpoint
from aelab.train.engine import make_fabric
from aelab.train.inference import batched_forward, pick_device
from aelab.train.loaders import split_indices
from aelab.train.trainer import Rows, Task, TrainData, Trainer, TrainerConfig

__all__ = ["DETECTOR_FILE", "ReconstructionDetector"]

DETECTOR_FILE = "detector.ckpt"
_KIND = "anomaly-detector"


class ReconstructionDetector(BaseEstimator):
    """Autoencoder anomaly detector on images (PyOD-style API).

    Args:
        preset: network size: ``tiny``, ``small`` or ``seed`` (see ``aelab.models.PRESETS``).
        image_size: square input side; default: the array's size, or the preset's for folders.
        channels: 1 or 3; default: the array's channels, or 3 for folders.
        width, depth: override the preset's first-block width and number of poolings.
        skip_connections: keep the U-Net skips (the course report's network; off by default, see module doc).
        score: per-pixel map: ``mse``, ``mae``, ``ssim``, ``gms``, maps joined by ``+`` (each
            scaled by its held-out normal median, e.g. ``mse+gms``) or the legacy ``combined``
            (see `aelab.anomaly.scores`).
        reduction: map to image score: ``mean``, ``max`` or ``topk`` (mean of the ``top_k``
            share of the highest pixels).
        top_k: share of pixels averaged by ``topk``.
        smoothing: Gaussian sigma (pixels) applied to the map before the reduction; 0 = none.
        ssim_window: odd SSIM window side.
        contamination: the false-alarm rate to stay under (``alpha`` of the conformal rule;
            the ``quantile`` rule takes the ``1 - contamination`` quantile).
        threshold: a manual threshold (overrides the rule).
        threshold_rule: ``auto`` (manual if ``threshold``, f1 if anomalies are given to ``fit``,
            else conformal), ``conformal``, ``quantile``, ``f1`` or ``manual``.
        epochs, batch_size, lr, weight_decay, patience: training (AdamW, cosine schedule,
            early stopping on held-out MSE).
        corruption: ``structured`` (patches of other normal images, strokes and blobs pasted
            into half of the training images, restored to the clean image; DRAEM's
            reconstructive half, see `aelab.anomaly.corruption`) or ``none``.
        noise_factor: std of Gaussian input noise while training (denoising); 0 = none.
        val_fraction: share of the normal images held out (early stopping and threshold).
        recursive, strict: folder reading (subfolders; unreadable files are an error).
        seed, device, devices, precision: engine options as in ``aelab.train.options.RunOptions``.
        run_dir: run folder for checkpoints and ``metrics.csv``; default a temporary folder.

    Example:
        >>> normal = np.random.default_rng(0).integers(0, 40, (64, 1, 32, 32), dtype=np.uint8)
        >>> det = ReconstructionDetector(preset="tiny", epochs=3).fit(normal)  # doctest: +SKIP
        >>> det.predict(np.full((1, 1, 32, 32), 255, np.uint8))  # doctest: +SKIP
        array([1])
    """

    method = "reconstruction"
    has_maps = True  # per-pixel maps (`anomaly_map`, `reconstruct`); `GeometricDetector` has none

    def __init__(
        self, *, preset: str = "small", image_size: int | None = None, channels: int | None = None,
        width: int | None = None, depth: int | None = 4, skip_connections: bool = False,
        score: str = "mse+gms", reduction: str = "topk", top_k: float = 0.005, smoothing: float = 0.0,
        ssim_window: int = 7, contamination: float = 0.01, threshold: float | None = None,
        threshold_rule: str = "auto", epochs: int = 100, batch_size: int = 32, lr: float = 1e-3,
        weight_decay: float = 1e-4, corruption: str = "structured", noise_factor: float = 0.0,
        val_fraction: float = 0.2, patience: int = 20,
        recursive: bool = False, strict: bool = False, seed: int = 0, device: str = "auto", devices: int = 1,
        precision: str = "auto", run_dir: str | None = None,
    ):
        # scikit-learn convention: store the keyword parameters as given; validate in fit.
        params = dict(locals())
        for name in inspect.signature(type(self).__init__).parameters:
            if name != "self":
                setattr(self, name, params[name])

    # --- input -----------------------------------------------------------------------------------

    def as_images(self, X: Any, image_size: int | None = None, channels: int | None = None) -> ImageBatch:
        """Read ``X`` (folder, file list, array or tensor) as uint8 images for this detector.

        Folders go through ``list_images`` + ``load_images`` (bad files skipped and listed, or an
        error with ``strict``); arrays are converted to the detector's channels and size.
        """
        prep = getattr(self, "preprocessing_", None)
        size = image_size or (prep.image_size if prep else None)
        chans = channels or (prep.channels if prep else None)
        is_files = isinstance(X, (str, os.PathLike)) or (
            isinstance(X, (list, tuple)) and len(X) > 0 and all(isinstance(p, (str, os.PathLike)) for p in X)
        )
        if is_files:
            from aelab.data import list_images, load_images

            paths = list_images(X, recursive=self.recursive) if isinstance(X, (str, os.PathLike)) else list(X)
            size = size or preset_config(self.preset, image_size=self.image_size).image_size
            data = load_images(paths, size, chans or 3, strict=self.strict)
            return ImageBatch(data.images, list(data.paths), list(data.skipped))
        is_set = hasattr(X, "images") and hasattr(X, "paths")  # an aelab.data.ImageSet or an ImageBatch
        images = _array_images(X.images if is_set else X)
        images = _match(images, size or images.shape[-1], chans or images.shape[1])
        return ImageBatch(images, list(X.paths), list(X.skipped)) if is_set else ImageBatch(images)

    # --- fitting ---------------------------------------------------------------------------------

    def _check_params(self, anomalies: Any = None) -> None:
        """Fail before training, not after it."""
        check_score_kind(self.score, self.ssim_window)
        check_reduction(self.reduction, self.top_k, self.smoothing)
        if self.corruption not in CORRUPTIONS:
            raise AelabError(f"corruption must be one of {', '.join(CORRUPTIONS)}, got {self.corruption!r}")
        check_threshold_params(self.threshold_rule, self.threshold, self.contamination, self.val_fraction, anomalies)
        if self.epochs < 1 or self.batch_size < 1:
            raise AelabError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")

    def fit(self, X: Any, y: Any = None, *, anomalies: Any = None) -> ReconstructionDetector:
        """Train on normal images ``X`` and choose the threshold on the held-out share.

        Args:
            X: normal images: a folder, a list of files, uint8 ``(N, C, H, W)`` or float [0, 1].
            y: ignored (PyOD/scikit-learn signature).
            anomalies: optional labelled anomalies; with them the threshold maximises F1.

        Returns:
            ``self``, with ``model_``, ``preprocessing_``, ``threshold_``, ``decision_scores_``
            (training images), ``val_scores_`` (held-out normals), ``labels_``, ``history_``.
        """
        from aelab.data import Preprocessing

        self._check_params(anomalies)
        for name in ("preprocessing_", "model_"):
            self.__dict__.pop(name, None)  # refit from scratch: sizes come from the new data
        data = self.as_images(X, self.image_size, self.channels)
        images = data.images
        if len(images) < 2:
            raise DataError(f"fitting needs at least 2 normal images, got {len(images)}")
        self.model_config_ = preset_config(
            self.preset, image_size=images.shape[-1], width=self.width, depth=self.depth,
            in_channels=images.shape[1], num_classes=0, head="none", skip_connections=self.skip_connections,
        )
        self.preprocessing_ = Preprocessing(image_size=images.shape[-1], channels=images.shape[1])
        train_idx, val_idx = split_indices(len(images), self.val_fraction, self.seed)
        if len(val_idx) == 0:
            warnings.warn("no held-out normal images: the threshold is chosen on training scores (too low)", stacklevel=2)
            val_idx = train_idx
        with contextlib.ExitStack() as stack:
            if self.run_dir is None:
                run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aelab-anomaly-")))
            else:
                run_dir = Path(self.run_dir)  # the caller's run folder (it may already hold config.yaml)
                run_dir.mkdir(parents=True, exist_ok=True)
            self._train(images, train_idx, val_idx, run_dir)
        self.run_dir_ = None if self.run_dir is None else run_dir
        paths = data.paths
        self.train_files_ = None if paths is None else [str(paths[i]) for i in train_idx]
        self.val_files_ = None if paths is None else [str(paths[i]) for i in val_idx]
        self.skipped_ = [(str(p), r) for p, r in data.skipped]
        # Medians of all base scores, so the score kind can be switched after fitting.
        val_base = self._base_scores(images, BASE_KINDS, index=val_idx)
        val_base.pop("loss")
        self.score_medians_ = normal_medians(val_base)
        self.val_scores_ = combine_scores(val_base, self.score, self.score_medians_)
        self.set_threshold(anomalies=anomalies)
        self.decision_scores_ = self._score(images, index=train_idx)[0]
        self.labels_ = self.threshold_info_.predict(self.decision_scores_)
        return self

    def _train(self, images: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, run_dir: Path) -> None:
        """One aelab training stage (`aelab.train.trainer.Trainer`, as ``aelab.train.pretrain``); rows are read by
        index."""
        set_seed(self.seed)
        prep = self.preprocessing_
        fabric = make_fabric(self.device, self.devices, self.precision)
        rows = RowReader(images)  # one reader: train and validation share its mapping
        config = TrainerConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                               weight_decay=self.weight_decay, seed=self.seed, monitor="val_mse", mode="min",
                               patience=self.patience, desc="anomaly")
        data = TrainData(Rows(rows, index=train_idx), Rows(rows, index=val_idx))
        trainer = Trainer(config, build_model(self.model_config_), data, fabric=fabric, run_dir=run_dir)
        model, gen = trainer.model, torch.Generator().manual_seed(self.seed + fabric.global_rank)

        def train_step(batch, _step: int):
            clean = prep.target(batch[0])
            dirty = structured_corruption(clean, gen) if self.corruption == "structured" else clean
            if self.noise_factor:
                dirty = (dirty + self.noise_factor * torch.randn_like(dirty)).clamp(0, 1)
            return {"loss": F.mse_loss(model(prep.normalize(dirty)).reconstruction.float(), clean)}

        def validate():
            total, n = 0.0, 0
            for (x,) in trainer.val_loader:
                target = prep.target(x)
                out = model(prep.model_input(x)).reconstruction.float()
                total += float(F.mse_loss(out, target, reduction="sum")) / target[0].numel()
                n += len(x)
            return {"val_mse": total / max(n, 1)}

        payload = dict(model_config=self.model_config_.to_dict(), preprocessing=prep.to_dict(), classes=None,
                       stage="anomaly", config=to_plain(self.get_params()))
        state = trainer.fit(Task(train_step, validate), payload=payload)
        trainer.raw_model.load_state_dict(load_checkpoint(run_dir, which="best")["state_dict"])
        self.model_ = trainer.raw_model.cpu().eval()
        self.history_, self.best_epoch_ = state.history, state.best_epoch

    def set_threshold(self, value: float | None = None, *, rule: str | None = None, normal: Any = None,
                      anomalies: Any = None) -> ReconstructionDetector:
        """(Re)choose the threshold without retraining.

        Args:
            value: a manual threshold.
            rule: ``auto`` or one of `THRESHOLD_RULES`; default the ``threshold_rule`` parameter.
            normal: normal images to use instead of the stored held-out scores.
            anomalies: labelled anomalies (enables the ``f1`` rule).
        """
        self._check_fitted()
        normal_scores = self.val_scores_ if normal is None else self._score(self.as_images(normal).images)[0]
        anom_scores = None if anomalies is None else self._score(self.as_images(anomalies).images)[0]
        self.threshold_info_ = choose_threshold(
            normal_scores, anom_scores, rule=rule or self.threshold_rule, quantile=1.0 - self.contamination,
            value=self.threshold if value is None else value, alpha=self.contamination,
        )
        self.threshold_ = self.threshold_info_.value
        return self

    # --- scoring ---------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise AelabError("this ReconstructionDetector is not fitted yet: call fit() or ReconstructionDetector.load()")

    def _base_scores(self, images: np.ndarray, kinds: tuple[str, ...], chunk: int = 512,
                     index: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Base scores of ``kinds`` plus ``"loss"``, the plain per-image MSE (the course report's loss),
        of ``images`` (or of its rows ``index``, read chunk by chunk)."""
        prep, device, parts = self.preprocessing_, pick_device(self.device), []
        rows = None if index is None else RowReader(images)
        n = len(images) if index is None else len(index)
        for start in range(0, n, chunk):  # chunks bound the memory of reconstructions
            x = images[start : start + chunk] if rows is None else rows.gather(index[start : start + chunk]).numpy()
            rec = batched_forward(self.model_, prep, x, device=device, batch_size=min(chunk, 256), want=("reconstruction",))
            target, recon = prep.target(x), torch.from_numpy(rec.reconstruction)
            part = base_scores(target, recon, self.ssim_window, kinds, self.reduction, self.top_k, self.smoothing)
            part["loss"] = (recon.float() - target.float()).pow(2).flatten(1).mean(1).double().numpy()
            parts.append(part)
        return {k: np.concatenate([p[k] for p in parts]) for k in (*kinds, "loss")}

    def _score(self, images: np.ndarray, chunk: int = 512, index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        base = self._base_scores(images, needed_kinds(self.score), chunk, index=index)
        return combine_scores(base, self.score, self.score_medians_), base["loss"]

    def score_images(self, X: Any) -> ScoreResult:
        """Scores, per-image MSE, normalised scores and 0/1 decisions in one pass (see `ScoreResult`)."""
        self._check_fitted()
        data = self.as_images(X)
        scores, loss = self._score(data.images)
        th = self.threshold_info_
        return ScoreResult(scores, loss, th.normalize(scores), th.predict(scores), data.paths, data.skipped)

    def decision_function(self, X: Any) -> np.ndarray:
        """``(N,)`` anomaly scores, higher = more anomalous (for a folder: readable files, in order)."""
        return self.score_images(X).scores

    def predict(self, X: Any) -> np.ndarray:
        """``(N,)`` int64: 1 = anomaly (score above ``threshold_``), 0 = normal."""
        return self.score_images(X).is_anomaly

    def normalized_scores(self, X: Any) -> np.ndarray:
        """``(N,)`` ``score / (score + threshold_)``: monotone, 0.5 at the threshold."""
        return self.score_images(X).normalized

    def reconstruct(self, X: Any) -> Reconstruction:
        """Images, reconstructions and anomaly maps (see `anomaly_map`) in one pass."""
        self._check_fitted()
        images = self.as_images(X).images
        prep = self.preprocessing_
        rec = batched_forward(self.model_, prep, images, device=pick_device(self.device), want=("reconstruction",)).reconstruction
        return Reconstruction(images, rec, self._maps(prep.target(images), torch.from_numpy(rec)))

    def _maps(self, target: torch.Tensor, recon: torch.Tensor) -> np.ndarray:
        def one(kind: str) -> torch.Tensor:
            return smooth_maps(error_maps(target, recon, kind, self.ssim_window), self.smoothing)

        m = self.score_medians_  # joined scores: their formula applied pixel by pixel
        if self.score == "combined":
            return ((one("mse").clamp_min(0) / m["mse"]).sqrt().add(one("ssim") / m["ssim"]) / 2).numpy()
        parts = score_parts(self.score)
        if len(parts) == 1:
            return one(parts[0]).numpy()
        return (sum(one(p) / m[p] for p in parts) / len(parts)).numpy()

    def anomaly_map(self, X: Any) -> np.ndarray:
        """``(N, H, W)`` per-pixel anomaly maps at the detector's input size, higher = more anomalous.

        The smoothed map of the score kind, before the reduction that makes the image score (for
        ``mean``/``max``/``topk`` the image score is the map's mean/max/top-k mean).
        """
        return self.reconstruct(X).error_map

    # --- persistence -----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the detector as a plain-dict aelab checkpoint (a folder gets ``detector.ckpt``)."""
        self._check_fitted()
        path = Path(path)
        file = path / DETECTOR_FILE if path.is_dir() else path
        save_checkpoint(
            file, kind=_KIND, stage="anomaly", model_config=self.model_config_.to_dict(),
            preprocessing=self.preprocessing_.to_dict(), classes=None,
            state_dict={k: v.detach().cpu() for k, v in self.model_.state_dict().items()},
            threshold=self.threshold_info_.to_dict(), score={"kind": self.score, "ssim_window": self.ssim_window},
            score_medians=self.score_medians_, config=self.get_params(),
            decision_scores=self.decision_scores_, val_scores=self.val_scores_,
            train_files=self.train_files_, val_files=self.val_files_, best_epoch=self.best_epoch_,
        )
        return file

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> ReconstructionDetector:
        """Rebuild a saved detector from a checkpoint file or a run folder holding ``detector.ckpt``."""
        from aelab.data import Preprocessing

        p = Path(path)
        file = p / DETECTOR_FILE if p.is_dir() else p
        if not file.is_file():
            raise AelabError(f"no anomaly detector at {file} (written by `aelab anomaly fit` or ReconstructionDetector.save)")
        ckpt = load_checkpoint(file)
        if ckpt.get("kind") != _KIND:
            raise AelabError(f"{file} is an aelab checkpoint but not an anomaly detector")
        if ckpt.get("method", "reconstruction") != "reconstruction":
            raise AelabError(f"{file} is a {ckpt['method']} anomaly detector; load it with aelab.anomaly.load_detector")
        names = set(inspect.signature(cls.__init__).parameters) - {"self"}
        det = cls(**{k: v for k, v in ckpt["config"].items() if k in names})
        if device is not None:
            det.device = device
        det.model_config_ = ModelConfig.from_dict(ckpt["model_config"])
        det.model_ = build_model(det.model_config_)
        det.model_.load_state_dict(ckpt["state_dict"])
        det.model_.eval()
        det.preprocessing_ = Preprocessing.from_dict(ckpt["preprocessing"])
        det.threshold_info_ = Threshold.from_dict(ckpt["threshold"])
        det.threshold_ = det.threshold_info_.value
        det.score_medians_ = dict(ckpt["score_medians"])
        det.decision_scores_ = np.asarray(ckpt["decision_scores"], dtype=np.float64)
        det.val_scores_ = np.asarray(ckpt["val_scores"], dtype=np.float64)
        det.labels_ = det.threshold_info_.predict(det.decision_scores_)
        det.train_files_, det.val_files_ = ckpt.get("train_files"), ckpt.get("val_files")
        det.best_epoch_, det.history_, det.skipped_, det.run_dir_ = ckpt.get("best_epoch", -1), [], [], None
        return det
