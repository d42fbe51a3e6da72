"""Image data: folder layouts, decoding with a disk cache, preprocessing, augmentation, demo data."""

from aelab.data.augment import AUGMENTATION_PRESETS, BatchAugmentation, build_augmentation
from aelab.data.decode import ImageSet, decode_image, default_cache_dir, load_images
from aelab.data.demo import make_demo_data
from aelab.data.folders import (
    IMAGE_EXTENSIONS,
    DataLayout,
    LabelledFiles,
    image_ids,
    list_images,
    natural_key,
    read_labels_csv,
    resolve_layout,
    scan_labelled,
)
from aelab.data.mvtec import (
    DEFECT_KINDS,
    MVTecData,
    is_mvtec,
    load_masks,
    make_mvtec_like,
    paint_defects,
    read_mvtec,
)
from aelab.data.preprocess import Preprocessing
from aelab.data.rows import RowReader

__all__ = [
    "AUGMENTATION_PRESETS",
    "DEFECT_KINDS",
    "MVTecData",
    "BatchAugmentation",
    "DataLayout",
    "IMAGE_EXTENSIONS",
    "ImageSet",
    "LabelledFiles",
    "Preprocessing",
    "RowReader",
    "build_augmentation",
    "decode_image",
    "default_cache_dir",
    "image_ids",
    "is_mvtec",
    "list_images",
    "load_images",
    "load_masks",
    "make_demo_data",
    "make_mvtec_like",
    "natural_key",
    "paint_defects",
    "read_labels_csv",
    "read_mvtec",
    "resolve_layout",
    "scan_labelled",
]
