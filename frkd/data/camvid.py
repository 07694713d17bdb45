"""CamVid in the SegNet layout, 11 classes, read as CIRKD's ``dataset/camvid.py``.

Layout under ``root`` (``CamVid/``): ``{split}/*.png`` images and ``{split}annot/<name>.png``
labels for split ``train``, ``val`` or ``test``; label values 0…10 are the classes and 11 (void)
is ignore (mapped to 255). CIRKD's list files are not needed: images pair with labels by name.
"""
import os

import numpy as np

from .base import FileSegmentationDataset, paired_files
from .transforms import IGNORE_INDEX

CAMVID_CLASSES = ("sky", "building", "pole", "road", "sidewalk", "tree", "sign symbol", "fence", "car",
                  "pedestrian", "bicyclist")
VOID = 11
SPLITS = ("train", "val", "test")


class CamVid(FileSegmentationDataset):
    """CamVid ``split`` (train/val/test); see the module doc for the layout."""

    num_classes = len(CAMVID_CLASSES)
    class_names = CAMVID_CLASSES

    def __init__(self, root: str, split: str, **options):
        super().__init__(split, **options)
        if split not in SPLITS:
            raise ValueError(f"camvid: split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.samples = paired_files(os.path.join(root, split), os.path.join(root, split + "annot"),
                                    (".png",), ".png", "camvid")

    def map_labels(self, label: np.ndarray, path: str) -> np.ndarray:
        return np.where(label == VOID, IGNORE_INDEX, label)
