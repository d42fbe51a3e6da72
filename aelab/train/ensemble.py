"""Study 1's ``ensemble`` row: FixMatch's network and the k-means-features classifier, averaged.

The two learn from the unlabelled images in different ways (a network's consistency training; a patch
dictionary under a linear classifier) and make different mistakes on photos, so an average of their class
probabilities is right more often than either (an average of classifiers' posteriors, Kittler et al., "On
Combining Classifiers", IEEE TPAMI 1998, the sum rule, Eq. 11).

An average is fair only between members whose probabilities mean the same. They do not: FixMatch's network
is overconfident (on photos, mean top probability 0.78-0.86 where it is right on 39-52 % of the test photos),
and the logistic regression is nearer calibrated, or underconfident on digits. So each member is first
temperature-scaled (`fit_temperature`, Guo et al. 2017) to its own likelihood on the validation images,
then the two are averaged (`calibrated_combine`): the member that is right more often is the surer one,
whichever it is. The validation images' own row is cross-fitted (each fold's temperatures come from the other
folds), so its accuracy stays an estimate like every other row's.

The weights depend on the kind of images (`CALIBRATED_WEIGHTS`): equal for grey images, 0.4 for the network
and 0.6 for the k-means features on colour photos. Fifty validation images fit two temperatures but not a
weight as well (a weight fitted on their likelihood picked 0.7 and 0.15 on the two CIFAR-10 tuning draws and
lost up to 3 points), so the weight is a rule by kind from the benchmarks: on the tuning draws (seeds 0 and 1)
0.4 raised the row from 0.5215 / 0.4875 to 0.531 / 0.498 (0.35 and 0.45 also beat 0.5 on both), while on the
digits demo it lowered it from 0.986 to 0.972, where FixMatch is the far stronger member
(benchmarks/README.md, "The ensemble leans on the k-means features for photos").

With fewer than `MIN_CALIBRATION_IMAGES` validation images (4 labelled photos per class leave 10) a
temperature is too noisy to fit, and the row falls back to the uncalibrated ``0.3·p_network + 0.7·p_features``
(`NETWORK_WEIGHT`, chosen on the seed-0 CIFAR-10 draw among 0.3, 0.5 and 0.7). Both rules, and why the
calibrated one replaced the fixed weight, are in `benchmarks/README.md` ("The ensemble's members are
calibrated before they are averaged"; `benchmarks/bench_ensemble.py`).

It trains nothing: it reads the ``fixmatch`` row's fine-tuned network and the ``kmeans-features`` row's
``probabilities.npz`` from the same run folder, so it runs after both (its place in ``--methods``), and writes
the rule it used and the temperatures to ``ensemble/combination.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from aelab.errors import AelabError, StageSkipped
from aelab.layout import RunLayout
from aelab.results import MethodResult

__all__ = ["CALIBRATED_WEIGHT", "CALIBRATED_WEIGHTS", "CALIBRATION_FOLDS", "MEMBERS", "MIN_CALIBRATION_IMAGES",
           "NETWORK_WEIGHT", "TEMPERATURE_RANGE", "calibrated_combine", "combine", "ensemble_probabilities",
           "fit_temperature", "network_probabilities", "run_ensemble", "temperature_scale"]

#: The network row and the classical row it combines.
MEMBERS = ("fixmatch", "kmeans-features")
#: Weight of the network's uncalibrated probabilities (the classical row gets ``1 − NETWORK_WEIGHT``), the rule
#: with fewer than `MIN_CALIBRATION_IMAGES` validation images; see the module text.
NETWORK_WEIGHT = 0.3
#: Weight of the network's temperature-scaled probabilities for each kind of images (`aelab.data.kind.image_kind`);
#: see the module text.
CALIBRATED_WEIGHTS = {"photo": 0.4, "grey": 0.5}
#: The weight of `calibrated_combine` when no kind is given: the members as equals.
CALIBRATED_WEIGHT = CALIBRATED_WEIGHTS["grey"]
#: Fewest validation images on which the members' temperatures are fitted (else the uncalibrated rule).
MIN_CALIBRATION_IMAGES = 30


def combine(network: np.ndarray, features: np.ndarray, weight: float = NETWORK_WEIGHT) -> np.ndarray:
    """``weight·network + (1 − weight)·features``: two ``(N, K)`` arrays of class probabilities, rows summing to 1.

    Example:
        >>> combine(np.array([[0.9, 0.1]]), np.array([[0.3, 0.7]])).round(2).tolist()
        [[0.48, 0.52]]
    """
    if network.shape != features.shape:
        raise AelabError(f"cannot combine probabilities of shapes {network.shape} and {features.shape}")
    return weight * network + (1.0 - weight) * features


#: Folds of the validation images for the row's own validation score (`calibrated_combine`).
CALIBRATION_FOLDS = 5
#: The temperatures `fit_temperature` searches between: a member right on every image it is fitted on would
#: otherwise be sharpened without end (and decide alone); the fitted ones measured lie between 0.43 and 3.5.
TEMPERATURE_RANGE = (0.25, 16.0)
_TINY = 1e-12


def temperature_scale(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row: ``T > 1`` softens the probabilities ``p``, ``T < 1`` sharpens them, and
    the order of the classes in each row stays.

    Example:
        >>> temperature_scale(np.array([[0.8, 0.2]]), 2.0).round(3).tolist()
        [[0.667, 0.333]]
    """
    from scipy.special import softmax

    return softmax(np.log(np.clip(proba, _TINY, None)) / float(temperature), axis=1)


def fit_temperature(proba: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` that minimises the mean negative log-likelihood of ``labels`` under
    `temperature_scale` ``(proba, T)``: temperature scaling (Guo et al., "On Calibration of Modern Neural Networks",
    ICML 2017, Sec. 4.2), one number per classifier, searched over ``log T`` within `TEMPERATURE_RANGE`."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), _TINY, None))
    y = np.asarray(labels)
    if len(y) == 0 or len(y) != len(logp) or logp.ndim != 2:
        raise AelabError(f"a temperature needs labelled probabilities: {len(logp)} rows and {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= logp.shape[1]:
        raise AelabError(f"class labels must be integers from 0 to {logp.shape[1] - 1}, not {y.min()}..{y.max()}")
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logp / np.exp(log_t), axis=1)[rows, y].mean())

    bounds = tuple(float(np.log(t)) for t in TEMPERATURE_RANGE)
    return float(np.exp(minimize_scalar(nll, bounds=bounds, method="bounded").x))


def calibrated_combine(net_val: np.ndarray, feat_val: np.ndarray, val_labels: np.ndarray,
                       net_test: np.ndarray | None = None, feat_test: np.ndarray | None = None,
                       weight: float = CALIBRATED_WEIGHT, folds: int = CALIBRATION_FOLDS):
    """`combine` after `temperature_scale` of each member with its own `fit_temperature` on the validation images.

    A network trained to near-zero training loss is overconfident (on photos, mean top probability 0.78-0.86
    where it is right on 39-52 % of the test photos); the logistic regression is nearer calibrated. Scaled each
    to its own validation likelihood, the stronger member is the surer one, so the average follows the
    members' strength. The test images' row uses temperatures fitted on every validation image; the validation images'
    row uses, in each of ``folds`` interleaved folds, temperatures fitted on the other folds, so that its
    accuracy stays an estimate on images the row has not fitted (cross-fitting).

    Returns ``(val, test, (T_network, T_features))``; ``test`` is None without test probabilities.
    """
    y = np.asarray(val_labels)
    n = len(y)
    if net_val.shape != feat_val.shape or len(net_val) != n:
        raise AelabError(f"cannot calibrate probabilities of shapes {net_val.shape} and {feat_val.shape} "
                         f"with {n} labels")
    temps = fit_temperature(net_val, y), fit_temperature(feat_val, y)
    val = np.empty_like(net_val, dtype=np.float64)
    fold = np.arange(n) % max(1, min(folds, n))
    for k in np.unique(fold):
        fit, out = fold != k, fold == k
        if not fit.any():  # one validation image: nothing to fit on but itself
            fit = out
        tn, tf = fit_temperature(net_val[fit], y[fit]), fit_temperature(feat_val[fit], y[fit])
        val[out] = combine(temperature_scale(net_val[out], tn), temperature_scale(feat_val[out], tf), weight)
    test = None
    if net_test is not None and feat_test is not None:
        test = combine(temperature_scale(net_test, temps[0]), temperature_scale(feat_test, temps[1]), weight)
    return val, test, temps


def ensemble_probabilities(net_val: np.ndarray, feat_val: np.ndarray, val_labels: np.ndarray,
                           net_test: np.ndarray | None = None, feat_test: np.ndarray | None = None,
                           kind: str = "grey"):
    """The row's rule: `calibrated_combine` with at least `MIN_CALIBRATION_IMAGES` validation images, at the
    network weight `CALIBRATED_WEIGHTS` gives ``kind`` (``"photo"`` or ``"grey"``), else the uncalibrated
    `combine` at `NETWORK_WEIGHT`. Returns ``(val, test, info)``; ``info`` says which rule, the network's weight
    and, for the calibrated one, the two temperatures (what the row writes to ``combination.json``)."""
    if kind not in CALIBRATED_WEIGHTS:
        raise ValueError(f"kind must be one of {', '.join(CALIBRATED_WEIGHTS)}, got {kind!r}")
    n = len(val_labels)
    if n >= MIN_CALIBRATION_IMAGES:
        weight = CALIBRATED_WEIGHTS[kind]
        val, test, (t_net, t_feat) = calibrated_combine(net_val, feat_val, val_labels, net_test, feat_test,
                                                        weight=weight)
        info = {"rule": "calibrated", "network_weight": weight, "images": kind,
                "temperatures": {MEMBERS[0]: round(t_net, 4), MEMBERS[1]: round(t_feat, 4)},
                "validation_images": n, "folds": CALIBRATION_FOLDS}
        return val, test, info
    test = None if net_test is None or feat_test is None else combine(net_test, feat_test)
    info = {"rule": "uncalibrated", "network_weight": NETWORK_WEIGHT, "images": kind, "temperatures": None,
            "validation_images": n, "folds": None}
    return combine(net_val, feat_val), test, info


def _member_files(cfg, layout: RunLayout) -> tuple[Path, Path]:
    """The ``fixmatch`` checkpoint and the ``kmeans-features`` probabilities of this run folder.

    A member not in ``--methods`` skips the row (`StageSkipped`, with the reason). A member that was asked for
    but has not finished is an error, so that ``aelab run`` runs the row again on resume, after the member
    (``aelab run`` records each stage in ``stages.json``: a member there must be ``done``)."""
    from aelab.runs import read_json
    from aelab.train.checkpoint import resolve_checkpoint

    absent = [m for m in MEMBERS if m not in cfg.method_list()]
    if absent:
        raise StageSkipped(f"the ensemble combines {' and '.join(MEMBERS)}, and {' and '.join(absent)} is not in "
                           f"--methods (put {', '.join(MEMBERS)} before ensemble)")
    stages = read_json(layout.stages, {})
    unfinished = [m for m in MEMBERS if m in stages and (stages[m] or {}).get("status") != "done"]
    network, features = MEMBERS
    try:
        ckpt = resolve_checkpoint(layout.method_run(network))
    except AelabError:
        ckpt = None
        unfinished.append(network)
    probs = layout.method_probabilities(features)
    if not probs.is_file():
        unfinished.append(features)
    if unfinished:
        names = " and ".join(dict.fromkeys(unfinished))
        raise AelabError(f"the ensemble combines {' and '.join(MEMBERS)}, and {names} has not finished in "
                         f"{layout.root}")
    return ckpt, probs


def _read_probabilities(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as f:
            feat = {k: f[k] for k in f.files}
    except Exception as exc:  # a truncated or foreign file: one line, not a zip traceback
        raise AelabError(f"cannot read {path}: {exc.__class__.__name__}: {exc} (run kmeans-features again)") from None
    missing = {"val", "val_names", "classes"} - set(feat)
    if missing:
        raise AelabError(f"{path} lacks {', '.join(sorted(missing))} (run kmeans-features again)")
    return feat


def network_probabilities(ckpt: Path, cfg, data: Path):
    """The fine-tuned network's probabilities of the validation and test images, decoded with its own
    preprocessing and split as in training: ``(study images, validation (n, K), test (m, K) or None)``."""
    from scipy.special import softmax

    from aelab.data import Preprocessing
    from aelab.train.checkpoint import load_model
    from aelab.train.inference import batched_forward
    from aelab.train.method_runs import study_images

    model, state = load_model(ckpt)
    prep = Preprocessing.from_dict(state["preprocessing"])
    s = study_images(cfg, data, prep, unlabelled=False)
    if list(state.get("classes") or []) != s.classes:
        raise AelabError(f"{ckpt} was trained on other classes than the labelled folder of {data}")

    def probs(images: np.ndarray) -> np.ndarray:
        return softmax(batched_forward(model, prep, images, device=cfg.device, want=("logits",)).logits, axis=1)

    val = probs(s.images[s.val_idx])
    test = probs(s.test.images) if s.test is not None else None
    return s, val, test


def run_ensemble(cfg, data: Path, layout: RunLayout, pretrained: Path | None = None) -> MethodResult:
    """The ``ensemble`` row: combine the ``fixmatch`` network's and the ``kmeans-features`` probabilities
    (`ensemble_probabilities`), write ``predictions.csv``, ``probabilities.npz`` and ``combination.json`` into
    ``layout.method_run("ensemble")``."""
    from aelab.data import image_ids
    from aelab.data.kind import image_kind
    from aelab.runs import write_json
    from aelab.train.method_runs import labels_per_class, require_unlabelled, save_probabilities, score_test

    t0 = time.perf_counter()
    require_unlabelled(data, "ensemble")
    ckpt, probs_file = _member_files(cfg, layout)
    feat = _read_probabilities(probs_file)
    s, net_val, net_test = network_probabilities(ckpt, cfg, data)
    same_val = list(feat["val_names"]) == [s.names[i] for i in s.val_idx] and list(feat["classes"]) == s.classes
    same_test = (s.test is None) == ("test" not in feat or "test_ids" not in feat) and (
        s.test is None or list(feat["test_ids"]) == image_ids(s.test.paths))
    if not (same_val and same_test):
        raise AelabError(f"{probs_file} belongs to other images than {data} with this split: run kmeans-features "
                         "again (the same --seed and --val_fraction)")
    y_val = s.labels[s.val_idx]
    val, test, info = ensemble_probabilities(net_val, feat["val"], y_val, net_test,
                                             None if s.test is None else feat["test"], kind=image_kind(s.images))
    out = MethodResult("ensemble", float(np.mean(val.argmax(1) == y_val)), int(len(s.val_idx)),
                       labels_per_class(data))
    layout.method_run("ensemble").mkdir(parents=True, exist_ok=True)
    if s.test is not None:
        score_test(out, s.layout, s.classes, s.test, test.argmax(1), layout.method_predictions("ensemble"))
    save_probabilities(layout.method_probabilities("ensemble"), val, test, s)
    write_json(layout.method_run("ensemble") / "combination.json", info)
    out.seconds = round(time.perf_counter() - t0, 2)
    return out
