"""``synthetic``: generated scenes of textured shapes, deterministic by (seed, split, index).

Needs no files. Each image (``image_size``, default ``crop_size``) shows 2–5 objects on a
background; later objects occlude earlier ones.
- Background (class 0): a smooth greyish field (random level, slight tint) plus a faint
  grating at a random angle and pixel noise, so "striped" is not enough to say "object".
- Object classes 1..K-1 (``num_classes`` = K, default 8, at most 29): a random shape (disc,
  ellipse, rectangle, triangle or a band across the image) filled with the class's texture —
  horizontal stripes, vertical stripes, checkerboard, chevron cross-hatch, flat, dots or
  concentric rings — with a per-object period of 8–14 px (at 64 px) and phase, in the
  class's saturated colour (red, blue, yellow, green; class k has texture (k-1) mod 7 and
  colour (k-1) mod 4). Colour finds objects and narrows the class down quickly (a small
  network gets that far), but classes sharing a colour (1 and 5, 2 and 6, 3 and 7 at K = 8)
  differ only by texture, a local frequency-level cue that a larger network learns sooner:
  that gap is what distillation can close. Textures and colours are mirror-invariant, so
  h-flips keep classes.
- Per image: brightness/contrast jitter and Gaussian pixel noise.
- Labels: the class of each pixel, with 255 on a 1-pixel boundary where classes meet.
``length`` sets the number of samples (default 1000 for train, 100 otherwise); the train,
val and test splits generate different images.
"""
import math

import numpy as np
from PIL import Image

from .base import SegmentationDataset, as_size

# class k ≥ 1 has texture (k-1) mod 7 and colour (k-1) mod 4: at K = 8 the same-colour pairs are
# (hstripes, flat), (vstripes, dots), (checker, rings), and crosshatch has green to itself
TEXTURES = ("hstripes", "vstripes", "checker", "crosshatch", "flat", "dots", "rings")
# red, blue, yellow, green: saturated, unlike the greyish background
OBJECT_COLOURS = np.array([[0.85, 0.2, 0.15], [0.15, 0.4, 0.9], [0.9, 0.8, 0.2], [0.2, 0.75, 0.3]], dtype=np.float32)
COLOUR_NAMES = ("red", "blue", "yellow", "green")
SHAPES = ("disc", "ellipse", "rectangle", "triangle", "band")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
DEFAULT_LENGTHS = {"train": 1000}
MAX_CLASSES = 1 + math.lcm(len(TEXTURES), len(OBJECT_COLOURS))


def class_texture_and_colour(k: int) -> tuple[str, int]:
    """Object class k ≥ 1 -> (texture name, colour index); unique for k < MAX_CLASSES."""
    return TEXTURES[(k - 1) % len(TEXTURES)], (k - 1) % len(OBJECT_COLOURS)


def synthetic_class_names(num_classes: int) -> tuple[str, ...]:
    names = ["background"]
    for k in range(1, num_classes):
        texture, colour = class_texture_and_colour(k)
        names.append(f"{texture}-{COLOUR_NAMES[colour]}")
    return tuple(names)


def _smooth_noise(rng, height: int, width: int, cells: int) -> np.ndarray:
    """H×W noise in [0, 1] varying over ~``cells`` cells per side (bilinear upsampling)."""
    coarse = Image.fromarray((rng.random((cells + 1, cells + 1)) * 255).astype(np.uint8))
    return np.asarray(coarse.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def _texture(name: str, rng, ys, xs, cy: float, cx: float, period: float) -> np.ndarray:
    """H×W pattern in [0, 1] of texture ``name`` around centre (cy, cx)."""
    phase = rng.uniform(0, 2 * np.pi)

    def wave(t):  # a soft square wave: sharp edges that early convolutions pick up
        return 0.5 + 0.5 * np.tanh(3 * np.sin(2 * np.pi * t / period + phase))

    if name == "hstripes":
        return wave(ys)
    if name == "vstripes":
        return wave(xs)
    if name == "checker":
        return ((np.floor((ys - cy) / (period / 2)) + np.floor((xs - cx) / (period / 2))) % 2).astype(np.float32)
    if name == "dots":
        dy = (ys - cy) % period - period / 2
        dx = (xs - cx) % period - period / 2
        return (dy**2 + dx**2 < (period / 3) ** 2).astype(np.float32)
    if name == "rings":
        return wave(np.hypot(ys - cy, xs - cx))
    if name == "crosshatch":
        diagonal = (np.abs(xs - cx) + ys)  # mirror-symmetric about the object's vertical axis
        anti = (ys - np.abs(xs - cx))
        return np.maximum(wave(diagonal), wave(anti)) ** 3
    if name == "flat":
        return np.full_like(ys, 0.5)
    raise ValueError(f"synthetic: unknown texture {name!r}")


def _shape_mask(name: str, rng, ys, xs, height: int, width: int) -> tuple[np.ndarray, float, float]:
    """Boolean H×W mask of a random ``name`` shape and its centre (cy, cx)."""
    side = min(height, width)
    cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
    r = rng.uniform(0.12, 0.3) * side
    if name == "disc":
        return (ys - cy) ** 2 + (xs - cx) ** 2 < r**2, cy, cx
    if name == "ellipse":
        ry, rx = r * rng.uniform(0.5, 1.0), r * rng.uniform(1.0, 1.6)
        return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 < 1, cy, cx
    if name == "rectangle":
        hy, hx = r * rng.uniform(0.6, 1.2), r * rng.uniform(0.6, 1.2)
        return (np.abs(ys - cy) < hy) & (np.abs(xs - cx) < hx), cy, cx
    if name == "triangle":
        top = cy - r
        inside = (ys > top) & (ys < cy + r)
        return inside & (np.abs(xs - cx) < (ys - top) * 0.6), cy, cx
    half = r * rng.uniform(0.25, 0.45)
    if rng.random() < 0.5:
        return np.abs(ys - cy) < half, cy, cx
    return np.abs(xs - cx) < half, cy, cx


def generate_scene(rng, height: int, width: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene with 2–5 objects (num_classes ≥ 2): (uint8 H×W×3 image, uint8 H×W label, 255 boundaries)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = min(height, width) / 64.0
    base = rng.uniform(0.3, 0.7) + rng.normal(0, 0.05, size=3).astype(np.float32)
    field = _smooth_noise(rng, height, width, 4)[..., None] - 0.5
    angle = rng.uniform(0, np.pi)
    grating = np.sin(2 * np.pi * (np.cos(angle) * xs + np.sin(angle) * ys) / (rng.uniform(4, 10) * scale))
    image = base + 0.4 * field * rng.uniform(0.8, 1.2, size=3).astype(np.float32) + 0.08 * grating[..., None]
    label = np.zeros((height, width), dtype=np.uint8)
    for _ in range(rng.integers(2, 6)):
        k = int(rng.integers(1, num_classes))
        texture, colour = class_texture_and_colour(k)
        mask, cy, cx = _shape_mask(SHAPES[rng.integers(len(SHAPES))], rng, ys, xs, height, width)
        pattern = _texture(texture, rng, ys, xs, cy, cx, rng.uniform(8, 14) * scale)
        tint = OBJECT_COLOURS[colour] * rng.uniform(0.75, 1.15) + rng.normal(0, 0.05, size=3)
        contrast = rng.uniform(0.5, 0.8)
        fill = tint * (1 - contrast + contrast * pattern[..., None])
        image[mask] = fill[mask]
        label[mask] = k
    image = (image - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.1, 0.1)
    image += rng.normal(0, 0.04, size=image.shape).astype(np.float32)
    boundary = np.zeros_like(label, dtype=bool)
    boundary[:, :-1] |= label[:, 1:] != label[:, :-1]
    boundary[:-1, :] |= label[1:, :] != label[:-1, :]
    label[boundary] = 255
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), label


class SyntheticSegmentation(SegmentationDataset):
    """Generated textured-shape scenes (see the module doc); ``root`` is unused."""

    def __init__(
        self, root, split: str, *, num_classes: int = 8, length: int | None = None, image_size=None, **options
    ):
        super().__init__(split, **options)
        if split not in SPLIT_CODES:
            raise ValueError(f"synthetic: split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
        if not isinstance(num_classes, int) or not 2 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"synthetic: num_classes must be an int in [2, {MAX_CLASSES}], got {num_classes!r}")
        length = DEFAULT_LENGTHS.get(split, 100) if length is None else length
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"synthetic: length must be a positive int, got {length!r}")
        self.image_size = as_size(image_size, "image_size") or self.crop_size
        if self.image_size is None:
            raise ValueError("synthetic: give crop_size or image_size (the generated image size)")
        self.num_classes = num_classes
        self.class_names = synthetic_class_names(num_classes)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def load_pair(self, index: int) -> tuple[Image.Image, np.ndarray]:
        rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])
        image, label = generate_scene(rng, *self.image_size, self.num_classes)
        return Image.fromarray(image), label
