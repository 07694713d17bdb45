"""Common dataset machinery: size arguments, per-sample seeding, file loading with clear errors.

Augmentation randomness (train=True) comes from one ``torch.Generator`` per sample:
- after ``dataset.set_epoch(e)``, its seed is a function of (seed, e, index) alone, so a run is
  reproducible whatever the number of DataLoader workers or the order of loading, and an exact
  resume only needs the epoch (the engine should call ``set_epoch`` every epoch, before
  creating the DataLoader iterator; with ``persistent_workers`` it does not reach the workers);
- otherwise its seed is (seed, index, a draw from torch's global RNG). DataLoader seeds each
  worker's global RNG with base_seed + worker_id (base_seed drawn from the main process), so
  ``torch.manual_seed`` makes runs reproducible for a fixed number of workers, and every epoch
  sees new augmentations.
"""
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .transforms import IGNORE_INDEX, random_scale_crop_flip, val_transform

LABEL_MODES = ("L", "P", "I", "I;16")


def as_size(value, name: str) -> tuple[int, int] | None:
    """int or (H, W) -> (H, W) of positive ints; None stays None."""
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name}: expected a positive int or (H, W) pair of positive ints, got {value!r}")
    return pair


def check_label_values(label: np.ndarray, num_classes: int, path: str, ignore_label: int = IGNORE_INDEX) -> None:
    """Raise naming ``path`` when a value is outside [0, num_classes) ∪ {ignore_label}."""
    bad = ((label < 0) | (label >= num_classes)) & (label != ignore_label)
    if bad.any():
        values = np.unique(label[bad])
        shown = values[:10].tolist()
        raise ValueError(
            f"label {path}: values {shown}{' ...' if len(values) > 10 else ''} are outside "
            f"[0, {num_classes}) and not {ignore_label} (ignore)"
        )


def open_image(path: str, role: str) -> Image.Image:
    """Open and decode ``path`` fully, naming it (and its ``role``: image/label) on failure."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{role} {path}: no such file")
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{role} {path}: cannot decode it ({error})") from error


def read_label_array(path: str) -> np.ndarray:
    """Single-channel label PNG (index "L"/"P", or 16-bit) -> H×W integer array."""
    image = open_image(path, "label")
    if image.mode not in LABEL_MODES:
        raise ValueError(
            f"label {path}: mode {image.mode!r} is not a single-channel index image {LABEL_MODES}; "
            "colour label PNGs must be converted to class indices (palette or grayscale PNG)"
        )
    return np.array(image)


class SegmentationDataset(Dataset):
    """Base: ``__getitem__(i)`` -> (image float32 3×H×W normalised, label int64 H×W, 255 ignore).

    Subclasses set ``num_classes``, ``class_names`` and implement ``__len__`` and
    ``load_pair(index) -> (PIL RGB image, uint8 H×W label array)``. Train: random scale
    0.5–2.0, pad (label ``ignore_label``), random crop to ``crop_size``, h-flip. Val: the full
    image, or resized to ``resize`` (H, W).
    """

    num_classes: int
    class_names: tuple[str, ...]
    ignore_label: int = IGNORE_INDEX  # the label value of ignored pixels in the samples (0..255)

    def __init__(self, split: str, *, crop_size, train: bool, seed: int = 0, resize=None):
        self.split = split
        self.crop_size = as_size(crop_size, "crop_size")
        self.resize = as_size(resize, "resize")
        self.train = bool(train)
        if self.train and self.crop_size is None:
            raise ValueError("crop_size: training needs a crop size (int or (H, W)), got None")
        self.seed = int(seed)
        self.epoch = None

    def set_epoch(self, epoch: int) -> None:
        """Make augmentations a function of (seed, epoch, index) (see the module doc)."""
        self.epoch = int(epoch)

    def sample_generator(self, index: int) -> torch.Generator:
        """The torch.Generator that drives sample ``index``'s augmentation."""
        if self.epoch is not None:
            key = [self.seed, self.epoch, index]
        else:
            key = [self.seed, index, int(torch.randint(0, 2**62, ()).item()), 1]
        seed = int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0])
        return torch.Generator().manual_seed(seed)

    def load_pair(self, index: int) -> tuple[Image.Image, np.ndarray]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        image, label = self.load_pair(index)
        label_image = Image.fromarray(label.astype(np.uint8))
        if self.train:
            return random_scale_crop_flip(image, label_image, self.crop_size, self.sample_generator(index),
                                          ignore_label=self.ignore_label)
        return val_transform(image, label_image, self.resize)


class FileSegmentationDataset(SegmentationDataset):
    """A dataset of (image path, label path) pairs in ``self.samples``; ``map_labels`` converts raw labels."""

    samples: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.samples)

    def map_labels(self, label: np.ndarray, path: str) -> np.ndarray:
        """Raw label array -> class indices (identity by default)."""
        return label

    def load_pair(self, index: int) -> tuple[Image.Image, np.ndarray]:
        image_path, label_path = self.samples[index]
        image = open_image(image_path, "image").convert("RGB")
        label = self.map_labels(read_label_array(label_path), label_path)
        if label.shape != (image.height, image.width):
            raise ValueError(
                f"label {label_path} is {label.shape[1]}×{label.shape[0]} (W×H) but its image "
                f"{image_path} is {image.width}×{image.height}"
            )
        check_label_values(label, self.num_classes, label_path, self.ignore_label)
        return image, label


def require_files(paths, what: str) -> None:
    """Raise FileNotFoundError naming the first of ``paths`` that is missing."""
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} {path}: no such file")


def paired_files(image_dir: str, label_dir: str, image_exts: tuple[str, ...], label_ext: str,
                 dataset: str) -> list[tuple[str, str]]:
    """(image, label) paths of every image in ``image_dir`` whose extension is one of ``image_exts``
    (lower case), paired by file stem with ``label_dir/<stem><label_ext>``, sorted by stem.

    Raises FileNotFoundError naming the missing folder or the first missing label, ValueError when
    ``image_dir`` holds no image.
    """
    for folder, role in ((image_dir, "image"), (label_dir, "label")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{dataset}: no {role} folder {folder}")
    names = sorted(name for name in os.listdir(image_dir) if os.path.splitext(name)[1].lower() in image_exts)
    if not names:
        raise ValueError(f"{dataset}: no image ({'/'.join(image_exts)}) in {image_dir}")
    pairs = []
    for name in names:
        label = os.path.join(label_dir, os.path.splitext(name)[0] + label_ext)
        if not os.path.isfile(label):
            raise FileNotFoundError(f"label {label}: no such file for image {os.path.join(image_dir, name)}")
        pairs.append((os.path.join(image_dir, name), label))
    return pairs
