"""`BaseDetector`: what the two anomaly detectors share (reading images, the held-out split, thresholds,
scoring, the common part of ``save``/``load``).

The API follows PyOD (``fit`` on normal data, ``decision_function`` higher = more anomalous,
``predict`` 0/1, ``threshold_``, ``decision_scores_``, ``contamination``) and scikit-learn's
estimator rules: ``__init__`` only stores its parameters, they are checked in ``fit`` by the one table
of rules (`aelab.train.options.rules_for`, with the ``_parameter_constraints`` below), a bad value is a
`ParameterError` (an `AelabError` and a ``ValueError``). Where and how training runs is not a
parameter: ``fit(X, engine=Engine(...), run_dir=...)`` takes it (`aelab.train.options.Engine`).
A subclass supplies ``_fit_model`` (the network and its training), ``_score(images)`` and its
checkpoint fields.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from sklearn.base import BaseEstimator

from aelab.anomaly.inputs import ImageBatch, ScoreResult, _array_images, _match
from aelab.anomaly.thresholds import THRESHOLD_RULES, Threshold, check_threshold_rule, choose_threshold
from aelab.errors import AelabError, DataError
from aelab.train.checkpoint import load_checkpoint
from aelab.train.options import Engine, Interval, OneOf, validate_params

__all__ = ["DETECTOR_FILE", "KIND", "BaseDetector"]

DETECTOR_FILE = "detector.ckpt"
KIND = "anomaly-detector"


class BaseDetector(BaseEstimator):
    """Shared estimator logic of `ReconstructionDetector` and `GeometricDetector` (see the module doc)."""

    method = ""
    has_maps = False
    #: Rules of the parameters the detectors share whose meaning differs from the study-1 settings of the same
    #: name (a score threshold, not FixMatch's confidence; 0 held-out images allowed, with a warning).
    _parameter_constraints = {
        "contamination": Interval(0, 0.5, "right"),
        "val_fraction": Interval(0, 1, "left"),
        "threshold": Interval(none=True),
        "threshold_rule": OneOf(("auto", *THRESHOLD_RULES)),
    }

    # --- input -----------------------------------------------------------------------------------

    def _input_size(self) -> tuple[int | None, int | None]:
        """The fitted input side and channels (None before fitting)."""
        raise NotImplementedError

    def _default_side(self) -> int:
        """The side folders are resized to before fitting."""
        return 32

    def as_images(self, X: Any, image_size: int | None = None, channels: int | None = None) -> ImageBatch:
        """Read ``X`` (folder, file list, array, tensor or `aelab.data.ImageSet`) as uint8 images for this detector.

        Folders go through ``list_images`` + ``load_images`` (subfolders with ``fit(recursive=True)``; bad
        files skipped and listed, or an error with the engine's ``strict``); arrays are converted to the
        detector's channels and size.
        """
        fitted_size, fitted_chans = self._input_size()
        size, chans = image_size or fitted_size, channels or fitted_chans
        is_files = isinstance(X, (str, os.PathLike)) or (
            isinstance(X, (list, tuple)) and len(X) > 0 and all(isinstance(p, (str, os.PathLike)) for p in X)
        )
        if is_files:
            from aelab.data import list_images, load_images

            recursive = getattr(self, "recursive_", False)
            paths = list_images(X, recursive=recursive) if isinstance(X, (str, os.PathLike)) else list(X)
            data = load_images(paths, size or self._default_side(), chans or 3, strict=self.engine.strict)
            return ImageBatch(data.images, list(data.paths), list(data.skipped))
        is_set = hasattr(X, "images") and hasattr(X, "paths")  # an aelab.data.ImageSet or an ImageBatch
        images = _array_images(X.images if is_set else X)
        images = _match(images, size or images.shape[-1], chans or images.shape[1])
        return ImageBatch(images, list(X.paths), list(X.skipped)) if is_set else ImageBatch(images)

    @property
    def engine(self) -> Engine:
        """The engine of the last ``fit`` (or given to ``load``/`use`); the defaults before."""
        return getattr(self, "engine_", None) or Engine()

    def use(self, **engine: Any) -> BaseDetector:
        """Change the engine settings used for scoring (``device``, ``strict``) and folder reading
        (``recursive``); returns ``self``."""
        if "recursive" in engine:
            self.recursive_ = bool(engine.pop("recursive"))
        self.engine_ = replace(self.engine, **engine)
        return self

    # --- fitting ---------------------------------------------------------------------------------

    def _validate_params(self, anomalies: Any = None) -> None:
        """Every parameter by the table of rules, then the threshold rule's needs; before any training."""
        validate_params(self, self.get_params())
        check_threshold_rule(self.threshold_rule, self.threshold, anomalies)

    def _begin_fit(self, X: Any, anomalies: Any, engine: Engine | None, recursive: bool,
                   fitted: tuple[str, ...]) -> tuple[ImageBatch, np.ndarray, np.ndarray]:
        """Check, forget an earlier fit, read the normal images and split them; returns ``(data, train, held out)``."""
        from aelab.train.loaders import split_indices

        self._validate_params(anomalies)
        for name in fitted:
            self.__dict__.pop(name, None)  # refit from scratch: sizes come from the new data
        self.engine_, self.recursive_ = engine or Engine(), bool(recursive)
        data = self.as_images(X, self.image_size, self.channels)
        if len(data.images) < 2:
            raise DataError(f"fitting needs at least 2 normal images, got {len(data.images)}")
        train_idx, val_idx = split_indices(len(data.images), self.val_fraction, self.random_state)
        if len(val_idx) == 0:
            warnings.warn("no held-out normal images: the threshold is chosen on training scores (too low)",
                          stacklevel=3)
            val_idx = train_idx
        return data, train_idx, val_idx

    @contextlib.contextmanager
    def _run_folder(self, run_dir: str | os.PathLike | None) -> Iterator[Path]:
        """The caller's run folder (it may already hold config.yaml), else a temporary one."""
        if run_dir is None:
            with tempfile.TemporaryDirectory(prefix="aelab-anomaly-") as tmp:
                yield Path(tmp)
            self.run_dir_ = None
        else:
            path = Path(run_dir)
            path.mkdir(parents=True, exist_ok=True)
            yield path
            self.run_dir_ = path

    def _record_split(self, data: ImageBatch, train_idx: np.ndarray, val_idx: np.ndarray) -> None:
        paths = data.paths
        self.train_files_ = None if paths is None else [str(paths[i]) for i in train_idx]
        self.val_files_ = None if paths is None else [str(paths[i]) for i in val_idx]
        self.skipped_ = [(str(p), r) for p, r in data.skipped]

    def _finish_fit(self, train_scores: np.ndarray, anomalies: Any) -> None:
        """Threshold from the held-out scores (``val_scores_``), then the training images' scores and labels."""
        self.set_threshold(anomalies=anomalies)
        self.decision_scores_ = train_scores
        self.labels_ = self.threshold_info_.predict(self.decision_scores_)

    def set_threshold(self, value: float | None = None, *, rule: str | None = None, normal: Any = None,
                      anomalies: Any = None) -> BaseDetector:
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
            name = type(self).__name__
            raise AelabError(f"this {name} is not fitted yet: call fit() or {name}.load()")

    def _score(self, images: np.ndarray, chunk: int = 256,
               index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Image scores of ``images`` (rows ``index``) and the per-image reconstruction MSE (None without one)."""
        raise NotImplementedError

    def score_images(self, X: Any) -> ScoreResult:
        """Scores, per-image MSE (NaN without a reconstruction), normalised scores and 0/1 decisions in one pass."""
        self._check_fitted()
        data = self.as_images(X)
        scores, loss = self._score(data.images)
        loss = np.full(len(scores), np.nan) if loss is None else loss
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

    # --- persistence -----------------------------------------------------------------------------

    def _common_payload(self) -> dict[str, Any]:
        """The checkpoint fields every detector writes."""
        return dict(kind=KIND, method=self.method, stage="anomaly", threshold=self.threshold_info_.to_dict(),
                    decision_scores=self.decision_scores_, val_scores=self.val_scores_,
                    train_files=self.train_files_, val_files=self.val_files_, best_epoch=self.best_epoch_)

    def _checkpoint_path(self, path: str | os.PathLike) -> Path:
        self._check_fitted()
        path = Path(path)
        return path / DETECTOR_FILE if path.is_dir() else path

    @classmethod
    def _read(cls, path: str | os.PathLike, device: str | None) -> tuple[BaseDetector, dict]:
        """The unfitted detector of a checkpoint's parameters, and the checkpoint; checks its kind and method."""
        p = Path(path)
        file = p / DETECTOR_FILE if p.is_dir() else p
        if not file.is_file():
            raise AelabError(f"no anomaly detector at {file} (written by `aelab anomaly fit` or {cls.__name__}.save)")
        ckpt = load_checkpoint(file)
        if ckpt.get("kind") != KIND:
            raise AelabError(f"{file} is an aelab checkpoint but not an anomaly detector")
        if ckpt.get("method", "reconstruction") != cls.method:
            raise AelabError(f"{file} is a {ckpt.get('method', 'reconstruction')} anomaly detector, not a {cls.method} "
                             "one; load it with aelab.anomaly.load_detector")
        names = set(cls._get_param_names())
        det = cls(**{k: v for k, v in ckpt["config"].items() if k in names})
        det.engine_ = Engine(device=device or "auto")
        return det, ckpt

    def _restore_common(self, ckpt: dict) -> None:
        self.threshold_info_ = Threshold.from_dict(ckpt["threshold"])
        self.threshold_ = self.threshold_info_.value
        self.decision_scores_ = np.asarray(ckpt["decision_scores"], dtype=np.float64)
        self.val_scores_ = np.asarray(ckpt["val_scores"], dtype=np.float64)
        self.labels_ = self.threshold_info_.predict(self.decision_scores_)
        self.train_files_, self.val_files_ = ckpt.get("train_files"), ckpt.get("val_files")
        self.best_epoch_, self.history_, self.skipped_, self.run_dir_ = ckpt.get("best_epoch", -1), [], [], None
