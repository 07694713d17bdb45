"""Cityscapes (gtFine), 19 train classes.

Layout under ``root``: ``leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png`` with labels
``gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png`` (values 0..18, 255) if that file
exists (it is preferred: it is what cityscapesScripts' createTrainIdLabelImgs writes), else
``{stem}_gtFine_labelIds.png`` (the 34 Cityscapes ids) mapped to train ids through a 256-entry
lookup table; ids that are not among the 19 classes map to 255 (ignore).
"""
import glob
import os

import numpy as np

from .base import FileSegmentationDataset

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
# Cityscapes label id of each train id, in train-id order (cityscapesScripts' labels.py)
TRAIN_CLASS_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def label_id_to_train_id_table() -> np.ndarray:
    """uint8[256]: Cityscapes label id -> train id (255 for the ids outside the 19 classes)."""
    table = np.full(256, 255, dtype=np.uint8)
    table[list(TRAIN_CLASS_LABEL_IDS)] = np.arange(len(TRAIN_CLASS_LABEL_IDS), dtype=np.uint8)
    return table


LABEL_ID_TO_TRAIN_ID = label_id_to_train_id_table()
IMAGE_SUFFIX = "_leftImg8bit.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"


class Cityscapes(FileSegmentationDataset):
    """Cityscapes ``split`` (train/val/test) under ``root``; see the module doc for the layout."""

    num_classes = len(CITYSCAPES_CLASSES)
    class_names = CITYSCAPES_CLASSES

    def __init__(self, root: str, split: str, **options):
        super().__init__(split, **options)
        image_dir = os.path.join(root, "leftImg8bit", split)
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"cityscapes: no image folder {image_dir} (expected root/leftImg8bit/{split}/)")
        pattern = os.path.join(image_dir, "*", "*" + IMAGE_SUFFIX)
        images = sorted(glob.glob(pattern))
        if not images:
            raise ValueError(f"cityscapes: split {split!r} is empty: nothing matches {pattern}")
        self.samples = [(image, self._label_path(root, split, image)) for image in images]

    @staticmethod
    def _label_path(root: str, split: str, image_path: str) -> str:
        city = os.path.basename(os.path.dirname(image_path))
        stem = os.path.basename(image_path)[: -len(IMAGE_SUFFIX)]
        label_dir = os.path.join(root, "gtFine", split, city)
        train_ids = os.path.join(label_dir, stem + TRAIN_IDS_SUFFIX)
        label_ids = os.path.join(label_dir, stem + LABEL_IDS_SUFFIX)
        if os.path.isfile(train_ids):
            return train_ids
        if os.path.isfile(label_ids):
            return label_ids
        raise FileNotFoundError(f"label {label_ids}: no such file (nor {train_ids}) for image {image_path}")

    def map_labels(self, label: np.ndarray, path: str) -> np.ndarray:
        if not path.endswith(LABEL_IDS_SUFFIX):
            return label
        if label.min() < 0 or label.max() > 255:
            raise ValueError(
                f"label {path}: Cityscapes label ids must lie in [0, 255], got [{label.min()}, {label.max()}]"
            )
        return LABEL_ID_TO_TRAIN_ID[label]
