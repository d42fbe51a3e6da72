"""Stage 3: predict labels for a test folder, and embed images for the clustering study."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aelab.data.folders import labels_for, match_labels, read_labels_csv
from aelab.errors import AelabError
from aelab.progress import info
from aelab.runs import atomic_save_npy, save_config, write_csv, write_json
from aelab.train.checkpoint import load_model
from aelab.train.engine import shared_run_dir
from aelab.train.inference import launch_inference, load_images_once, sharded_forward
from aelab.train.options import RunOptions, require, resolve_sources

__all__ = ["EmbedConfig", "EmbedResult", "PredictConfig", "PredictResult", "embed", "embed_result", "predict",
           "predict_result"]


@dataclass
class PredictConfig(RunOptions):
    """Prediction settings.

    Attributes:
        model: fine-tuned checkpoint, or a finetune run folder (its best.ckpt).
        data: root folder in the course layout (uses ROOT/test and ROOT/test_labels.csv if present).
        images: folder of images to label (overrides --data).
        labels: CSV with columns id,label for those images; when given, accuracy is printed and saved.
        recursive: look for images in subfolders too.
        probabilities: also write probabilities.csv (id and one column per class).
        batch_size: images per forward pass.
    """

    model: str | None = None
    data: str | None = None
    images: str | None = None
    labels: str | None = None
    recursive: bool = False
    probabilities: bool = False
    batch_size: int = 256


def _read_labels(path: Path) -> dict[str, str]:
    from aelab.data import read_labels_csv

    return read_labels_csv(path)


@dataclass
class PredictResult:
    """What `predict` wrote: the run folder and ``metrics.json``'s values (``accuracy`` when labels are known)."""

    run_dir: Path
    metrics: dict

    @property
    def predictions(self) -> Path:
        return self.run_dir / "predictions.csv"


def predict(cfg: PredictConfig) -> Path:
    """Write ``predictions.csv`` (``id,label``) into a run folder; see `predict_result`. Returns the folder."""
    return predict_result(cfg).run_dir


def predict_result(cfg: PredictConfig) -> PredictResult:
    """Write ``predictions.csv`` (``id,label``, natural order of the file names) into a run folder.

    ``id`` is the file stem when every stem is an integer, else the file name; ``label`` is the
    class name from the checkpoint. Returns the run folder.
    """
    from aelab.data import Preprocessing, image_ids, list_images

    if cfg.model is None:
        raise AelabError("no model: pass --model FINETUNE_RUN or a checkpoint file")
    model, ckpt = load_model(cfg.model)
    classes = ckpt.get("classes")
    if not classes or model.head is None:
        raise AelabError(f"{cfg.model} has no classifier head: predict needs a fine-tuned checkpoint")
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    src = resolve_sources(cfg.data, test=cfg.images, test_labels=cfg.labels)
    if cfg.images is not None and cfg.labels is None:
        src.test_labels = None  # --data's labels belong to --data's test folder, not to --images
    folder = require(src.test, "test", "--images")
    paths = list_images(folder, recursive=cfg.recursive)
    if src.test_labels is not None:
        read_labels_csv(src.test_labels)  # a missing or unreadable --labels file is an error before any folder exists
    # Under --devices N, the N processes start here.
    fabric = launch_inference(cfg.device, cfg.devices, getattr(cfg, "num_nodes", 1))
    run_dir = shared_run_dir(fabric, cfg.out, "predict")
    data = load_images_once(fabric, paths, prep.image_size, prep.channels, strict=cfg.strict)
    ids = image_ids(data.paths)
    result = sharded_forward(fabric, model, prep, data.images, batch_size=cfg.batch_size, want=("logits",))
    if fabric.global_rank != 0:
        return PredictResult(run_dir, {})  # only rank 0 writes
    truth = labels_for(data.paths, src.test_labels, ids) if src.test_labels is not None else None
    save_config(run_dir, cfg)
    logits = result.logits
    pred = logits.argmax(1)
    labels = [classes[i] for i in pred]
    write_csv(run_dir / "predictions.csv", ["id", "label"], zip(ids, labels))
    if cfg.probabilities:
        z = logits - logits.max(1, keepdims=True)
        prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        rows = ([i, *(round(float(v), 6) for v in p)] for i, p in zip(ids, prob))
        write_csv(run_dir / "probabilities.csv", ["id", *classes], rows)
    metrics: dict = {"n_images": len(ids), "n_skipped": len(data.skipped), "model": str(cfg.model)}
    if truth is not None:
        _warn_unknown_classes(truth, ids, classes, src.test_labels)
        known = [(t, p) for t, p in zip(truth, labels) if t is not None]
        if known:
            acc = float(np.mean([t == p for t, p in known]))
            metrics.update(accuracy=acc, n_labelled=len(known))
            info(f"[predict] accuracy {acc:.4f} on {len(known)} labelled test images")
    write_json(run_dir / "metrics.json", metrics)
    info(f"[predict] {len(ids)} predictions -> {run_dir / 'predictions.csv'}")
    return PredictResult(run_dir, metrics)


def _warn_unknown_classes(truth: list, ids: list[str], classes: list[str], labels_csv) -> None:
    """Warn when test labels name classes the model does not know: those images can only count as errors."""
    import warnings

    unknown = [(i, t) for i, t in zip(ids, truth) if t is not None and t not in classes]
    if unknown:
        names = sorted({t for _, t in unknown})
        warnings.warn(f"{len(unknown)} test label(s) in {labels_csv} name a class the model does not know "
                      f"({', '.join(map(repr, names[:5]))}{' ...' if len(names) > 5 else ''}; its classes: "
                      f"{', '.join(map(repr, classes[:10]))}{' ...' if len(classes) > 10 else ''}): ids "
                      f"{', '.join(i for i, _ in unknown[:10])}{' ...' if len(unknown) > 10 else ''} count as errors",
                      stacklevel=2)


@dataclass
class EmbedConfig(RunOptions):
    """Embedding settings.

    Attributes:
        model: checkpoint or run folder (pretrain or finetune).
        data: root folder in the course layout: embeds the labelled images and the test images (labels from
            ROOT/test_labels.csv when present).
        images: a folder of images to embed instead (no labels).
        labelled: a folder of class subfolders to embed instead (labels from the folder names).
        recursive: look for images in subfolders of --images too.
        pooling: flatten (the U-Net's bottleneck map flattened, as its classifier head sees it) or mean (averaged
            over its spatial grid); a cnn's embedding is already the average of its last map (both give it).
        batch_size: images per forward pass.
    """

    model: str | None = None
    data: str | None = None
    images: str | None = None
    labelled: str | None = None
    recursive: bool = False
    pooling: str = "flatten"
    batch_size: int = 256


def _embed_groups(cfg: EmbedConfig) -> list[tuple[list[Path], list[str], Path]]:
    """The image groups to embed: ``(paths, labels, base folder)`` (labelled images, then test)."""
    from aelab.data import list_images, scan_labelled

    if cfg.images is not None:
        paths = list_images(Path(cfg.images), recursive=cfg.recursive)
        return [(paths, [""] * len(paths), Path(cfg.images))]
    groups = []
    src = resolve_sources(cfg.data, labelled=cfg.labelled)
    lab = scan_labelled(require(src.labelled, "labelled", "--labelled"))
    groups.append((lab.paths, [lab.classes[i] for i in lab.labels], src.root or Path(src.labelled)))
    if cfg.labelled is None and src.test is not None:
        paths = list_images(src.test)
        truth = _read_labels(src.test_labels) if src.test_labels and Path(src.test_labels).is_file() else {}
        groups.append((paths, [t or "" for t in match_labels(paths, truth)], src.root))
    return groups


@dataclass
class EmbedResult:
    """What `embed_result` wrote: the run folder and, on rank 0, the embeddings with their file names and labels."""

    run_dir: Path
    embeddings: np.ndarray | None = None
    names: list[str] | None = None
    labels: list[str] | None = None


def embed(cfg: EmbedConfig) -> Path:
    """Write ``embeddings.npy`` ``(N, D)`` float32 and ``embeddings.csv`` (``filename,label``)."""
    return embed_result(cfg).run_dir


def embed_result(cfg: EmbedConfig) -> EmbedResult:
    """`embed`, also returning the embeddings (so a caller does not read back the files just written)."""
    from aelab.data import Preprocessing

    if cfg.model is None:
        raise AelabError("no model: pass --model RUN or a checkpoint file")
    if cfg.pooling not in ("flatten", "mean"):
        raise AelabError(f"pooling must be flatten or mean, got {cfg.pooling!r}")
    model, ckpt = load_model(cfg.model)
    prep = Preprocessing.from_dict(ckpt["preprocessing"])
    groups = _embed_groups(cfg)
    # Under --devices N, the N processes start here.
    fabric = launch_inference(cfg.device, cfg.devices, getattr(cfg, "num_nodes", 1))
    run_dir = shared_run_dir(fabric, cfg.out, "embed")
    names, labels, chunks = [], [], []
    for paths, labs, base in groups:
        data = load_images_once(fabric, paths, prep.image_size, prep.channels, strict=cfg.strict)
        lab_of = {Path(p).resolve(): lab for p, lab in zip(paths, labs)}
        base = Path(base).resolve()
        for p in map(lambda q: Path(q).resolve(), data.paths):
            names.append(p.relative_to(base).as_posix() if p.is_relative_to(base) else str(p))
            labels.append(lab_of[p])
        res = sharded_forward(fabric, model, prep, data.images, batch_size=cfg.batch_size, want=("embedding",),
                              pooling=cfg.pooling)
        chunks.append(res.embedding)
    if fabric.global_rank != 0:
        return EmbedResult(run_dir)  # only rank 0 writes
    emb = np.concatenate(chunks).astype(np.float32)
    save_config(run_dir, cfg)
    atomic_save_npy(run_dir / "embeddings.npy", emb)
    write_csv(run_dir / "embeddings.csv", ["filename", "label"], zip(names, labels))
    info(f"[embed] {emb.shape[0]} embeddings of dimension {emb.shape[1]} -> {run_dir}")
    return EmbedResult(run_dir, emb, names, labels)
