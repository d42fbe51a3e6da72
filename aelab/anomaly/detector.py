"""`ReconstructionDetector`: an autoencoder trained on normal images only; poor reconstruction = anomaly.

The estimator interface (PyOD's ``fit``/``decision_function``/``predict``, thresholds, ``save``/``load``)
is `aelab.anomaly.base.BaseDetector`'s. Training is one aelab training stage (`aelab.train.trainer.Trainer`,
composed like ``aelab.train.pretrain``); a share of the normal images is held out for early
stopping and for the threshold.

Two defects of the course report are avoided here: the network has no skip connections by default (a U-Net can
copy its input, anomalies included, through them), and every image, normal or not, goes through
the one stored `Preprocessing` (the course report greyscaled only its anomalies).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aelab.anomaly.base import DETECTOR_FILE, BaseDetector
from aelab.anomaly.corruption import CORRUPTIONS, structured_corruption
from aelab.anomaly.inputs import Reconstruction
from aelab.anomaly.scores import (
    BASE_KINDS,
    REDUCTIONS,
    SCORE_KINDS,
    base_scores,
    check_score_kind,
    combine_scores,
    error_maps,
    needed_kinds,
    normal_medians,
    score_parts,
    smooth_maps,
)
from aelab.data.rows import RowReader
from aelab.models import ModelConfig, build_model, preset_config
from aelab.runs import set_seed, to_plain
from aelab.train.checkpoint import load_checkpoint, save_checkpoint
from aelab.train.inference import batched_forward, pick_device
from aelab.train.options import Engine, OneOf, Rule
from aelab.train.trainer import Rows, Task, TrainData, Trainer, TrainerConfig

__all__ = ["DETECTOR_FILE", "ReconstructionDetector"]


def _is_score(kind: Any) -> bool:
    try:
        check_score_kind(kind)
    except Exception:
        return False
    return True


class ReconstructionDetector(BaseDetector):
    """Autoencoder anomaly detector on images (PyOD-style API).

    Args:
        preset: network size: ``tiny``, ``small`` or ``course`` (see ``aelab.models.PRESETS``).
        image_size: square input side; default: the array's size, or the preset's for folders.
        channels: 1 or 3; default: the array's channels, or 3 for folders.
        width, depth: override the preset's first-block width and number of poolings.
        skip_connections: keep the U-Net skips (the course report's network; off by default, see module doc).
        score: per-pixel map: ``mse``, ``mae``, ``ssim``, ``gms``, maps joined by ``+`` (each
            scaled by its held-out normal median, e.g. ``mse+gms``) or ``combined``
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
        random_state: seed of the split, the initialisation, the corruption and the batches.

    Example:
        >>> normal = np.random.default_rng(0).integers(0, 40, (64, 1, 32, 32), dtype=np.uint8)
        >>> det = ReconstructionDetector(preset="tiny", epochs=3).fit(normal)  # doctest: +SKIP
        >>> det.predict(np.full((1, 1, 32, 32), 255, np.uint8))  # doctest: +SKIP
        array([1])
    """

    method = "reconstruction"
    has_maps = True  # per-pixel maps (`anomaly_map`, `reconstruct`); `GeometricDetector` has none
    _parameter_constraints = {
        "score": Rule(_is_score, "one of " + ", ".join(SCORE_KINDS) + " or maps joined by + (e.g. mse+gms)"),
        "reduction": OneOf(REDUCTIONS),
        "corruption": OneOf(CORRUPTIONS),
    }

    def __init__(
        self, *, preset: str = "small", image_size: int | None = None, channels: int | None = None,
        width: int | None = None, depth: int | None = 4, skip_connections: bool = False,
        score: str = "mse+gms", reduction: str = "topk", top_k: float = 0.005, smoothing: float = 0.0,
        ssim_window: int = 7, contamination: float = 0.01, threshold: float | None = None,
        threshold_rule: str = "auto", epochs: int = 100, batch_size: int = 32, lr: float = 1e-3,
        weight_decay: float = 1e-4, corruption: str = "structured", noise_factor: float = 0.0,
        val_fraction: float = 0.2, patience: int = 20, random_state: int = 0,
    ):
        self.preset = preset
        self.image_size = image_size
        self.channels = channels
        self.width = width
        self.depth = depth
        self.skip_connections = skip_connections
        self.score = score
        self.reduction = reduction
        self.top_k = top_k
        self.smoothing = smoothing
        self.ssim_window = ssim_window
        self.contamination = contamination
        self.threshold = threshold
        self.threshold_rule = threshold_rule
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.corruption = corruption
        self.noise_factor = noise_factor
        self.val_fraction = val_fraction
        self.patience = patience
        self.random_state = random_state

    # --- input -----------------------------------------------------------------------------------

    def _input_size(self) -> tuple[int | None, int | None]:
        prep = getattr(self, "preprocessing_", None)
        return (prep.image_size, prep.channels) if prep else (None, None)

    def _default_side(self) -> int:
        return preset_config(self.preset, image_size=self.image_size).image_size

    # --- fitting ---------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None, *, anomalies: Any = None, engine: Engine | None = None,
            run_dir: str | os.PathLike | None = None, recursive: bool = False) -> ReconstructionDetector:
        """Train on normal images ``X`` and choose the threshold on the held-out share.

        Args:
            X: normal images: a folder, a list of files, uint8 ``(N, C, H, W)`` or float [0, 1].
            y: ignored (PyOD/scikit-learn signature).
            anomalies: optional labelled anomalies; with them the threshold maximises F1.
            engine: device, processes, precision, strict reading (`aelab.train.options.Engine`); default
                ``Engine()`` (auto device, one process).
            run_dir: run folder for checkpoints and ``metrics.csv``; default a temporary folder.
            recursive: read folders with their subfolders.

        Returns:
            ``self``, with ``model_``, ``preprocessing_``, ``threshold_``, ``decision_scores_``
            (training images), ``val_scores_`` (held-out normals), ``labels_``, ``history_``.
        """
        from aelab.data import Preprocessing

        data, train_idx, val_idx = self._begin_fit(X, anomalies, engine, recursive, ("preprocessing_", "model_"))
        images = data.images
        self.model_config_ = preset_config(
            self.preset, image_size=images.shape[-1], width=self.width, depth=self.depth,
            in_channels=images.shape[1], num_classes=0, head="none", skip_connections=self.skip_connections,
        )
        self.preprocessing_ = Preprocessing(image_size=images.shape[-1], channels=images.shape[1])
        with self._run_folder(run_dir) as folder:
            self._train(images, train_idx, val_idx, folder)
        self._record_split(data, train_idx, val_idx)
        # Medians of all base scores, so the score kind can be switched after fitting.
        val_base = self._base_scores(images, BASE_KINDS, index=val_idx)
        val_base.pop("loss")
        self.score_medians_ = normal_medians(val_base)
        self.val_scores_ = combine_scores(val_base, self.score, self.score_medians_)
        self._finish_fit(self._score(images, index=train_idx)[0], anomalies)
        return self

    def _train(self, images: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, run_dir: Path) -> None:
        """One aelab training stage (`aelab.train.trainer.Trainer`, as ``aelab.train.pretrain``); rows are read by
        index."""
        set_seed(self.random_state)
        prep = self.preprocessing_
        fabric = self.engine_.fabric()
        rows = RowReader(images)  # one reader: train and validation share its mapping
        config = TrainerConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                               weight_decay=self.weight_decay, seed=self.random_state, monitor="val_mse", mode="min",
                               patience=self.patience, desc="anomaly")
        data = TrainData(Rows(rows, index=train_idx), Rows(rows, index=val_idx))
        trainer = Trainer(config, build_model(self.model_config_), data, fabric=fabric, run_dir=run_dir)
        model, gen = trainer.model, torch.Generator().manual_seed(self.random_state + fabric.global_rank)

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
                rec = model(prep.model_input(x)).reconstruction.float()
                total += float(F.mse_loss(rec, target, reduction="sum")) / target[0].numel()
                n += len(x)
            return {"val_mse": total / max(n, 1)}

        payload = dict(model_config=self.model_config_.to_dict(), preprocessing=prep.to_dict(), classes=None,
                       stage="anomaly", config=to_plain(self.get_params()))
        state = trainer.fit(Task(train_step, validate), payload=payload)
        trainer.raw_model.load_state_dict(load_checkpoint(run_dir, which="best")["state_dict"])
        self.model_ = trainer.raw_model.cpu().eval()
        self.history_, self.best_epoch_ = state.history, state.best_epoch

    # --- scoring ---------------------------------------------------------------------------------

    def _base_scores(self, images: np.ndarray, kinds: tuple[str, ...], chunk: int = 512,
                     index: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Base scores of ``kinds`` plus ``"loss"``, the plain per-image MSE (the course report's loss),
        of ``images`` (or of its rows ``index``, read chunk by chunk)."""
        prep, device, parts = self.preprocessing_, pick_device(self.engine.device), []
        rows = None if index is None else RowReader(images)
        n = len(images) if index is None else len(index)
        for start in range(0, n, chunk):  # chunks bound the memory of reconstructions
            stop = start + chunk
            x = images[start:stop] if rows is None else rows.gather(index[start:stop]).numpy()
            rec = batched_forward(self.model_, prep, x, device=device, batch_size=min(chunk, 256),
                                  want=("reconstruction",))
            target, recon = prep.target(x), torch.from_numpy(rec.reconstruction)
            part = base_scores(target, recon, self.ssim_window, kinds, self.reduction, self.top_k, self.smoothing)
            part["loss"] = (recon.float() - target.float()).pow(2).flatten(1).mean(1).double().numpy()
            parts.append(part)
        return {k: np.concatenate([p[k] for p in parts]) for k in (*kinds, "loss")}

    def _score(self, images: np.ndarray, chunk: int = 512,
               index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        base = self._base_scores(images, needed_kinds(self.score), chunk, index=index)
        return combine_scores(base, self.score, self.score_medians_), base["loss"]

    def reconstruct(self, X: Any) -> Reconstruction:
        """Images, reconstructions and anomaly maps (see `anomaly_map`) in one pass."""
        self._check_fitted()
        images = self.as_images(X).images
        prep = self.preprocessing_
        rec = batched_forward(self.model_, prep, images, device=pick_device(self.engine.device),
                              want=("reconstruction",)).reconstruction
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
        file = self._checkpoint_path(path)
        save_checkpoint(
            file, **self._common_payload(), model_config=self.model_config_.to_dict(),
            preprocessing=self.preprocessing_.to_dict(), classes=None,
            state_dict={k: v.detach().cpu() for k, v in self.model_.state_dict().items()},
            score={"kind": self.score, "ssim_window": self.ssim_window},
            score_medians=self.score_medians_, config=self.get_params(),
        )
        return file

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> ReconstructionDetector:
        """Rebuild a saved detector from a checkpoint file or a run folder holding ``detector.ckpt``."""
        from aelab.data import Preprocessing

        det, ckpt = cls._read(path, device)
        det.model_config_ = ModelConfig.from_dict(ckpt["model_config"])
        det.model_ = build_model(det.model_config_)
        det.model_.load_state_dict(ckpt["state_dict"])
        det.model_.eval()
        det.preprocessing_ = Preprocessing.from_dict(ckpt["preprocessing"])
        det.score_medians_ = dict(ckpt["score_medians"])
        det._restore_common(ckpt)
        return det
