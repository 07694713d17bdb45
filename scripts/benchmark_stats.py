"""Statistics of the synthetic benchmark's generator: boundary fraction at the stride-8 grid, class shares, cost.

    python scripts/benchmark_stats.py [--num-classes 7] [--crop-size 128 128] [--images 200] [--json out.json]

Boundary rule (docs/method.md "Synthetic benchmark"): the label map is resized to the stride-8 grid by nearest
neighbour; a valid cell is a boundary cell when its 3×3 neighbourhood holds another class or ignore (255).
Measured on val images (the full image) and on training crops (the trainer's random scale/crop/flip).
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from frkd.data import build_dataset
from frkd.config import DATASET_DEFAULTS
from frkd.data.synthetic import generate_scene, scene_rng

SYNTHETIC = DATASET_DEFAULTS["synthetic"]

IGNORE = 255


def boundary_fraction(label: torch.Tensor, stride: int = 8) -> tuple[int, int]:
    """label H×W int64 -> (boundary cells, valid cells) of its nearest-resized ceil(H/s)×ceil(W/s) map."""
    h, w = -(-label.shape[0] // stride), -(-label.shape[1] // stride)
    grid = F.interpolate(label[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
    padded = F.pad(grid[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0].long()
    windows = padded.unfold(0, 3, 1).unfold(1, 3, 1)  # h×w×3×3
    valid = grid != IGNORE
    other = (windows != grid[..., None, None]).any(-1).any(-1)
    return int((other & valid).sum()), int(valid.sum())


def measure(dataset, count: int) -> dict:
    boundary = valid = 0
    class_pixels = np.zeros(dataset.num_classes, dtype=np.int64)
    images_with = np.zeros(dataset.num_classes, dtype=np.int64)
    for i in range(count):
        _, label = dataset[i]
        b, v = boundary_fraction(label)
        boundary, valid = boundary + b, valid + v
        counts = np.bincount(label[label != IGNORE].numpy(), minlength=dataset.num_classes)
        class_pixels += counts
        images_with += counts > 0
    return {"boundary_fraction": boundary / valid, "valid_cells_per_image": valid / count,
            "class_pixel_share": (class_pixels / class_pixels.sum()).round(4).tolist(),
            "images_with_class": (images_with / count).round(3).tolist()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-classes", type=int, default=SYNTHETIC["num_classes"])
    p.add_argument("--crop-size", type=int, nargs=2, default=list(SYNTHETIC["crop_size"]))
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--json", default=None, help="also write the statistics here")
    args = p.parse_args()
    crop = tuple(args.crop_size)
    common = dict(crop_size=crop, num_classes=args.num_classes, length=args.images, seed=0)
    stats = {"num_classes": args.num_classes, "crop_size": list(crop), "images": args.images,
             "val": measure(build_dataset("synthetic", None, "val", train=False, **common), args.images),
             "train_crops": measure(build_dataset("synthetic", None, "train", train=True, **common), args.images)}
    started = time.process_time()
    for i in range(args.images):
        generate_scene(scene_rng(0, "train", i), *crop, args.num_classes)
    stats["generate_cpu_ms_per_image"] = 1000 * (time.process_time() - started) / args.images
    train = build_dataset("synthetic", None, "train", train=True, **common)
    started = time.process_time()
    for i in range(args.images):
        train[i]
    stats["train_sample_cpu_ms_per_image"] = 1000 * (time.process_time() - started) / args.images
    print(json.dumps(stats, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(stats, f, indent=1)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
