"""The registry of study 1's methods: one `Method` per method, read by the study, the pipeline and the docs.

Adding a method touches two files: the module with its ``run`` function, and the `METHODS` table below
(or a `register` call); see docs/architecture.md, "How to add a study-1 method".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping

from aelab.errors import AelabError
from aelab.train import method_runs as runs
from aelab.train.ensemble import CALIBRATED_WEIGHTS, MEMBERS, MIN_CALIBRATION_IMAGES, NETWORK_WEIGHT, run_ensemble

if TYPE_CHECKING:
    from pathlib import Path

    from aelab.layout import RunLayout
    from aelab.results import MethodResult

__all__ = ["FEW_PHOTO_LABELS", "GROWS_WITH_LABELS", "METHODS", "Method", "SHARES_SET_AT", "budget_shares",
           "few_labelled_photos", "get_method", "grown_shares_note",
           "preference", "register", "stages_of"]


@dataclass(frozen=True)
class Method:
    """One row of study 1's table.

    Attributes:
        name: the name in ``--methods``, ``methods.csv`` and the run folder (its stage's subfolder).
        description: the table's description column.
        uses_unlabelled: whether it learns from the unlabelled images (the report's "what they add" compares the
            best such method with the best that does not).
        run: ``run(cfg, data, layout, pretrained) -> MethodResult``: trains (into ``layout.method_run(name)``),
            predicts the test folder when there is one and returns the row; ``pretrained`` is the course report's
            denoising pretraining when ``pretrain`` is set (else None). Raises `NoUnlabelledImages` when the data
            cannot serve it (the run skips it with that reason).
        budget: share of study 1's time budget of each of its training stages (relative weights).
        rank: order of preference when the hold-out cannot tell methods apart (lower first; the benchmarks').
        shared: every process of ``--devices N`` runs it (a network trained with Fabric); else rank 0 alone.
        pretrain: it starts from the denoising pretraining (``aelab run`` runs the ``pretrain`` stage first).
        needs: the methods whose outputs it reads from the run folder (they come before it in ``--methods``); the
            first of them with a network is the network study 2 embeds with when this method is submitted.
    """

    name: str
    description: str
    uses_unlabelled: bool
    run: Callable[[object, Path, RunLayout, Path | None], MethodResult]
    budget: Mapping[str, float] = field(default_factory=dict)
    rank: int = 100
    shared: bool = False
    pretrain: bool = False
    needs: tuple[str, ...] = ()


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the table (a name already taken is replaced)."""
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise AelabError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]


#: With fewer labelled photos per class than this, ``kmeans-features`` comes first in the benchmarks' order, before
#: the ensemble: at 4 labelled photos per class (3 to train on) FixMatch learns from mostly wrong pseudo-labels and
#: the k-means features were the best row of the whole table on the tuning draw (0.3005 against the ensemble's
#: 0.212) and on both held-apart ones (0.287 / 0.2785 against 0.251 / 0.2275; benchmarks/README.md). Digits keep the
#: order: there FixMatch is best at 5 labelled digits per class.
FEW_PHOTO_LABELS = 10


def few_labelled_photos(images: str | None, labels_per_class: int | str | None) -> bool:
    """Colour photos (``images == "photo"``) with fewer than `FEW_PHOTO_LABELS` labelled images in some class
    (``labels_per_class``: a number, or ``"min-max"`` as `study1/methods.csv` writes it)."""
    try:
        fewest = int(str(labels_per_class).split("-")[0])
    except ValueError:
        return False
    return images == "photo" and fewest < FEW_PHOTO_LABELS


def preference(method: str, images: str | None = None, labels_per_class: int | str | None = None) -> float:
    """A method's place in the benchmarks' order for these data (lower first): its `Method.rank`, except for the
    k-means features when `few_labelled_photos`, which then come first."""
    if method not in METHODS:
        return math.inf
    if method == "kmeans-features" and few_labelled_photos(images, labels_per_class):
        return min(m.rank for m in METHODS.values()) - 1
    return METHODS[method].rank


def stages_of(method: str) -> list[str]:
    """The training stages (run-folder names) a method's row depends on: its own budgeted stages, then those of the
    methods it reads (``needs``), e.g. ``course`` -> pretrain, course; ``ensemble`` -> fixmatch."""
    out = list(METHODS[method].budget) if method in METHODS else []
    for need in METHODS[method].needs if method in METHODS else ():
        out += [st for st in stages_of(need) if st not in out]
    return out


#: The stages whose share grows with the labelled images (`budget_shares`): the supervised-only row, the baseline of
#: "what the unlabelled images add". Its epochs are passes over the labelled images, so a fixed share starves it
#: when they are many: with 400 labelled photos per class it ran 8 of its 100 epochs in its 45 seconds and scored
#: 0.5175, against 0.658 given 10 minutes (benchmarks/README.md).
GROWS_WITH_LABELS = ("supervised",)
#: The number of labelled images the shares below were set at (25 per class of 10 classes).
SHARES_SET_AT = 250


def budget_shares(names: list[str] | None = None, n_labelled: int | None = None) -> dict[str, float]:
    """Training stage -> budget share, of the methods ``names`` (default: every registered one), in their order.

    With ``n_labelled`` labelled images, the share of each stage in `GROWS_WITH_LABELS` is multiplied by
    ``n_labelled / SHARES_SET_AT`` when that is above 1, up to the largest share among the stages of ``names``
    (FixMatch's in the default table): with many labels the supervised row is compared with it at equal time.
    """
    shares = {st: w for m in (names if names is not None else METHODS) for st, w in METHODS[m].budget.items()}
    if n_labelled and n_labelled > SHARES_SET_AT:
        top = max(shares.values(), default=0.0)
        for st in GROWS_WITH_LABELS:
            if st in shares:
                shares[st] = max(shares[st], min(shares[st] * n_labelled / SHARES_SET_AT, top))
    return shares


def grown_shares_note(names: list[str] | None, n_labelled: int | None) -> str | None:
    """One sentence for the report on the shares `budget_shares` grew with ``n_labelled`` (None: none grew)."""
    base, grown = budget_shares(names), budget_shares(names, n_labelled)
    moved = [st for st in GROWS_WITH_LABELS if st in base and grown[st] != base[st]]
    if not moved:
        return None
    old, new = sum(base.values()), sum(grown.values())
    parts = ", ".join(f"{st} from {base[st]:g} of {old:g} parts to {grown[st]:g} of {new:g}" for st in moved)
    return (f"With {n_labelled:,} labelled images the share of the supervised-only row grew ({parts}): the shares "
            f"were set for {SHARES_SET_AT} labelled images, and this row, the baseline of what the unlabelled images "
            "add, passes over the labelled images only, so its share grows with them, up to the largest share of "
            "the other stages.")


# The benchmarks' order (benchmarks/README.md: FixMatch first on digits and on photos at 25 labels per class; its
# ensemble with the k-means features above it on two photo draws and level on the digits demo; at 4 labelled
# photos per class the k-means features come first: `preference`) gives each method's rank. The
# semi-supervised method, which reads every unlabelled image several times per step, gets half of the full
# table's budget (8 of 16 parts; 8 of 23 with 400 labelled per class, where the supervised share grows:
# `budget_shares`).
for _m in (
    Method("supervised", "supervised only: random weights, cross-entropy, strong augmentation "
           "(flipped left-right for photos only)", False, runs.run_supervised, {"supervised": 1}, 2, True),
    Method("course", "the course report's method: denoising pretraining, then 0.5·MSE + 0.5·CE with its augmentation",
           True, runs.run_course, {"pretrain": 2, "course": 1}, 3, True, True),
    Method("course-noaug", "the course report's method without augmentation", True, runs.run_course_noaug,
           {"pretrain": 2, "course-noaug": 1}, 4, True, True),
    Method("fixmatch", "semi-supervised: FixMatch-style consistency on the unlabelled images (Sohn et al. 2020) "
           "with FlexMatch's class-wise thresholds (Zhang et al. 2021) unless fixmatch_class_thresholds is false",
           True, runs.run_fixmatch, {"fixmatch": 8}, 0, True),
    Method("vicreg", "self-supervised VICReg pretraining (Bardes et al. 2022), then supervised fine-tuning", True,
           runs.run_vicreg, {"vicreg_pretrain": 2, "vicreg": 1}, 1, True),
    Method("label-spreading", "classical reference: LabelSpreading on a 50-component PCA of the pixels; the test "
           "images with every labelled image known", True,
           runs.run_label_spreading, {}, 6),
    Method("kmeans-features", "classical reference: single-layer k-means features (Coates et al. 2011) learned on "
           "the unlabelled images, logistic regression on the labelled images (for photos also on shifted and "
           "mirrored copies of them); refit on every labelled image for the test images", True,
           runs.run_kmeans_features, {}, 5),
    Method("ensemble", "fixmatch and kmeans-features together: the average of their class probabilities, each "
           "first calibrated on the validation images (temperature scaling), then weighted "
           f"{CALIBRATED_WEIGHTS['photo']:g} : {1 - CALIBRATED_WEIGHTS['photo']:g} for colour photos and "
           f"{CALIBRATED_WEIGHTS['grey']:g} : {1 - CALIBRATED_WEIGHTS['grey']:g} for grey images; with fewer than "
           f"{MIN_CALIBRATION_IMAGES} of them, {NETWORK_WEIGHT:g} x the network's + {1 - NETWORK_WEIGHT:g} x the "
           "k-means features', uncalibrated "
           "(aelab.train.ensemble)", True, run_ensemble, {}, -1,
           needs=MEMBERS),
):
    register(_m)
