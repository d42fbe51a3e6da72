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
==================  ==========================================================================

``aelab run`` runs one method per stage (so an interrupted run resumes per method);
`classification_study` runs them all in one call for Python users.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from aelab.errors import AelabError, NoUnlabelledImages
from aelab.layout import RunLayout
from aelab.progress import info
from aelab.runs import atomic_write_bytes, write_csv, write_json
from aelab.train.options import RunOptions

__all__ = ["METHODS", "ClassificationStudyConfig", "MethodResult", "StudyResult", "classification_study",
           "run_method", "summarize"]

METHODS: dict[str, tuple[str, bool]] = {  # name -> (description, uses the unlabelled images)
    "supervised": ("supervised only: random weights, cross-entropy, strong augmentation (flipped left-right for photos only)", False),
    "course": ("the course report's method: denoising pretraining, then 0.5·MSE + 0.5·CE with its augmentation", True),
    "course-noaug": ("the course report's method without augmentation", True),
    "fixmatch": ("semi-supervised: FixMatch-style consistency on the unlabelled images (Sohn et al. 2020) "
                 "with FlexMatch's class-wise thresholds (Zhang et al. 2021) unless fixmatch_class_thresholds is false", True),
    "vicreg": ("self-supervised VICReg pretraining (Bardes et al. 2022), then supervised fine-tuning", True),
    "label-spreading": ("classical reference: LabelSpreading on a 50-component PCA of the pixels", True),
    "kmeans-features": ("classical reference: single-layer k-means features (Coates et al. 2011) learned on the "
                        "unlabelled images, logistic regression", True),
}
COLUMNS = ["method", "description", "uses_unlabelled", "labels_per_class", "val_acc", "n_val", "test_acc", "seconds", "run",
           "note"]
#: How study 1's time budget is shared among its training stages (relative weights): the semi-supervised
#: method, which reads every unlabelled image several times per step, gets half of the full table's.
BUDGET_SHARES = {"pretrain": 2, "course": 1, "course-noaug": 1, "supervised": 1, "fixmatch": 8,
                 "vicreg_pretrain": 2, "vicreg": 1}
_STAGES_OF = {"course": ("pretrain", "course"), "course-noaug": ("pretrain", "course-noaug"), "supervised": ("supervised",),
              "fixmatch": ("fixmatch",), "vicreg": ("vicreg_pretrain", "vicreg")}
VALIDATION = "a stratified hold-out of the labelled images (the same for every method)"


def _finetune_default(name: str):
    """`FinetuneConfig`'s default: the one declaration of the network and split settings study 1 passes on."""
    from aelab.train.finetune import FinetuneConfig

    return FinetuneConfig.__dataclass_fields__[name].default


@dataclass
class ClassificationStudyConfig(RunOptions):
    """Settings of study 1 (defaults: the whole table in about 7 minutes on a 2-core CPU with the demo data).

    Attributes:
        methods: comma-separated methods to compare: supervised, course, course-noaug, fixmatch, vicreg, label-spreading,
            kmeans-features.
        preset: network size: tiny, small (CPU) or course (the course report's network, for GPUs).
        image_size: square size every image is resized to; none = the preset's.
        channels: 1 or 3 image channels.
        pretrain_epochs: epochs of the course report's denoising pretraining.
        finetune_epochs: maximum epochs of each supervised fine-tune (the course methods stop early after 10 without progress).
        supervised_augment: augmentation of the supervised-only and VICReg fine-tunes (auto-strong: shifts, small turns,
            Cutout, and left-right flips for colour photos only; see aelab.data.kind).
        fixmatch_epochs: passes over the unlabelled images of the semi-supervised method.
        fixmatch_class_thresholds: the semi-supervised method's confidence threshold per class (FlexMatch);
            false = one threshold for every class (plain FixMatch).
        vicreg_epochs: epochs of self-supervised pretraining.
        course_augment: augmentation of the course report's method (its own list by default).
        val_fraction: share of each class held out to pick checkpoints and the submitted method.
        budget: minutes the training stages of study 1 may take together (each stage gets a fixed share, see
            BUDGET_SHARES; its epochs come from its first epoch's measured time, at most the epochs above);
            null = always the epochs above (`--budget null`).
        kmeans_features_centroids: dictionary size K of the k-means features method (4K features).
        kmeans_features_learner: its dictionary learner: kmeans (scikit-learn) or ekm (Equilibrium K-Means).
    """

    methods: str = "supervised,course,course-noaug,fixmatch,vicreg,label-spreading,kmeans-features"
    preset: str = _finetune_default("preset")
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
    budget: float | None = 12.0
    kmeans_features_centroids: int = 800
    kmeans_features_learner: str = "kmeans"

    def __post_init__(self) -> None:
        super().__post_init__()  # kmeans_features_* and the others: `aelab.train.options.RULES`
        self.method_list()  # unknown methods: one line, before anything runs

    def minutes(self, stage: str) -> float | None:
        """The share of ``budget`` of one training stage (`BUDGET_SHARES`), among the stages the chosen methods run."""
        if self.budget is None:
            return None
        stages = {st for m in self.method_list() for st in _STAGES_OF.get(m, ())}
        return self.budget * BUDGET_SHARES[stage] / sum(BUDGET_SHARES[st] for st in stages)

    def method_list(self) -> list[str]:
        names = [m.strip() for m in self.methods.split(",") if m.strip()]
        unknown = [m for m in names if m not in METHODS]
        if unknown or not names:
            raise AelabError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
        return names


@dataclass
class MethodResult:
    """One row of table 1b."""

    method: str
    val_acc: float
    n_val: int
    labels_per_class: str
    test_acc: float | None = None
    seconds: float = 0.0
    run: str | None = None  # the fine-tune run folder (None for the classical references)
    predictions: str | None = None  # its predictions.csv, when the data have a test folder

    @property
    def description(self) -> str:
        return METHODS[self.method][0]

    @property
    def uses_unlabelled(self) -> bool:
        return METHODS[self.method][1]


@dataclass
class StudyResult:
    """Table 1b, the method whose predictions are submitted, and why."""

    rows: list[MethodResult]
    chosen: str | None
    reason: str
    predictions: Path | None
    skipped: dict[str, str] = field(default_factory=dict)  # method -> reason it did not run


def _engine(cfg: ClassificationStudyConfig) -> dict:
    return cfg.engine().options()


def _labels_per_class(data: Path) -> str:
    from aelab.data import resolve_layout, scan_labelled

    lab = scan_labelled(resolve_layout(data).require("labelled"))
    counts = np.bincount(lab.labels, minlength=len(lab.classes))
    return str(int(counts[0])) if counts.min() == counts.max() else f"{int(counts.min())}-{int(counts.max())}"


def pretrain_denoise(cfg: ClassificationStudyConfig, data: Path, out: Path) -> Path:
    """The course report's denoising pretraining on the unlabelled images (shared by ``course`` and ``course-noaug``)."""
    from aelab.train.pretrain import PretrainConfig, pretrain

    return pretrain(PretrainConfig(data=str(data), preset=cfg.preset, channels=cfg.channels, image_size=cfg.image_size,
                                   epochs=cfg.pretrain_epochs, out=str(out), budget=cfg.minutes("pretrain"), **_engine(cfg)))


def _finetune_and_predict(name: str, cfg: ClassificationStudyConfig, data: Path, out: Path, **settings) -> MethodResult:
    from aelab.data import resolve_layout
    from aelab.train.finetune import FinetuneConfig, finetune_result
    from aelab.train.predict import PredictConfig, predict_result

    t0 = time.perf_counter()
    ft = FinetuneConfig(data=str(data), preset=cfg.preset, channels=cfg.channels, image_size=cfg.image_size,
                        val_fraction=cfg.val_fraction, out=str(out), budget=cfg.minutes(name), **settings, **_engine(cfg))
    trained = finetune_result(ft)
    result = MethodResult(name, trained.val_acc, trained.n_val, _labels_per_class(data), run=str(trained.run_dir))
    if resolve_layout(data).test is not None:
        pred = predict_result(PredictConfig(model=str(trained.run_dir), data=str(data), out=str(trained.run_dir / "predict"),
                                            **_engine(cfg)))
        result.test_acc = pred.metrics.get("accuracy")
        result.predictions = str(pred.predictions)
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


def _classical(cfg: ClassificationStudyConfig, data: Path, layout: RunLayout, name: str, baseline_fn) -> MethodResult:
    """A classical reference row: ``baseline_fn`` (the signature of `label_spreading_baseline`) on the
    decoded images at the preset's size, the same split as the networks; writes its ``predictions.csv``."""
    from aelab.data import Preprocessing, image_ids, load_images, read_labels_csv, resolve_layout, scan_labelled
    from aelab.models import preset_config
    from aelab.train.loaders import split_indices

    t0 = time.perf_counter()
    mc = preset_config(cfg.preset, image_size=cfg.image_size, in_channels=cfg.channels)
    prep = Preprocessing(image_size=mc.image_size, channels=mc.in_channels)
    lay = resolve_layout(data)
    lab = scan_labelled(lay.require("labelled"))
    images = load_images(lab.paths, prep.image_size, prep.channels, strict=cfg.strict)
    kept = {Path(p).resolve() for p in images.paths}
    labels = lab.labels[[Path(p).resolve() in kept for p in lab.paths]]
    unl = prep.load(lay.unlabelled, strict=cfg.strict).images if lay.unlabelled is not None else None
    test = prep.load(lay.test, strict=cfg.strict) if lay.test is not None else None
    train_idx, val_idx = split_indices(len(labels), cfg.val_fraction, cfg.seed, labels)
    res = baseline_fn(images.images, labels, train_idx, val_idx, unl, None if test is None else test.images, seed=cfg.seed)
    out = MethodResult(name, float(np.mean(res.val_pred == labels[val_idx])), int(len(val_idx)), _labels_per_class(data))
    if test is not None:
        folder = layout.stage(name)
        names = [lab.classes[p] for p in res.query_pred]
        write_csv(folder / "predictions.csv", ["id", "label"], zip(image_ids(test.paths), names))
        out.predictions = str(folder / "predictions.csv")
    if test is not None and lay.test_labels is not None:
        truth = read_labels_csv(lay.test_labels)
        pairs = [(truth[i], lab.classes[p]) for i, p in zip(image_ids(test.paths), res.query_pred) if i in truth]
        out.test_acc = float(np.mean([t == p for t, p in pairs])) if pairs else None
    out.seconds = round(time.perf_counter() - t0, 2)
    return out


def run_method(method: str, cfg: ClassificationStudyConfig, data: Path, layout: RunLayout,
               pretrained: Path | None = None) -> MethodResult:
    """Run one method of the table; ``pretrained`` is the denoising pretraining the course methods start from."""
    stage = layout.stage(method)
    if method == "label-spreading":
        from aelab.train.baselines import label_spreading_baseline

        return _classical(cfg, data, layout, method, label_spreading_baseline)
    if method == "kmeans-features":
        from functools import partial

        from aelab.train.baselines import kmeans_features_baseline

        _require_unlabelled(data, method)
        return _classical(cfg, data, layout, method, partial(kmeans_features_baseline, n_centroids=cfg.kmeans_features_centroids,
                                                             learner=cfg.kmeans_features_learner))
    if method in ("course", "course-noaug"):
        if pretrained is None:
            pretrained = pretrain_denoise(cfg, data, layout.stage("pretrain"))
        aug = cfg.course_augment if method == "course" else "none"
        return _finetune_and_predict(method, cfg, data, stage, method="course", init_from=str(pretrained),
                                     augment=aug, epochs=cfg.finetune_epochs)
    if method == "supervised":
        return _finetune_and_predict(method, cfg, data, stage, method="supervised", epochs=cfg.finetune_epochs,
                                     patience=cfg.finetune_epochs, augment=cfg.supervised_augment)
    if method == "fixmatch":
        _require_unlabelled(data, method)
        return _finetune_and_predict(method, cfg, data, stage, method="fixmatch", epochs=cfg.fixmatch_epochs,
                                     class_thresholds=cfg.fixmatch_class_thresholds)
    if method == "vicreg":
        _require_unlabelled(data, method)
        from aelab.train.pretrain import PretrainConfig, pretrain

        t0 = time.perf_counter()
        pre = pretrain(PretrainConfig(data=str(data), objective="vicreg", preset=cfg.preset, channels=cfg.channels,
                                      image_size=cfg.image_size, epochs=cfg.vicreg_epochs, batch_size=128,
                                      patience=cfg.vicreg_epochs, out=str(layout.stage("vicreg_pretrain")),
                                      budget=cfg.minutes("vicreg_pretrain"), **_engine(cfg)))
        res = _finetune_and_predict(method, cfg, data, stage, method="supervised", init_from=str(pre), epochs=cfg.finetune_epochs,
                                    patience=cfg.finetune_epochs, augment=cfg.supervised_augment)
        res.seconds = round(time.perf_counter() - t0, 2)
        return res
    raise AelabError(f"unknown method {method!r}")


def _require_unlabelled(data: Path, method: str) -> None:
    from aelab.data import resolve_layout

    if resolve_layout(data).unlabelled is None:
        raise NoUnlabelledImages(f"method {method} learns from unlabelled images, but {data} has no dev/unlabelled folder")


# The order of the methods in the benchmarks (benchmarks/README.md: FixMatch first on digits and on photos at
# every label budget measured), used when the hold-out cannot tell methods apart.
_PREFERENCE = ("fixmatch", "vicreg", "supervised", "course", "course-noaug", "kmeans-features", "label-spreading")


def _indistinguishable(a: MethodResult, b: MethodResult) -> bool:
    """Whether ``b``'s validation lead over ``a`` is within the hold-out's noise: less than two standard errors of
    the difference of two accuracies, ``2·sqrt(p(1−p)(1/n_a + 1/n_b))`` with ``p`` their mean (50 images at
    p = 0.4: 0.20; 500 at 0.95: 0.03)."""
    p = min(max((a.val_acc + b.val_acc) / 2, 0.02), 0.98)
    return b.val_acc - a.val_acc <= 2 * math.sqrt(p * (1 - p) * (1 / max(a.n_val, 1) + 1 / max(b.n_val, 1)))


def choose(rows: list[MethodResult]) -> tuple[MethodResult, str]:
    """The submitted method: the first in the benchmarks' order whose validation accuracy the best one's does
    not beat by more than the hold-out's noise (`_indistinguishable`); else the best on validation.

    A hold-out of a few labelled images per class cannot separate methods a few points apart, and the best
    of many epochs' validation accuracies is biased upwards; the benchmarks' order holds on average.
    """
    best = max(rows, key=lambda r: r.val_acc)
    rank = {m: i for i, m in enumerate(_PREFERENCE)}
    for r in sorted(rows, key=lambda r: rank.get(r.method, len(rank))):
        if _indistinguishable(r, best):
            if r is best or r.val_acc == best.val_acc:
                return r, (f"highest validation accuracy ({r.val_acc:.3f} on {r.n_val} held-out labelled images; "
                           "ties go to the method first in the benchmarks' order)")
            return r, (f"first in the benchmarks' order among the methods the hold-out cannot tell apart: "
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
    paths = [paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, min(512, len(paths))).astype(int))]
    kind = image_kind(load_images(paths, 32, cfg.channels, strict=False).images)
    return {"images": kind, "weak_augmentation": augmentation_for(kind, "weak"),
            "strong_augmentation": augmentation_for(kind, "strong"),
            "rule": f"colour channels differ by more than {COLOUR_THRESHOLD:g}/255 on average: photos (flipped left-right); "
                    "else grey images such as digits (never flipped)",
            "budget_minutes": cfg.budget, "budget_shares": {st: BUDGET_SHARES[st] for m in cfg.method_list()
                                                            for st in _STAGES_OF.get(m, ())}}


def summarize(rows: list[MethodResult], layout: RunLayout, skipped: dict[str, str] | None = None,
              settings: dict | None = None) -> StudyResult:
    """Write table 1b (``study1/methods.csv``), pick the submitted method and copy its ``predictions.csv``.

    ``settings`` (`study_settings`) goes into ``study1/chosen.json`` for the report."""

    def rel(path: str | None) -> str:
        if not path:
            return ""
        p = Path(path)
        return p.relative_to(layout.root).as_posix() if p.is_relative_to(layout.root) else str(p)

    table = [[r.method, r.description, r.uses_unlabelled, r.labels_per_class, r.val_acc, r.n_val,
              "" if r.test_acc is None else r.test_acc, r.seconds, rel(r.run), ""] for r in rows]
    table += [[m, METHODS[m][0], METHODS[m][1], "", "", "", "", "", "", f"not run: {why}"]
              for m, why in (skipped or {}).items() if m in METHODS]
    write_csv(layout.methods_csv, COLUMNS, table)
    candidates = [r for r in rows if r.predictions]
    if not candidates:
        reason = "no method wrote predictions (the data have no test folder)" if rows else "no method ran"
        write_json(layout.chosen_json, {"method": None, "reason": reason, "validation": VALIDATION, "settings": settings})
        return StudyResult(rows, None, reason, None, dict(skipped or {}))
    best, reason = choose(candidates)
    atomic_write_bytes(layout.predictions, Path(best.predictions).read_bytes())
    write_json(layout.chosen_json, {"method": best.method, "reason": reason, "val_acc": best.val_acc,
                                    "n_val": best.n_val, "validation": VALIDATION, "settings": settings})
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
        if method in ("course", "course-noaug") and pretrained is None:
            pretrained = pretrain_denoise(cfg, Path(data), layout.stage("pretrain"))
        try:
            rows.append(run_method(method, cfg, Path(data), layout, pretrained))
        except AelabError as exc:
            skipped[method] = str(exc)
            info(f"[study 1] {method} skipped: {exc}")
    return summarize(rows, layout, skipped, study_settings(cfg, Path(data)))


def as_row(result: MethodResult) -> dict:
    """A plain dict of a `MethodResult` (what ``stages.json`` keeps for a resumed run)."""
    return asdict(result)
