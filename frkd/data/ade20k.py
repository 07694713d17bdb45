"""ADE20K (SceneParsing, ADEChallengeData2016), 150 classes, read as CIRKD's ``dataset/ade20k.py``.

Layout: ``root`` is ``ADEChallengeData2016/`` (or a folder holding it) with
``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/<stem>.png``;
split ``train`` reads ``training``, ``val`` reads ``validation``. A label is value − 1: 0 (other)
becomes 255 (ignore), 1…150 become classes 0…149.
"""
import os

import numpy as np

from .base import FileSegmentationDataset, paired_files
from .transforms import IGNORE_INDEX

FOLDER = "ADEChallengeData2016"
SPLIT_FOLDERS = {"train": "training", "val": "validation"}


def find_root(root: str, marker: str, nested: str, dataset: str) -> str:
    """``root`` when it holds ``marker`` (a folder), else ``root/nested`` when that does."""
    for candidate in (root, os.path.join(root, nested)):
        if os.path.isdir(os.path.join(candidate, marker)):
            return candidate
    raise FileNotFoundError(f"{dataset}: no {marker}/ folder in {root} nor in {os.path.join(root, nested)}")


class ADE20K(FileSegmentationDataset):
    """ADE20K ``split`` (train/val); see the module doc for the layout and the label shift."""

    num_classes = 150
    class_names = tuple(f"ade{k + 1}" for k in range(150))  # the ADE20K object index of each class

    def __init__(self, root: str, split: str, **options):
        super().__init__(split, **options)
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"ade20k: split must be one of {', '.join(SPLIT_FOLDERS)}, got {split!r}")
        base = find_root(root, "images", FOLDER, "ade20k")
        folder = SPLIT_FOLDERS[split]
        self.samples = paired_files(os.path.join(base, "images", folder), os.path.join(base, "annotations", folder),
                                    (".jpg",), ".png", "ade20k")

    def map_labels(self, label: np.ndarray, path: str) -> np.ndarray:
        shifted = label.astype(np.int32) - 1
        shifted[shifted < 0] = IGNORE_INDEX
        return shifted
