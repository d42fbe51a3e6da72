"""Per-image anomaly scores and per-pixel error maps from an image and its reconstruction.

All scores compare the reconstruction target (the plain image in [0, 1], from
``Preprocessing.target``) with the decoder output (also in [0, 1]); higher means more anomalous.

- ``mse``: mean squared error over channels and pixels; its mean over a group is the seed
  report's "Normal loss" / "Anomaly loss".
- ``mae``: mean absolute error; less dominated by a few badly reconstructed pixels.
- ``ssim``: ``1 - mean SSIM`` (Wang et al. 2004, Eq. 13) with a Gaussian window
  (``kornia.metrics.ssim``); compares local structure rather than intensity. A 7-pixel window
  suits 28-64 pixel images (the usual 11 covers a third of a 32-pixel digit).
- ``combined``: ``(sqrt(mse / m_mse) + ssim / m_ssim) / 2`` where ``m_k`` is the median of
  score ``k`` over held-out normal images. Dividing by the normal median puts intensity error
  and structural error on one scale (a typical normal image scores 1 on each); the square root
  makes the MSE term linear in the error like ``1 - SSIM``, so its heavy tail does not dominate.
  (MAE is left out: it ranks almost like MSE and measured weakest on MNIST.)

Example:
    >>> t = torch.zeros(2, 1, 16, 16); r = t.clone(); r[1] += 0.5
    >>> base = base_scores(t, r)
    >>> [round(float(v), 3) for v in base["mse"]], [round(float(v), 3) for v in base["mae"]]
    ([0.0, 0.25], [0.0, 0.5])
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from aelab.errors import AelabError

__all__ = [
    "SCORE_KINDS",
    "BASE_KINDS",
    "check_score_kind",
    "base_scores",
    "combine_scores",
    "needed_kinds",
    "normal_medians",
    "pixel_errors",
]

SCORE_KINDS: tuple[str, ...] = ("mse", "mae", "ssim", "combined")
BASE_KINDS: tuple[str, ...] = ("mse", "mae", "ssim")


def check_score_kind(kind: str, ssim_window: int = 7) -> str:
    """Validate a score name (and the SSIM window, odd and >= 3); returns the name."""
    if kind not in SCORE_KINDS:
        raise AelabError(f"unknown anomaly score {kind!r}; choose one of {', '.join(SCORE_KINDS)}")
    if isinstance(ssim_window, bool) or not isinstance(ssim_window, int) or ssim_window < 3 or ssim_window % 2 == 0:
        raise AelabError(f"ssim_window must be an odd integer >= 3 (e.g. 7 or 11), got {ssim_window!r}")
    return kind


def _ssim_map(target: torch.Tensor, recon: torch.Tensor, window: int) -> torch.Tensor:
    import kornia

    # Small images: the window must fit inside the image or SSIM is mostly padding.
    window = min(window, (min(target.shape[-2:]) // 2) * 2 - 1)
    return kornia.metrics.ssim(recon.float(), target.float(), window_size=max(window, 3), max_val=1.0)


def pixel_errors(target: torch.Tensor, recon: torch.Tensor, kind: str = "mse", ssim_window: int = 7) -> torch.Tensor:
    """Per-pixel error map, averaged over channels.

    Args:
        target: ``(N, C, H, W)`` images in [0, 1].
        recon: ``(N, C, H, W)`` reconstructions in [0, 1].
        kind: ``mse`` (squared error), ``mae`` (absolute error), ``ssim`` (1 - local SSIM);
            ``combined`` shows the squared error.

    Returns:
        ``(N, H, W)`` float32 tensor; its per-image mean is the ``mse``/``mae``/``ssim`` score.
    """
    check_score_kind(kind, ssim_window)
    diff = recon.float() - target.float()
    if kind == "mae":
        return diff.abs().mean(1)
    if kind == "ssim":
        return (1.0 - _ssim_map(target, recon, ssim_window)).mean(1)
    return diff.pow(2).mean(1)


def base_scores(
    target: torch.Tensor, recon: torch.Tensor, ssim_window: int = 7, kinds: tuple[str, ...] = BASE_KINDS
) -> dict[str, np.ndarray]:
    """The base scores of each image.

    Args:
        target: ``(N, C, H, W)`` images in [0, 1].
        recon: ``(N, C, H, W)`` reconstructions in [0, 1].
        ssim_window: odd Gaussian window side for SSIM.
        kinds: which of ``mse``, ``mae``, ``ssim`` to compute.

    Returns:
        ``{kind: (N,) float64 array}``.
    """
    out: dict[str, np.ndarray] = {}
    diff = recon.float() - target.float()
    if "mse" in kinds:
        out["mse"] = diff.pow(2).flatten(1).mean(1).double().cpu().numpy()
    if "mae" in kinds:
        out["mae"] = diff.abs().flatten(1).mean(1).double().cpu().numpy()
    if "ssim" in kinds:
        out["ssim"] = (1.0 - _ssim_map(target, recon, ssim_window).flatten(1).mean(1)).double().cpu().numpy()
    return out


def needed_kinds(kind: str) -> tuple[str, ...]:
    """Base scores a score kind needs (``mse`` always: it is the reported loss)."""
    return ("mse", "ssim") if kind == "combined" else tuple(dict.fromkeys(("mse", kind)))


def normal_medians(base: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Median of each base score over normal images: the scale used by ``combined``.

    A zero median (a perfect reconstruction) is replaced by a tiny positive value so the
    division stays finite.
    """
    return {k: max(float(np.median(v)), 1e-12) for k, v in base.items() if len(v)}


def combine_scores(base: Mapping[str, np.ndarray], kind: str, medians: Mapping[str, float] | None = None) -> np.ndarray:
    """The score ``kind`` from the base scores; ``combined`` needs the held-out normal medians.

    Returns:
        ``(N,)`` float64 array, higher = more anomalous.
    """
    check_score_kind(kind)
    if kind != "combined":
        return np.asarray(base[kind], dtype=np.float64)
    if not medians or any(k not in medians for k in ("mse", "ssim")):
        raise AelabError("the combined score needs the median normal scores of a fitted detector")
    rmse = np.sqrt(np.clip(np.asarray(base["mse"], dtype=np.float64), 0, None) / medians["mse"])
    return (rmse + np.asarray(base["ssim"], dtype=np.float64) / medians["ssim"]) / 2
