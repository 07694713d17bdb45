"""Datasets of the trainer: ``synthetic`` (generated, the default), ``cityscapes``, ``voc``, ``ade20k``,
``coco_stuff_164k``, ``camvid`` and ``folder`` (a user's own; see ``frkd.data.folder``).

``build_dataset(name, root, split, *, crop_size, train, seed=0, **kw)`` returns a Dataset of
(image float32 3×H×W ImageNet-normalised, label int64 H×W with 255 = ignore), with attributes
``num_classes`` and ``class_names``. ``crop_size`` is an int or (H, W); ``train=True`` applies
random scale 0.5–2.0, pad (label 255), random crop to ``crop_size`` and h-flip; otherwise the
full image is returned (``resize=(H, W)`` to resize it). Augmentation seeding and
``set_epoch``: see ``frkd.data.base``. Extra kw per dataset: synthetic takes ``num_classes``,
``length``, ``image_size``; folder takes ``num_classes`` (required) and ``ignore_label`` (default 255).
"""
from .ade20k import ADE20K
from .base import SegmentationDataset
from .camvid import CamVid
from .cityscapes import Cityscapes
from .coco_stuff import CocoStuff164k
from .folder import FolderDataset
from .synthetic import SyntheticSegmentation
from .transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from .voc import VOC

DATASETS = {"synthetic": SyntheticSegmentation, "cityscapes": Cityscapes, "voc": VOC, "ade20k": ADE20K,
            "coco_stuff_164k": CocoStuff164k, "camvid": CamVid, "folder": FolderDataset}

__all__ = ["DATASETS", "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "SegmentationDataset", "build_dataset"]


def build_dataset(name: str, root, split: str, *, crop_size, train: bool, seed: int = 0, **kw) -> SegmentationDataset:
    """Build dataset ``name`` (a key of ``DATASETS``; see the module doc)."""
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {sorted(DATASETS)}, got {name!r}")
    if name != "synthetic" and not root:
        raise ValueError(f"dataset {name!r}: a root folder is required, got {root!r}")
    return DATASETS[name](root, split, crop_size=crop_size, train=train, seed=seed, **kw)
