"""Decision thresholds on anomaly scores: the rule that picks one, and what it is stored as.

An image is called anomalous when its score is strictly above the threshold. Four rules:

- ``conformal`` (the default without labelled anomalies): the ``k``-th smallest of ``n`` held-out
  normal scores with ``k = ceil((n + 1)(1 - alpha))`` (split conformal prediction; Vovk et al.
  2005; Angelopoulos and Bates 2021, "A gentle introduction to conformal prediction", Sec. 1
  and Appendix D). If normal scores are exchangeable, a new normal image is flagged with
  probability ``(n + 1 - k) / (n + 1) <= alpha`` whatever ``n`` is, and the false-alarm rate of
  one calibrated threshold is ``Beta(n + 1 - k, k)``-distributed (ibid., Eq. D.1), so the number
  of false alarms among ``m`` new normals is beta-binomial (`Threshold.false_alarm_interval`).
  With ``n < 1 / alpha - 1`` no order statistic reaches ``alpha``: the largest score is used and
  the expected rate ``1 / (n + 1)`` is reported (above ``alpha``).
- ``quantile``: the ``q``-quantile of held-out normal scores (default ``q = 0.99``), so about
  ``1 - q`` of normal images raise a false alarm. Needs normal images only.
- ``f1``: the value that maximises F1 (anomalies positive) on held-out normals plus labelled
  anomalies; placed halfway between the two neighbouring scores so it generalises a little.
- ``manual``: a value given by the user.

The normalised score ``s / (s + t)`` maps scores ``s >= 0`` monotonically into [0, 1) with the
threshold ``t`` at exactly 0.5, so ``normalized_score > 0.5`` is the same decision as ``s > t``.

Example:
    >>> th = choose_threshold(np.linspace(0.0, 1.0, 101), rule="quantile", quantile=0.9)
    >>> th.rule, round(th.value, 3), float(th.normalize(np.array([th.value]))[0])
    ('quantile', 0.9, 0.5)
    >>> th = choose_threshold(np.arange(1.0, 100.0), alpha=0.1)  # 99 scores: k = ceil(100 * 0.9) = 90
    >>> th.rule, th.rank, th.value, th.expected_false_alarm_rate
    ('conformal', 90, 90.0, 0.1)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from aelab.errors import AelabError, ParameterError

__all__ = [
    "THRESHOLD_RULES",
    "check_threshold_rule",
    "Threshold",
    "choose_threshold",
    "conformal_rank",
    "conformal_threshold",
    "f1_threshold",
    "normalized_score",
    "quantile_threshold",
]

THRESHOLD_RULES: tuple[str, ...] = ("conformal", "quantile", "f1", "manual")


def check_threshold_rule(rule: str, threshold: float | None, anomalies: Any = None) -> None:
    """What a detector's threshold rule needs besides its parameters' ranges (checked before training;
    the ranges of ``contamination``, ``threshold`` and ``threshold_rule`` are `aelab.anomaly.base.BaseDetector`'s
    rules)."""
    if rule == "f1" and anomalies is None:
        raise ParameterError("threshold_rule='f1' needs labelled anomalies: fit(normal, anomalies=...)")
    if rule == "manual" and threshold is None:
        raise ParameterError("threshold_rule='manual' needs threshold=VALUE")


def _scores(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise AelabError(f"no {what} scores to choose a threshold from")
    if not np.all(np.isfinite(arr)):
        raise AelabError(f"{what} scores contain NaN or infinite values")
    return arr


def conformal_rank(n: int, alpha: float) -> int:
    """``k = ceil((n + 1)(1 - alpha))``, capped at ``n`` (1-based rank of the conformal threshold)."""
    if not 0.0 < alpha < 1.0:
        raise AelabError(f"alpha (the false-alarm rate) must be in (0, 1), got {alpha}")
    # The small epsilon keeps an exact product such as 81 * 0.99 = 80.19 from rounding up twice.
    return int(min(n, max(1, math.ceil((n + 1) * (1.0 - alpha) - 1e-9))))


def conformal_threshold(normal_scores: Any, alpha: float = 0.01) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest held-out normal score (see the module doc).

    Args:
        normal_scores: ``(n,)`` scores of held-out normal images (not used for training).
        alpha: the false-alarm rate to stay under, in (0, 1).
    """
    s = np.sort(_scores(normal_scores, "normal"))
    return float(s[conformal_rank(len(s), alpha) - 1])


def quantile_threshold(normal_scores: Any, quantile: float = 0.99) -> float:
    """The ``quantile`` of normal scores: about ``1 - quantile`` of normals lie above it.

    Args:
        normal_scores: ``(N,)`` scores of held-out normal images.
        quantile: in (0, 1]; 0.99 gives about 1% false alarms.
    """
    if not 0.0 < quantile <= 1.0:
        raise AelabError(f"quantile must be in (0, 1], got {quantile}")
    return float(np.quantile(_scores(normal_scores, "normal"), quantile))


def f1_threshold(normal_scores: Any, anomalous_scores: Any) -> float:
    """The threshold with the highest F1 (anomalies positive) on labelled validation scores.

    Candidates are the midpoints between consecutive distinct scores (and one below the
    lowest); on ties the higher threshold, i.e. fewer false alarms, wins.

    Args:
        normal_scores: ``(N,)`` scores of normal images.
        anomalous_scores: ``(M,)`` scores of known anomalies.
    """
    normal, anom = _scores(normal_scores, "normal"), _scores(anomalous_scores, "anomalous")
    s = np.concatenate([normal, anom])
    y = np.concatenate([np.zeros(len(normal)), np.ones(len(anom))])
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    k = np.arange(1, len(s) + 1)  # predict the top k as anomalies
    tp = np.cumsum(y)
    f1 = 2 * tp / (k + len(anom))
    # Only cut between distinct scores: a threshold cannot separate equal scores.
    valid = np.append(s[:-1] > s[1:], True)
    best = int(np.flatnonzero(valid)[np.argmax(f1[valid])])  # first max = smallest k = highest threshold
    if best + 1 < len(s):
        return float((s[best] + s[best + 1]) / 2)
    low = float(s[-1])
    return low / 2 if low > 0 else float(np.nextafter(low, -np.inf))


def normalized_score(scores: Any, threshold: float) -> np.ndarray:
    """``s / (s + t)``: monotone in ``s``, 0.5 at the threshold, in [0, 1) for ``s >= 0``."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    t = max(float(threshold), 1e-300)
    return s / (s + t)


@dataclass
class Threshold:
    """A chosen threshold and how it was chosen (stored with the detector).

    Attributes:
        value: images with a score strictly above it are anomalies.
        rule: ``quantile``, ``f1`` or ``manual``.
        quantile: the quantile used by the ``quantile`` rule, else ``None``.
        n_normal: held-out normal images it was chosen on (0 for ``manual``).
        n_anomalous: labelled anomalies it was chosen on (``f1`` only).
        alpha: the requested false-alarm rate (``conformal`` only).
        rank: ``k``, the rank of the threshold among the held-out scores (``conformal`` only).
    """

    value: float
    rule: str
    quantile: float | None = None
    n_normal: int = 0
    n_anomalous: int = 0
    alpha: float | None = None
    rank: int | None = None

    @property
    def expected_false_alarm_rate(self) -> float | None:
        """``(n + 1 - k) / (n + 1)``: the chance a new normal image is flagged (``conformal`` only)."""
        if self.rank is None:
            return None
        return (self.n_normal + 1 - self.rank) / (self.n_normal + 1)

    def false_alarm_interval(self, m: int | None = None, level: float = 0.95) -> tuple[float, float] | None:
        """Central ``level`` interval of the false-alarm rate (``conformal`` only).

        With ``m`` new normal images: of the observed rate (false alarms / ``m``), whose count is
        ``BetaBinomial(m, n + 1 - k, k)``; without: of the rate itself, ``Beta(n + 1 - k, k)``.
        """
        if self.rank is None:
            return None
        from scipy import stats

        a, b = self.n_normal + 1 - self.rank, self.rank
        tail = (1.0 - level) / 2
        if m is None:
            return float(stats.beta.ppf(tail, a, b)), float(stats.beta.ppf(1 - tail, a, b))
        dist = stats.betabinom(int(m), a, b)
        return float(dist.ppf(tail)) / m, float(dist.ppf(1 - tail)) / m

    def predict(self, scores: Any) -> np.ndarray:
        """``(N,)`` int64 labels: 1 = anomaly (score above the threshold)."""
        return (np.asarray(scores, dtype=np.float64) > self.value).astype(np.int64)

    def normalize(self, scores: Any) -> np.ndarray:
        """``(N,)`` normalised scores, 0.5 at the threshold (see `normalized_score`)."""
        return normalized_score(scores, self.value)

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), expected_false_alarm_rate=self.expected_false_alarm_rate)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Threshold:
        names = ("value", "rule", "quantile", "n_normal", "n_anomalous", "alpha", "rank")
        return cls(**{k: d[k] for k in names if k in d})


def choose_threshold(
    normal_scores: Any = None,
    anomalous_scores: Any = None,
    *,
    rule: str = "auto",
    quantile: float = 0.99,
    value: float | None = None,
    alpha: float | None = None,
) -> Threshold:
    """Pick a threshold by ``rule``.

    Args:
        normal_scores: held-out normal scores (needed by ``quantile`` and ``f1``).
        anomalous_scores: labelled anomaly scores (needed by ``f1``).
        rule: ``auto`` (``manual`` when ``value`` is given, else ``f1`` when anomalies are given,
            else ``conformal``), or one of `THRESHOLD_RULES`.
        quantile: quantile for the ``quantile`` rule.
        value: the threshold for the ``manual`` rule (> 0).
        alpha: false-alarm rate of the ``conformal`` rule; default ``1 - quantile``.
    """
    if rule == "auto":
        has_anomalies = anomalous_scores is not None and len(anomalous_scores) > 0
        rule = "manual" if value is not None else ("f1" if has_anomalies else "conformal")
    if rule not in THRESHOLD_RULES:
        raise AelabError(f"unknown threshold rule {rule!r}; choose auto or one of {', '.join(THRESHOLD_RULES)}")
    if rule == "manual":
        if value is None or not math.isfinite(float(value)) or float(value) <= 0:
            raise AelabError(f"a manual threshold must be a positive number, got {value!r}")
        return Threshold(float(value), "manual")
    n_normal = len(_scores(normal_scores, "held-out normal"))
    if rule == "conformal":
        alpha = 1.0 - quantile if alpha is None else float(alpha)
        k = conformal_rank(n_normal, alpha)
        return Threshold(conformal_threshold(normal_scores, alpha), "conformal", None, n_normal, 0, alpha, k)
    if rule == "quantile":
        return Threshold(quantile_threshold(normal_scores, quantile), "quantile", float(quantile), n_normal)
    if anomalous_scores is None:
        raise AelabError("the f1 threshold rule needs labelled anomalies (validation anomalous images)")
    n_anom = len(_scores(anomalous_scores, "anomalous"))
    return Threshold(f1_threshold(normal_scores, anomalous_scores), "f1", None, n_normal, n_anom)
