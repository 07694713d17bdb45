"""``synthetic``: generated scenes of coloured shapes, deterministic by (seed, split, index).

Needs no files. Each image (``image_size``, default ``crop_size``) shows 1–3 large objects on a
background; later objects occlude earlier ones (placements avoid heavy overlap).
- Background (class 0): a smooth greyish field (random level, slight tint) plus a faint
  grating at a random angle and pixel noise.
- Object classes 1..K-1 (``num_classes`` = K, default 7, at most ``MAX_CLASSES``; ``CLASSES``):
  three colour pairs (red, blue, green; ``PAIR_COLOURS``); within a pair a *solid* object (disc or square) and a
  *holed* one (ring or frame: the hole shows the background). Colour narrows a pixel's class down
  to its pair at once; telling solid from holed needs the object's outline and its inside, seen
  from wherever the pixel lies on the object: receptive field and capacity, what a larger teacher
  learns sooner and distillation can pass on. Outline (of the class's two) and texture (flat,
  stripes at a random orientation, checkerboard, dots) are drawn independently of the class.
  Object radius is 18–28% of the image side (23–36 px at 128 px), so on the stride-8 grid of a
  128×128 crop objects span 6–9 cells (``scripts/benchmark_stats.py`` measures the boundary
  share). Shapes are mirror-symmetric, so h-flips keep classes.
- Per image: brightness/contrast jitter and Gaussian pixel noise.
- Labels: the class of each pixel, with 255 on a 1-pixel boundary where classes meet.
- Noisy labels (``label_noise``, train split only): a fixed fraction of the label maps, chosen and
  altered from the data seed alone (``noisy_label``): every object's boundary eroded or dilated by
  1–3 px, and each object class swapped with probability ½ with its look-alike (the other class
  of its colour pair). The images and the clean maps are unchanged.
``generate_scene`` also returns per-pixel colour and texture attributes: with scenes of other
shapes in any colour (``PRETEXT_CLASSES``) they are the pretext task of the benchmark's pretrained
backbones (``frkd.pretext``). ``length`` sets the number of samples (default 1000 for train,
100 otherwise); the train, val, test and pretext splits generate different images. The benchmark's
sizes are the synthetic defaults of ``frkd.config`` (docs/method.md "Synthetic benchmark").
"""
from typing import NamedTuple

import numpy as np
from PIL import Image

from .base import SegmentationDataset, as_size

SHAPES = ("disc", "square", "ring", "frame")  # the benchmark's outlines (CLASSES)
# shapes of the pretext task only (frkd.pretext), disjoint from SHAPES: as ImageNet's classes are not VOC's
PRETEXT_SHAPES = ("ellipse", "semidisc", "bar", "hourglass", "octagon", "holed-ellipse", "holed-octagon")
TEXTURES = ("flat", "stripes", "checker", "dots")
# red, blue, yellow, green: saturated, unlike the greyish background
OBJECT_COLOURS = np.array([[0.85, 0.2, 0.15], [0.15, 0.4, 0.9], [0.9, 0.8, 0.2], [0.2, 0.75, 0.3]], dtype=np.float32)
COLOUR_NAMES = ("red", "blue", "yellow", "green")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "pretext": 3}
DEFAULT_LENGTHS = {"train": 1000}
# Object classes of the benchmark: three colour pairs; within a pair a solid object (disc or square) and a
# holed one (ring or frame). Colour narrows a class down to its pair, the hole decides within it. The pairs are
# red, blue and green (OBJECT_COLOURS 0, 1, 3): up to v7 the third pair was yellow, which shares red's high red
# channel, and whether a draw of the pretext backbones separated red from yellow decided whether the teacher or
# the student lost those classes (docs/method.md "Backbone draws").
PAIR_COLOURS = (0, 1, 3)
CLASSES = tuple((outlines, colour) for colour in PAIR_COLOURS
                for outlines in (("disc", "square"), ("ring", "frame")))
PRETEXT_CLASSES = tuple(((shape,), None) for shape in PRETEXT_SHAPES)
MAX_CLASSES = 1 + len(CLASSES)
RADIUS_RANGE = (0.18, 0.28)  # object radius / image side
OBJECT_COUNTS = (1, 2, 3)
OBJECT_COUNT_PROBABILITIES = (0.3, 0.45, 0.25)
IGNORE = 255
SCENE_CACHE_BYTES = 256 * 2**20  # generated images (H×W×3) and labels (H×W) kept per dataset
NOISE_STREAM = 1  # the seed key of the label noise, apart from the scenes' own generators
NOISE_RADII = (1, 2, 3)  # px of erosion or dilation of a noisy map's object boundaries
SWAP_PROBABILITY = 0.5  # of each object class of a noisy map becoming its look-alike

class Scene(NamedTuple):
    """One generated scene: uint8 H×W×3 image and three uint8 H×W maps (255 on class boundaries).

    label: class 0..K-1; colour: 0 background, 1 + colour index; texture: 0 background, 1 + texture index.
    """

    image: np.ndarray
    label: np.ndarray
    colour: np.ndarray
    texture: np.ndarray


def synthetic_class_names(num_classes: int) -> tuple[str, ...]:
    """background, then <colour>-solid / <colour>-holed per colour pair."""
    names = [f"{COLOUR_NAMES[colour]}-{'holed' if outlines[0] == 'ring' else 'solid'}" for outlines, colour in CLASSES]
    return ("background",) + tuple(names[: num_classes - 1])


def _smooth_noise(rng, height: int, width: int, cells: int) -> np.ndarray:
    """H×W noise in [0, 1] varying over ~``cells`` cells per side (bilinear upsampling)."""
    coarse = Image.fromarray((rng.random((cells + 1, cells + 1)) * 255).astype(np.uint8))
    return np.asarray(coarse.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0


def _texture(name: str, rng, ys, xs, period: float) -> np.ndarray:
    """H×W pattern in [0, 1] of texture ``name`` with a random phase (and orientation for stripes)."""
    oy, ox = rng.uniform(0, period, size=2)
    if name == "flat":
        return np.full_like(ys, 0.5)
    if name == "stripes":
        t = ys + oy if rng.random() < 0.5 else xs + ox
        return 0.5 + 0.5 * np.tanh(3 * np.sin(2 * np.pi * t / period))
    if name == "checker":
        return ((np.floor((ys + oy) / (period / 2)) + np.floor((xs + ox) / (period / 2))) % 2).astype(np.float32)
    if name == "dots":
        dy = (ys + oy) % period - period / 2
        dx = (xs + ox) % period - period / 2
        return (dy**2 + dx**2 < (period / 3) ** 2).astype(np.float32)
    raise ValueError(f"synthetic: unknown texture {name!r}")


def _shape_mask(name: str, ys, xs, cy: float, cx: float, r: float) -> np.ndarray:
    """Boolean H×W mask of shape ``name`` of radius ``r`` centred at (cy, cx)."""
    dy, dx = np.abs(ys - cy), np.abs(xs - cx)
    if name == "disc":
        return dy**2 + dx**2 < r**2
    if name == "square":
        return (dy < 0.85 * r) & (dx < 0.85 * r)
    if name == "ring":
        d2 = dy**2 + dx**2
        return (d2 < r**2) & (d2 >= (0.55 * r) ** 2)
    if name == "ellipse":
        return (dy / (0.55 * r)) ** 2 + (dx / r) ** 2 < 1
    if name == "semidisc":
        return (dy**2 + dx**2 < r**2) & (ys > cy - 0.3 * r)
    if name == "bar":
        return (dy < 0.3 * r) & (dx < r)
    if name == "hourglass":
        return (dx < dy) & (dy < r)
    if name == "octagon":
        return (dy < 0.9 * r) & (dx < 0.9 * r) & (dy + dx < 1.25 * r)
    if name == "holed-ellipse":
        d2 = (dy / (0.55 * r)) ** 2 + (dx / r) ** 2
        return (d2 < 1) & (d2 >= 0.55**2)
    if name == "holed-octagon":
        return _shape_mask("octagon", ys, xs, cy, cx, r) & ~((dy < 0.5 * r) & (dx < 0.5 * r) & (dy + dx < 0.7 * r))
    if name == "frame":
        inside = (dy < 0.85 * r) & (dx < 0.85 * r)
        return inside & ~((dy < 0.45 * r) & (dx < 0.45 * r))
    raise ValueError(f"synthetic: unknown shape {name!r}")


def _place(rng, placed: list, height: int, width: int, r: float) -> tuple[float, float]:
    """A centre for a radius-``r`` object, overlapping earlier ones little when possible (10 tries)."""
    for _ in range(10):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        if all(np.hypot(cy - py, cx - px) > 0.8 * (r + pr) for py, px, pr in placed):
            break
    return cy, cx


def generate_scene(rng, height: int, width: int, num_classes: int, classes=None) -> Scene:
    """One scene with 1–3 objects of classes 1..num_classes-1; object class k has an outline drawn from
    ``classes[k - 1][0]`` and the colour ``classes[k - 1][1]`` (None: any colour). Default ``classes``:
    the benchmark's ``CLASSES`` (see the module doc)."""
    classes = CLASSES if classes is None else classes
    if not 2 <= num_classes <= 1 + len(classes):
        raise ValueError(f"synthetic: num_classes must be in [2, {1 + len(classes)}], got {num_classes}")
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    side = min(height, width)
    base = rng.uniform(0.3, 0.7) + rng.normal(0, 0.05, size=3).astype(np.float32)
    field = _smooth_noise(rng, height, width, 4)[..., None] - 0.5
    angle = rng.uniform(0, np.pi)
    grating = np.sin(2 * np.pi * (np.cos(angle) * xs + np.sin(angle) * ys) / (rng.uniform(4, 10) * side / 64))
    image = base + 0.4 * field * rng.uniform(0.8, 1.2, size=3).astype(np.float32) + 0.08 * grating[..., None]
    label = np.zeros((height, width), dtype=np.uint8)
    colour_map = np.zeros_like(label)
    texture_map = np.zeros_like(label)
    placed = []
    for _ in range(rng.choice(OBJECT_COUNTS, p=OBJECT_COUNT_PROBABILITIES)):
        k = int(rng.integers(1, num_classes))
        outlines, class_colour = classes[k - 1]
        colour, texture = int(rng.integers(len(OBJECT_COLOURS))), int(rng.integers(len(TEXTURES)))
        colour = colour if class_colour is None else class_colour
        outline = outlines[int(rng.integers(len(outlines)))]
        r = rng.uniform(*RADIUS_RANGE) * side
        cy, cx = _place(rng, placed, height, width, r)
        placed.append((cy, cx, r))
        # every shape lies within 1.2 r of its centre: draw in that box only
        box = (slice(max(0, int(cy - 1.2 * r)), int(cy + 1.2 * r) + 1),
               slice(max(0, int(cx - 1.2 * r)), int(cx + 1.2 * r) + 1))
        mask = _shape_mask(outline, ys[box], xs[box], cy, cx, r)
        pattern = _texture(TEXTURES[texture], rng, ys[box], xs[box], rng.uniform(0.07, 0.11) * side)
        tint = OBJECT_COLOURS[colour] * rng.uniform(0.75, 1.15) + rng.normal(0, 0.05, size=3)
        contrast = rng.uniform(0.5, 0.8)
        fill = tint * (1 - contrast + contrast * pattern[..., None])
        image[box][mask] = fill[mask]
        label[box][mask] = k
        colour_map[box][mask] = colour + 1
        texture_map[box][mask] = texture + 1
    image = (image - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.1, 0.1)
    image += rng.normal(0, 0.04, size=image.shape).astype(np.float32)
    boundary = np.zeros_like(label, dtype=bool)
    boundary[:, :-1] |= label[:, 1:] != label[:, :-1]
    boundary[:-1, :] |= label[1:, :] != label[:-1, :]
    for target in (label, colour_map, texture_map):
        target[boundary] = IGNORE
    return Scene((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), label, colour_map, texture_map)


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split`` for data seed ``seed``."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def look_alike(k: int) -> int:
    """The other class of object class ``k``'s colour pair (solid <-> holed; CLASSES order)."""
    return k + 1 if k % 2 else k - 1


def _window_extreme(values: np.ndarray, radius: int, reduce) -> np.ndarray:
    """``reduce`` (np.max or np.min) over each pixel's (2·radius+1)² window, edges repeated."""
    padded = np.pad(values, radius, mode="edge")
    return reduce(np.lib.stride_tricks.sliding_window_view(padded, (2 * radius + 1,) * 2), axis=(-2, -1))


def noisy_label(label: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """A noisy copy of a clean H×W label map: every object eroded (its pixels within r of another
    label become background) or dilated (background within r of an object takes its class), r in
    NOISE_RADII, then each object class present swapped with probability SWAP_PROBABILITY with its
    look-alike (when that class exists); ignore pixels stay ignored."""
    noisy = label.copy()
    radius = int(rng.choice(NOISE_RADII))
    objects = (label > 0) & (label != IGNORE)
    if rng.random() < 0.5:
        labelled = label.astype(np.int16)
        same = (_window_extreme(labelled, radius, np.max) == labelled) & (_window_extreme(labelled, radius, np.min) == labelled)
        noisy[objects & ~same] = 0
    else:
        grown = _window_extreme(np.where(objects, label, 0), radius, np.max)
        into = (label == 0) & (grown > 0)
        noisy[into] = grown[into]
    swapped = noisy.copy()
    for k in np.unique(label[objects]):
        partner = look_alike(int(k))
        if rng.random() < SWAP_PROBABILITY and partner < num_classes:
            swapped[noisy == k] = partner
    return swapped


def noisy_indices(seed: int, length: int, fraction: float) -> frozenset[int]:
    """The round(fraction · length) train images whose label maps are noisy, a function of the data seed."""
    order = np.random.default_rng([seed, SPLIT_CODES["train"], NOISE_STREAM]).permutation(length)
    return frozenset(int(i) for i in order[: round(fraction * length)])


def noisy_pixel_fraction(dataset: "SyntheticSegmentation") -> float:
    """The fraction of the labelled pixels of ``dataset``'s training maps whose label the noise changed."""
    changed = labelled = 0
    for index in range(len(dataset)):
        clean = generate_scene(scene_rng(dataset.seed, dataset.split, index), *dataset.image_size,
                               dataset.num_classes).label
        labelled += int((clean != IGNORE).sum())
        if index in dataset.noisy:
            changed += int(((dataset.load_pair(index)[1] != clean) & (clean != IGNORE)).sum())
    return changed / labelled


class SyntheticSegmentation(SegmentationDataset):
    """Generated shape scenes (see the module doc); ``root`` is unused. ``label_noise``: the fraction
    of noisy label maps (train split only)."""

    def __init__(
        self, root, split: str, *, num_classes: int = 6, length: int | None = None, image_size=None,
        label_noise: float = 0.0, **options
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
        if not 0.0 <= label_noise <= 1.0 or (label_noise and split != "train"):
            raise ValueError(f"synthetic: label_noise must be in [0, 1], and 0 outside the train split, got "
                             f"{label_noise!r} for split {split!r}")
        self.num_classes = num_classes
        self.class_names = synthetic_class_names(num_classes)
        self.length = length
        self.label_noise = label_noise
        self.noisy = noisy_indices(self.seed, length, label_noise) if label_noise else frozenset()
        # a scene depends only on (seed, split, index): keep the generated arrays (most of a sample's CPU
        # time) when the whole split fits in SCENE_CACHE_BYTES; each worker process fills its own copy
        self._cache_scenes = length * self.image_size[0] * self.image_size[1] * 4 <= SCENE_CACHE_BYTES
        self._scenes: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.length

    def load_pair(self, index: int) -> tuple[Image.Image, np.ndarray]:
        scene = self._scenes.get(index)
        if scene is None:
            scene = generate_scene(scene_rng(self.seed, self.split, index), *self.image_size, self.num_classes)[:2]
            if index in self.noisy:
                rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index, NOISE_STREAM])
                scene = (scene[0], noisy_label(scene[1], rng, self.num_classes))
            if self._cache_scenes:
                for array in scene:
                    array.setflags(write=False)
                self._scenes[index] = scene
        return Image.fromarray(scene[0]), scene[1]
