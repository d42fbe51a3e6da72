"""Course-layout folders of natural photos drawn from the CIFAR-10 training split (Krizhevsky 2009).

The shared archive ``../shared/data/cifar10-train.tar.gz`` holds ``train/<class>/NNNNN.jpg``
(5,000 32x32 JPEGs per class). `draw` writes, for one seed, the layout `aelab run --data` reads:

    ROOT/dev/labelled/<class>/*.jpg    ``labelled`` photos per class
    ROOT/dev/unlabelled/*.jpg          ``unlabelled`` photos, drawn from all classes (ids shuffled)
    ROOT/test/*.jpg + test_labels.csv  ``test`` photos, equal numbers per class
    ROOT/anomaly/normal|anomalous      optional (``anomaly``): one class's photos and as many of the others

The draws of different seeds differ; within a seed the parts are disjoint. Nothing of the archive is
kept in the repository: the archive (or an extracted copy, ``--source``) is read where it lies.

    python benchmarks/natural_data.py OUT --labelled 25 --unlabelled 5000 --test 2000 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import tarfile
from pathlib import Path

ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-train.tar.gz"


def _extracted(source: Path, cache: Path) -> Path:
    """A folder holding ``<class>/*.jpg``: ``source`` itself, or the archive extracted once into ``cache``."""
    if source.is_dir():
        return source / "train" if (source / "train").is_dir() else source
    target = cache / "cifar10"
    if not (target / "train").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(source) as tar:
            tar.extractall(target, filter="data")
    return target / "train"


def class_files(source: Path = ARCHIVE, cache: Path = Path("benchmarks/_work")) -> dict[str, list[Path]]:
    root = _extracted(Path(source), Path(cache))
    return {d.name: sorted(d.glob("*.jpg")) for d in sorted(root.iterdir()) if d.is_dir()}


def draw(out: Path, labelled: int = 25, unlabelled: int = 5000, test: int = 2000, seed: int = 0,
         anomaly_class: str | None = None, anomaly: int = 0, source: Path = ARCHIVE,
         cache: Path = Path("benchmarks/_work")) -> Path:
    """Write one course-layout draw to ``out`` (skipped when ``out`` already holds it) and return ``out``."""
    out = Path(out)
    if (out / "test_labels.csv").exists():
        return out
    files = class_files(source, cache)
    rng = random.Random(seed)
    pools = {c: rng.sample(fs, len(fs)) for c, fs in files.items()}
    k = len(pools)
    test_rows, rest = [], []
    for c, pool in pools.items():
        dst = out / "dev" / "labelled" / c
        dst.mkdir(parents=True, exist_ok=True)
        for f in pool[:labelled]:
            shutil.copyfile(f, dst / f.name)
        test_rows += [(f, c) for f in pool[labelled:labelled + test // k]]
        rest += [(f, c) for f in pool[labelled + test // k:]]
    rng.shuffle(test_rows)
    rng.shuffle(rest)
    (out / "test").mkdir(parents=True)
    with open(out / "test_labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "label"])
        for i, (f, c) in enumerate(test_rows):
            shutil.copyfile(f, out / "test" / f"{i}.jpg")
            w.writerow([i, c])
    (out / "dev" / "unlabelled").mkdir(parents=True)
    for i, (f, _) in enumerate(rest[:unlabelled]):
        shutil.copyfile(f, out / "dev" / "unlabelled" / f"{i}.jpg")
    if anomaly_class is not None and anomaly > 0:
        left = rest[unlabelled:]
        normal = [f for f, c in left if c == anomaly_class][:anomaly]
        other = [f for f, c in left if c != anomaly_class][:anomaly]
        for name, group in (("normal", normal), ("anomalous", other)):
            (out / "anomaly" / name).mkdir(parents=True)
            for i, f in enumerate(group):
                shutil.copyfile(f, out / "anomaly" / name / f"{i}.jpg")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--labelled", type=int, default=25, help="labelled photos per class")
    p.add_argument("--unlabelled", type=int, default=5000)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--anomaly-class", default=None,
                   help="a class name: anomaly/normal from it, anomaly/anomalous from the others")
    p.add_argument("--anomaly", type=int, default=0, help="photos in each of anomaly/normal and anomaly/anomalous")
    p.add_argument("--source", type=Path, default=ARCHIVE, help="the archive, or a folder holding train/<class>/*.jpg")
    a = p.parse_args(argv)
    draw(a.out, a.labelled, a.unlabelled, a.test, a.seed, a.anomaly_class, a.anomaly, a.source)
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
