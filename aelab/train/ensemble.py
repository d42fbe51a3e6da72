"""Study 1's ``ensemble`` row: FixMatch's network and the k-means-features classifier, averaged.

The two learn from the unlabelled images in different ways (a network's consistency training; a patch
dictionary under a linear classifier) and make different mistakes on photos, so a weighted average of their
class probabilities, ``p = w·p_network + (1 − w)·p_features``, is right more often than either (an average
of classifiers' posteriors, Kittler et al., "On Combining Classifiers", IEEE TPAMI 1998, the sum rule, Eq. 11;
with weights, as in Sec. 2.1 there).

The weight ``w = 0.3`` comes from `benchmarks/README.md` ("Study 1 on photos", the test ensemble): chosen
on the seed-0 CIFAR-10 draw among 0.3, 0.5 and 0.7, then measured on the held-apart seed-2 draw and on the
digits demo. The network's probabilities are sharp (mean top probability 0.99 on the demo) and the
logistic regression's soft (0.61), so 0.3 does not make the network the junior partner: where FixMatch is
confident and the features are not, FixMatch still decides. Nothing is fitted to the validation images, so
their accuracy is an honest estimate like every other row's.

It trains nothing: it reads the ``fixmatch`` row's fine-tuned network and the ``kmeans-features`` row's
``probabilities.npz`` from the same run folder, so it runs after both (its place in ``--methods``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from aelab.errors import AelabError, StageSkipped
from aelab.layout import RunLayout
from aelab.results import MethodResult

__all__ = ["MEMBERS", "NETWORK_WEIGHT", "combine", "run_ensemble"]

#: The network row and the classical row it combines.
MEMBERS = ("fixmatch", "kmeans-features")
#: Weight of the network's probabilities (the classical row gets ``1 − NETWORK_WEIGHT``); see the module text.
NETWORK_WEIGHT = 0.3


def combine(network: np.ndarray, features: np.ndarray, weight: float = NETWORK_WEIGHT) -> np.ndarray:
    """``weight·network + (1 − weight)·features``: two ``(N, K)`` arrays of class probabilities, rows summing to 1.

    Example:
        >>> combine(np.array([[0.9, 0.1]]), np.array([[0.3, 0.7]])).round(2).tolist()
        [[0.48, 0.52]]
    """
    if network.shape != features.shape:
        raise AelabError(f"cannot combine probabilities of shapes {network.shape} and {features.shape}")
    return weight * network + (1.0 - weight) * features


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


def _network_probabilities(ckpt: Path, cfg, data: Path):
    """The fine-tuned network's probabilities of the validation and test images, decoded with its own
    preprocessing and split as in training."""
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
    (`combine`), write ``predictions.csv`` and ``probabilities.npz`` into ``layout.method_run("ensemble")``."""
    from aelab.data import image_ids
    from aelab.train.method_runs import labels_per_class, require_unlabelled, save_probabilities, score_test

    t0 = time.perf_counter()
    require_unlabelled(data, "ensemble")
    ckpt, probs_file = _member_files(cfg, layout)
    feat = _read_probabilities(probs_file)
    s, net_val, net_test = _network_probabilities(ckpt, cfg, data)
    same_val = list(feat["val_names"]) == [s.names[i] for i in s.val_idx] and list(feat["classes"]) == s.classes
    same_test = (s.test is None) == ("test" not in feat or "test_ids" not in feat) and (
        s.test is None or list(feat["test_ids"]) == image_ids(s.test.paths))
    if not (same_val and same_test):
        raise AelabError(f"{probs_file} belongs to other images than {data} with this split: run kmeans-features "
                         "again (the same --seed and --val_fraction)")
    val = combine(net_val, feat["val"])
    out = MethodResult("ensemble", float(np.mean(val.argmax(1) == s.labels[s.val_idx])), int(len(s.val_idx)),
                       labels_per_class(data))
    test = None if s.test is None else combine(net_test, feat["test"])
    layout.method_run("ensemble").mkdir(parents=True, exist_ok=True)
    if s.test is not None:
        score_test(out, s.layout, s.classes, s.test, test.argmax(1), layout.method_predictions("ensemble"))
    save_probabilities(layout.method_probabilities("ensemble"), val, test, s)
    out.seconds = round(time.perf_counter() - t0, 2)
    return out
