"""A user's own dataset: ``DIR/images/{split}/*`` with ``DIR/masks/{split}/<stem>.png`` class-index masks.

Masks are single-channel PNGs (grayscale, palette or 16-bit) whose values are class ids
0…num_classes−1 or ``ignore_label`` (0…255, default 255); any other value is an error naming the
mask. An optional ``DIR/classes.txt`` gives the class names, one a line (exactly num_classes
lines); without it the classes are named by their ids.
"""
import os

from .base import FileSegmentationDataset, paired_files
from .transforms import IGNORE_INDEX

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_class_names(path: str, num_classes: int) -> tuple[str, ...]:
    """The num_classes names in ``path`` (one a line, blank lines skipped) or ValueError naming it."""
    with open(path) as f:
        names = tuple(line.strip() for line in f if line.strip())
    if len(names) != num_classes:
        raise ValueError(f"classes file {path}: expected {num_classes} names (one a line) for --num-classes "
                         f"{num_classes}, found {len(names)}")
    return names


class FolderDataset(FileSegmentationDataset):
    """``split`` of a folder dataset (module doc); ``num_classes`` is required."""

    def __init__(self, root: str, split: str, *, num_classes: int, ignore_label: int = IGNORE_INDEX, **options):
        super().__init__(split, **options)
        if not isinstance(num_classes, int) or not 1 <= num_classes <= 255:
            raise ValueError(f"folder: num_classes must be an int in 1..255, got {num_classes!r}")
        if not isinstance(ignore_label, int) or not num_classes <= ignore_label <= 255:
            raise ValueError(f"folder: ignore_label must be an int in {num_classes}..255 (outside the class ids, "
                             f"within 8-bit masks), got {ignore_label!r}")
        self.num_classes, self.ignore_label = num_classes, ignore_label
        names = os.path.join(root, "classes.txt")
        self.class_names = (read_class_names(names, num_classes) if os.path.isfile(names)
                            else tuple(str(k) for k in range(num_classes)))
        self.samples = paired_files(os.path.join(root, "images", split), os.path.join(root, "masks", split),
                                    IMAGE_EXTENSIONS, ".png", "folder")
