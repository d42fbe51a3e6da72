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
from aelab.data.preprocess import Preprocessing

__all__ = [
    "AUGMENTATION_PRESETS",
    "BatchAugmentation",
    "DataLayout",
    "IMAGE_EXTENSIONS",
    "ImageSet",
    "LabelledFiles",
    "Preprocessing",
    "build_augmentation",
    "decode_image",
    "default_cache_dir",
    "image_ids",
    "list_images",
    "load_images",
    "make_demo_data",
    "natural_key",
    "read_labels_csv",
    "resolve_layout",
    "scan_labelled",
]
