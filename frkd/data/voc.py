"""PASCAL VOC 2012 segmentation, 21 classes (background + 20), 255 ignore (object boundaries).

``root`` is the ``VOC2012`` folder itself (``VOCdevkit/VOC2012``) or a folder holding
``VOC2012/`` or ``VOCdevkit/VOC2012/``. Split lists are ``ImageSets/Segmentation/{split}.txt``:
one image id per line (``2007_000032``), or DeepLab-style lines of two paths relative to the
root (``/JPEGImages/x.jpg /SegmentationClassAug/x.png``). Images are ``JPEGImages/{id}.jpg``;
labels ``SegmentationClassAug/{id}.png`` (single-channel index PNGs of the augmented set) when
present, else ``SegmentationClass/{id}.png`` (palette "P" PNGs, whose indices are the classes).
An RGB label PNG is an error: convert colours to indices first.
"""
import os

from .base import FileSegmentationDataset, require_files

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
LABEL_DIRS = ("SegmentationClassAug", "SegmentationClass")


def find_voc_root(root: str) -> str:
    """The folder holding JPEGImages/ among root, root/VOC2012, root/VOCdevkit/VOC2012."""
    candidates = [root, os.path.join(root, "VOC2012"), os.path.join(root, "VOCdevkit", "VOC2012")]
    for candidate in candidates:
        if os.path.isdir(os.path.join(candidate, "JPEGImages")):
            return candidate
    raise FileNotFoundError(f"voc: no JPEGImages/ folder in any of {candidates}")


class VOC(FileSegmentationDataset):
    """VOC 2012 ``split`` (a list in ImageSets/Segmentation/); see the module doc for the layout."""

    num_classes = len(VOC_CLASSES)
    class_names = VOC_CLASSES

    def __init__(self, root: str, split: str, **options):
        super().__init__(split, **options)
        self.root = find_voc_root(root)
        list_path = os.path.join(self.root, "ImageSets", "Segmentation", f"{split}.txt")
        if not os.path.isfile(list_path):
            raise FileNotFoundError(f"voc: split list {list_path}: no such file")
        with open(list_path) as f:
            lines = [line.split() for line in f if line.strip()]
        if not lines:
            raise ValueError(f"voc: split list {list_path} is empty")
        self.samples = [self._sample(fields, list_path) for fields in lines]
        require_files((image for image, _ in self.samples), "image")
        require_files((label for _, label in self.samples), "label")

    def _sample(self, fields: list[str], list_path: str) -> tuple[str, str]:
        if len(fields) == 2:
            return tuple(os.path.join(self.root, field.lstrip("/")) for field in fields)
        if len(fields) != 1:
            raise ValueError(f"voc: split list {list_path}: expected 'id' or 'image label' per line, got {fields}")
        image_id = fields[0]
        labels = [os.path.join(self.root, folder, image_id + ".png") for folder in LABEL_DIRS]
        label = next((path for path in labels if os.path.isfile(path)), labels[-1])
        return os.path.join(self.root, "JPEGImages", image_id + ".jpg"), label
