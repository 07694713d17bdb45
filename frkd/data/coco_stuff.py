"""COCO-Stuff-164k, 182 class ids as CIRKD counts them (``dataset/coco_stuff_164k.py``).

Layout under ``root``: ``images/{train2017,val2017}/*.jpg`` and
``annotations/{train2017,val2017}/<stem>.png`` (the stuffthingmaps PNGs: values 0…181 are the
classes, the COCO-Stuff label id − 1; 255 is ignore). Split ``train`` reads ``train2017``, ``val``
reads ``val2017``. CIRKD's list files are not needed: images pair with labels by file name.
Ids that COCO leaves unused (11 thing ids) are classes that never occur, as in CIRKD.
"""
import os

from .ade20k import find_root
from .base import FileSegmentationDataset, paired_files

SPLIT_FOLDERS = {"train": "train2017", "val": "val2017"}


class CocoStuff164k(FileSegmentationDataset):
    """COCO-Stuff-164k ``split`` (train/val); see the module doc for the layout."""

    num_classes = 182
    class_names = tuple(f"cocostuff{k + 1}" for k in range(182))  # the COCO-Stuff label id of each class

    def __init__(self, root: str, split: str, **options):
        super().__init__(split, **options)
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"coco_stuff_164k: split must be one of {', '.join(SPLIT_FOLDERS)}, got {split!r}")
        base = find_root(root, "annotations", "coco_stuff_164k", "coco_stuff_164k")
        folder = SPLIT_FOLDERS[split]
        self.samples = paired_files(os.path.join(base, "images", folder), os.path.join(base, "annotations", folder),
                                    (".jpg",), ".png", "coco_stuff_164k")
