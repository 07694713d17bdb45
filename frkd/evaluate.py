"""``python -m frkd.evaluate --checkpoint PATH``: mIoU, per-class IoU and pixel accuracy of a checkpoint.

Works with last.pt / best.pt / teacher.pt written by ``frkd.train`` (the model is rebuilt from the
checkpoint's model_config; dataset, data root and crop default to the training run's). Also under
``torchrun`` (each rank evaluates a shard; the confusion matrix is all-reduced).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch.utils.data import DataLoader, Subset

from . import checkpoint
from .distributed import cleanup, init_distributed
from .engine import AMP_DTYPES
from .inference import evaluate
from .metrics import format_metrics
from .run_log import json_safe
from .sampling import rank_shard


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m frkd.evaluate", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a frkd checkpoint (last.pt, best.pt, teacher.pt)")
    p.add_argument("--dataset", default=None, help="default: the training run's dataset")
    p.add_argument("--data-root", default=None, help="default: the training run's data root")
    p.add_argument("--split", default="val")
    p.add_argument("--device", default="auto")
    p.add_argument("--mode", default="whole", choices=("whole", "slide"))
    p.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="sliding-window size (default: the training crop)")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="e.g. 0.75 1.0 1.25")
    p.add_argument("--batch-size", type=int, default=1, help="per rank (images of one size only when > 1)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", default="none", choices=tuple(AMP_DTYPES))
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help="ignored (torchrun's LOCAL_RANK)")
    return p


def main(argv: list[str] | None = None) -> int:
    from .data import build_dataset
    from .models import build_model

    args = build_parser().parse_args(argv)
    state = checkpoint.load(args.checkpoint)
    config = state.get("model_config") if isinstance(state, dict) else None
    if config is None:
        raise SystemExit(f"{args.checkpoint}: no model_config; expected a checkpoint written by frkd.train")
    train_args = state.get("args", {})
    dataset = args.dataset or train_args.get("dataset", "synthetic")
    data_root = args.data_root or train_args.get("data_root")
    crop = tuple(args.crop_size or train_args.get("crop_size") or (512, 512))
    env = init_distributed(args.device)
    try:
        sizes = {"num_classes": config["num_classes"]} if dataset == "synthetic" else {}
        val_set = build_dataset(dataset, data_root, args.split, crop_size=crop, train=False,
                                seed=train_args.get("seed", 0), **sizes)
        if val_set.num_classes != config["num_classes"]:
            raise SystemExit(f"{args.checkpoint} predicts {config['num_classes']} classes, "
                             f"{dataset} has {val_set.num_classes}")
        model = build_model(config["arch"], config["backbone"], config["num_classes"], width=config["width"])
        model.load_state_dict(checkpoint.model_state(state))
        model.to(env.device)
        loader = DataLoader(Subset(val_set, rank_shard(len(val_set), env.rank, env.world_size)),
                            batch_size=args.batch_size, num_workers=args.workers, generator=torch.Generator())
        result = evaluate(model, loader, config["num_classes"], env.device, amp_dtype=AMP_DTYPES[args.amp],
                          mode=args.mode, crop=crop, flip=args.flip, scales=tuple(args.scales))
        if env.is_main:
            print(f"{args.checkpoint}: {config['arch']}-{config['backbone']} (width {config['width']}) on "
                  f"{dataset}/{args.split} ({len(val_set)} images), mode {args.mode}, flip {args.flip}, "
                  f"scales {args.scales}")
            print(format_metrics(result, list(getattr(val_set, "class_names", []))))
            print(json.dumps(json_safe(result)))  # machine-readable last line
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
