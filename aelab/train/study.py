"""Study 1: representation and classification from few labels, as a table of methods.

Every method sees the same labelled images, the same stratified validation split (which picks each
method's checkpoint and the method whose predictions are submitted), the same seed and the same
test folder. Methods:

==================  ==========================================================================
``supervised``      supervised only: random weights, cross-entropy, strong augmentation
``course``          the course report's method: denoising-autoencoder pretraining on the
                    unlabelled images, then ``0.5·MSE + 0.5·CE`` with the report's augmentation
``course-noaug``    the same without augmentation (what augmentation adds)
``fixmatch``        semi-supervised FixMatch-style consistency (Sohn et al. 2020), FlexMatch's class thresholds
``vicreg``          self-supervised VICReg pretraining (Bardes et al. 2022), then supervised fine-tuning
``label-spreading`` classical reference: LabelSpreading on a PCA of the pixels (scikit-learn)
``kmeans-features`` classical reference: single-layer k-means features (Coates, Lee & Ng 2011)
                    learned on the unlabelled images, logistic regression
``ensemble``        fixmatch and kmeans-features together: a weighted average of their class
                    probabilities (`aelab.train.ensemble`); runs after both
==================  ==========================================================================

The two classical rows choose nothing on the validation split, so they predict the test images with every
labelled image (`aelab.train.baselines`, ``refit``); their validation accuracy comes from the training split alone.

``aelab run`` runs one method per stage (so an interrupted run resumes per method);
`classification_study` runs them all in one call for Python users.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aelab.errors import AelabError
from aelab.layout import RunLayout
from aelab.progress import info
from aelab.results import ChosenMethod, ClassificationResult, MethodResult, MethodRow
from aelab.runs import atomic_write_bytes
from aelab.train.method_runs import pretrain_denoise
from aelab.train.methods import (
    FEW_PHOTO_LABELS,
    METHODS,
    budget_shares,
    few_labelled_photos,
    get_method,
    grown_shares_note,
    preference,
    stages_of,
)
from aelab.train.options import RunOptions

__all__ = ["METHODS", "ClassificationStudyConfig", "MethodResult", "StudyResult", "classification_study",
           "pretrain_denoise", "run_method", "submission", "summarize"]

#: Study 1's default time budget in minutes. The epoch settings (``fixmatch_epochs`` and the others) are caps set for
#: it; a larger budget raises them in proportion (`ClassificationStudyConfig.epochs`).
DEFAULT_BUDGET = 12.0

VALIDATION = "a stratified hold-out of the labelled images (the same for every method)"


def _finetune_default(name: str):
    """`FinetuneConfig`'s default: the one declaration of the network and split settings study 1 passes on."""
    from aelab.train.finetune import FinetuneConfig

    return FinetuneConfig.__dataclass_fields__[name].default


_EPOCH_SETTINGS = ("pretrain_epochs", "finetune_epochs", "fixmatch_epochs", "vicreg_epochs")


@dataclass
class ClassificationStudyConfig(RunOptions):
    """Settings of study 1 (defaults: the whole table in about 7 minutes on a 2-core CPU with the demo data).

    Attributes:
        methods: comma-separated methods to compare: supervised, course, course-noaug, fixmatch, vicreg,
            label-spreading, kmeans-features, ensemble (aelab.train.methods; ensemble combines fixmatch and
            kmeans-features, so it comes after both).
        preset: network size: tiny, small (CPU) or course (the course report's network, for GPUs).
        arch: network of the supervised and fixmatch rows (trained from random weights): auto (a plain CNN without a
            decoder for fixmatch on colour photos, else the U-Net; see aelab.data.kind), unet or cnn (both rows).
            The course methods and VICReg always train the U-Net.
        stem_kind: fixed first layer of the supervised and fixmatch rows on colour photos: whiten (PCA whitening of 3x3
            patches) or kmeans (k-means triangle codes of whitened 3x3 patches, Coates et al. 2011; slower epochs,
            see benchmarks/README.md); as `aelab finetune --stem_kind`.
        image_size: square size every image is resized to; none = the preset's.
        channels: 1 or 3 image channels.
        pretrain_epochs: epochs of the course report's denoising pretraining. This, finetune_epochs, fixmatch_epochs
            and vicreg_epochs are caps set for the default 12-minute budget; a larger --budget raises each in
            proportion (`ClassificationStudyConfig.epochs`).
        finetune_epochs: maximum epochs of each supervised fine-tune (the course methods stop early after 10 without
            progress).
        supervised_augment: augmentation of the supervised-only and VICReg fine-tunes (auto-strong: shifts, small
            turns, Cutout, and left-right flips for colour photos only; see aelab.data.kind).
        fixmatch_epochs: passes over the unlabelled images of the semi-supervised method.
        fixmatch_class_thresholds: the semi-supervised method's confidence threshold per class (FlexMatch);
            false = one threshold for every class (plain FixMatch).
        vicreg_epochs: epochs of self-supervised pretraining.
        course_augment: augmentation of the course report's method (its own list by default).
        val_fraction: share of each class held out to pick checkpoints and the submitted method.
        budget: minutes the training stages of study 1 may take together (each stage gets a fixed share, but the
            supervised-only one grows with more than 250 labelled images: aelab.train.methods.budget_shares; its
            epochs are planned at its second epoch's speed, the first's if only one fits, at most the epochs
            above, which a budget larger than 12 minutes raises in proportion: with --budget 60 FixMatch may run 150
            epochs); null = always the epochs above (`--budget null`).
        kmeans_features_centroids: dictionary size K of the k-means features method (grid² · K features).
        kmeans_features_learner: its dictionary learner: kmeans (scikit-learn) or ekm (Equilibrium K-Means).
        kmeans_features_augment: copies of the labelled images its classifier also learns from: auto (flip-shift
            for colour photos, none for grey images), flip-shift (mirrored, and shifted by an eighth of the side),
            shift or none.
        kmeans_features_pooling: max or sum of its codes over each region of the pooling grid (Coates et al.: sum).
        kmeans_features_grid: the codes are pooled over grid × grid regions of the image (Coates et al.: 2).
    """

    methods: str = "supervised,course,course-noaug,fixmatch,vicreg,label-spreading,kmeans-features,ensemble"
    preset: str = _finetune_default("preset")
    arch: str = _finetune_default("arch")
    stem_kind: str = _finetune_default("stem_kind")
    image_size: int | None = _finetune_default("image_size")
    channels: int = _finetune_default("channels")
    pretrain_epochs: int = 15
    finetune_epochs: int = 100
    supervised_augment: str = "auto-strong"
    fixmatch_epochs: int = 30
    fixmatch_class_thresholds: bool = _finetune_default("class_thresholds")
    vicreg_epochs: int = 8
    course_augment: str = "course"
    val_fraction: float = _finetune_default("val_fraction")
    budget: float | None = DEFAULT_BUDGET
    kmeans_features_centroids: int = 800
    kmeans_features_learner: str = "kmeans"
    kmeans_features_augment: str = "auto"
    kmeans_features_pooling: str = "max"
    kmeans_features_grid: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()  # kmeans_features_* and the others: `aelab.train.options.RULES`
        self.method_list()  # unknown methods: one line, before anything runs

    def minutes(self, stage: str, n_labelled: int | None = None) -> float | None:
        """The share of ``budget`` of one training stage (each method's `Method.budget`), among the stages the
        chosen methods run, with ``n_labelled`` labelled images (`budget_shares`)."""
        if self.budget is None:
            return None
        chosen = budget_shares(self.method_list(), n_labelled)
        share = chosen[stage] if stage in chosen else budget_shares(None, n_labelled)[stage]
        return self.budget * share / sum(chosen.values())

    def epochs(self, name: str) -> int:
        """The epoch cap of one training stage, from the setting ``name`` (``fixmatch_epochs``, ``finetune_epochs``,
        ``pretrain_epochs``, ``vicreg_epochs``): as set for the default budget of `DEFAULT_BUDGET` minutes, and raised
        in proportion (rounded up) by a larger budget, so that ``--budget 60`` fills the stages' longer shares
        instead of stopping at the caps of a 12-minute run. A smaller budget or ``budget=None`` keeps the setting.

        Example:
            >>> ClassificationStudyConfig(budget=60).epochs("fixmatch_epochs"), ClassificationStudyConfig().epochs(
            ...     "fixmatch_epochs")
            (150, 30)
        """
        if name not in _EPOCH_SETTINGS:
            raise AelabError(f"{name!r} is not an epoch setting of study 1; one of {', '.join(_EPOCH_SETTINGS)}")
        return math.ceil(getattr(self, name) * self.epoch_scale() - 1e-9)

    def epoch_scale(self) -> float:
        """How much the budget raises the epoch caps (`epochs`): ``budget / DEFAULT_BUDGET``, at least 1."""
        return 1.0 if self.budget is None else max(1.0, self.budget / DEFAULT_BUDGET)

    def method_list(self) -> list[str]:
        names = [m.strip() for m in self.methods.split(",") if m.strip()]
        unknown = [m for m in names if m not in METHODS]
        if unknown or not names:
            raise AelabError(f"unknown method(s) {', '.join(unknown) or '(none)'}; "
                             f"choose from {', '.join(METHODS)}")
        for i, m in enumerate(names):
            late = [n for n in METHODS[m].needs if n in names[i + 1:]]
            if late:
                raise AelabError(f"{m} reads the results of {', '.join(late)}: put {', '.join(late)} before {m} in "
                                 "--methods")
        return names


@dataclass
class StudyResult:
    """Table 1b, the method whose predictions are submitted, and why."""

    rows: list[MethodResult]
    chosen: str | None
    reason: str
    predictions: Path | None
    skipped: dict[str, str] = field(default_factory=dict)  # method -> reason it did not run


def run_method(method: str, cfg: ClassificationStudyConfig, data: Path, layout: RunLayout,
               pretrained: Path | None = None) -> MethodResult:
    """Run one method of the table (`aelab.train.methods.METHODS`); ``pretrained`` is the denoising
    pretraining the course methods start from."""
    return get_method(method).run(cfg, data, layout, pretrained)


def _indistinguishable(a: MethodResult, b: MethodResult) -> bool:
    """Whether ``b``'s validation lead over ``a`` is within the hold-out's noise: less than two standard errors of
    the difference of two accuracies, ``2·sqrt(p(1−p)(1/n_a + 1/n_b))`` with ``p`` their mean (50 images at
    p = 0.4: 0.20; 500 at 0.95: 0.03)."""
    p = min(max((a.val_acc + b.val_acc) / 2, 0.02), 0.98)
    return b.val_acc - a.val_acc <= 2 * math.sqrt(p * (1 - p) * (1 / max(a.n_val, 1) + 1 / max(b.n_val, 1)))


def choose(rows: list[MethodResult], images: str | None = None) -> tuple[MethodResult, str]:
    """The submitted method: the first in the benchmarks' order (`aelab.train.methods.preference`, which depends on
    the kind of ``images`` and the labels per class) whose validation accuracy the best one's does not beat by more
    than the hold-out's noise (`_indistinguishable`); else the best on validation.

    A hold-out of a few labelled images per class cannot separate methods a few points apart, and the best
    of many epochs' validation accuracies is biased upwards; the benchmarks' order holds on average.
    """
    best = max(rows, key=lambda r: r.val_acc)
    for r in sorted(rows, key=lambda r: preference(r.method, images, r.labels_per_class)):
        if _indistinguishable(r, best):
            order = "the benchmarks' order"
            if few_labelled_photos(images, r.labels_per_class):
                order += (f" for colour photos with fewer than {FEW_PHOTO_LABELS} labelled per class (the k-means "
                          "features first)")
            if r is best or r.val_acc == best.val_acc:
                return r, (f"highest validation accuracy ({r.val_acc:.3f} on {r.n_val} held-out labelled images; "
                           f"ties go to the method first in {order})")
            return r, (f"first in {order} among the methods the hold-out cannot tell apart: "
                       f"{best.method}'s validation accuracy {best.val_acc:.3f} is within two standard errors of "
                       f"{r.method}'s {r.val_acc:.3f} on {r.n_val} held-out labelled images")
    return best, f"highest validation accuracy ({best.val_acc:.3f} on {best.n_val} held-out labelled images)"


def study_settings(cfg: ClassificationStudyConfig, data: Path) -> dict:
    """What the report says about how study 1 ran: the kind of images and its augmentation rule, the budget."""
    from aelab.data import load_images, resolve_layout, scan_labelled
    from aelab.data.kind import COLOUR_THRESHOLD, augmentation_for, image_kind

    layout = resolve_layout(data)
    if layout.labelled is None:  # nothing trained: nothing to say
        return {}
    paths = scan_labelled(layout.labelled).paths
    n_labelled = len(paths)
    paths = [paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, min(512, len(paths))).astype(int))]
    kind = image_kind(load_images(paths, 32, cfg.channels, strict=False).images)
    return {"images": kind, "weak_augmentation": augmentation_for(kind, "weak"),
            "strong_augmentation": augmentation_for(kind, "strong"), "arch": cfg.arch,
            "rule": f"colour channels differ by more than {COLOUR_THRESHOLD:g}/255 on average: photos (flipped "
                    "left-right); else grey images such as digits (never flipped)",
            "budget_minutes": cfg.budget, "budget_shares": budget_shares(cfg.method_list(), n_labelled),
            "epoch_scale": cfg.epoch_scale(), "epoch_caps": {name: cfg.epochs(name) for name in _EPOCH_SETTINGS},
            "labelled_images": n_labelled, "budget_note": grown_shares_note(cfg.method_list(), n_labelled),
            "method_stages": {m: stages_of(m) for m in cfg.method_list()}}


def summarize(rows: list[MethodResult], layout: RunLayout, skipped: dict[str, str] | None = None,
              settings: dict | None = None) -> StudyResult:
    """Write table 1b (``study1/methods.csv``), pick the submitted method and copy its ``predictions.csv``.

    ``settings`` (`study_settings`) goes into ``study1/chosen.json`` for the report."""

    def row(r: MethodResult) -> MethodRow:
        m = METHODS[r.method]
        return MethodRow(r.method, m.description, m.uses_unlabelled, r.labels_per_class, r.val_acc, r.n_val,
                         r.test_acc, r.seconds, layout.relative(r.run) if r.run else "")

    table = [row(r) for r in rows]
    table += [MethodRow(m, METHODS[m].description, METHODS[m].uses_unlabelled, note=f"not run: {why}")
              for m, why in (skipped or {}).items() if m in METHODS]
    MethodRow.write(layout, table)
    candidates = [r for r in rows if r.predictions]
    if not candidates:
        reason = "no method wrote predictions (the data have no test folder)" if rows else "no method ran"
        ChosenMethod(None, reason, VALIDATION, settings=settings).write(layout)
        return StudyResult(rows, None, reason, None, dict(skipped or {}))
    best, reason = choose(candidates, (settings or {}).get("images"))
    atomic_write_bytes(layout.predictions, Path(best.predictions).read_bytes())
    ChosenMethod(best.method, reason, VALIDATION, best.val_acc, best.n_val, settings).write(layout)
    info(f"[study 1] predictions.csv from {best.method}: {reason}")
    return StudyResult(rows, best.method, reason, layout.predictions, dict(skipped or {}))


def classification_study(cfg: ClassificationStudyConfig, data: str | Path, out: str | Path) -> StudyResult:
    """Run every method of ``cfg.methods`` on ``data`` into the run folder ``out`` and write table 1b.

    A method that cannot run on these data (e.g. no unlabelled folder for fixmatch) is skipped with
    its reason; the others still run.
    """
    layout = RunLayout(out)
    rows, skipped, pretrained = [], {}, None
    for method in cfg.method_list():
        if METHODS[method].pretrain and pretrained is None:
            pretrained = pretrain_denoise(cfg, Path(data), layout.stage("pretrain"))
        try:
            rows.append(run_method(method, cfg, Path(data), layout, pretrained))
        except AelabError as exc:
            skipped[method] = str(exc)
            info(f"[study 1] {method} skipped: {exc}")
    return summarize(rows, layout, skipped, study_settings(cfg, Path(data)))


def submission(result: StudyResult, layout: RunLayout) -> ClassificationResult:
    """Study 1's record for ``aelab run``: the chosen method and the network study 2 embeds with (the chosen
    method's; for a method that combines others, the first of them with a network; the best network's when a
    classical reference won; relative to the run folder)."""
    runs = {r.method: r.run for r in result.rows if r.run}
    own = [result.chosen, *(METHODS[result.chosen].needs if result.chosen in METHODS else ())]
    chosen_run = next((runs[m] for m in own if m in runs), None)
    best_run = max((r for r in result.rows if r.run), key=lambda r: r.val_acc, default=None)
    model = chosen_run or (best_run.run if best_run else None)
    return ClassificationResult(result.chosen, result.reason, layout.relative(layout.methods_csv),
                                None if model is None else Path(model).relative_to(layout.root).as_posix(),
                                None if result.predictions is None else layout.predictions.name)
