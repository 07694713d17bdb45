"""``python -m frkd.evaluate --checkpoint PATH``: mIoU, per-class IoU and pixel accuracy of a checkpoint.

Works with last.pt / best.pt / teacher.pt written by ``frkd.train`` (the model is rebuilt from the
checkpoint's model_config; dataset, data folder, crop, ignore label and align_corners default to the
training run's recorded config). Also under ``torchrun`` (each rank evaluates a shard; the
confusion matrix is all-reduced). A user error prints one line ``frkd.evaluate: error: ...`` and
exits with 2 (``--debug`` shows its traceback).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

import torch
from torch.utils.data import DataLoader, Subset

from . import checkpoint
from .config import ConfigError, DATASETS, RunConfig, check_device
from .distributed import cleanup, init_distributed
from .engine import AMP_DTYPES
from .inference import evaluate
from .metrics import format_metrics
from .run_log import json_safe
from .sampling import rank_shard


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m frkd.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a frkd checkpoint (last.pt, best.pt, teacher.pt)")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="default: the training run's dataset")
    p.add_argument("--data", "--data-root", dest="data", default=None, metavar="DIR",
                   help="dataset folder, CIRKD --data (default: the training run's)")
    p.add_argument("--split", default="val", help="default: val")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--mode", default="whole", choices=("whole", "slide"), help="default: whole")
    p.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="sliding-window size (default: the training crop)")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="e.g. 0.75 1.0 1.25 (default: 1.0)")
    p.add_argument("--batch-size", type=int, default=1, help="per rank (images of one size only when > 1; default: 1)")
    p.add_argument("--workers", type=int, default=2, help="default: 2")
    p.add_argument("--amp", default="none", choices=tuple(AMP_DTYPES), help="default: none")
    p.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return p


def load_run(args) -> tuple[dict, dict, RunConfig]:
    """(checkpoint, model config, the training run's config with the flags applied); ConfigError on bad input."""
    state = checkpoint.load(args.checkpoint, "--checkpoint")
    model_config, recorded = state.get("model_config"), state.get("config")
    if model_config is None or recorded is None:
        raise checkpoint.CheckpointError(f"--checkpoint {args.checkpoint}: expected a checkpoint written by "
                                         f"frkd.train (model_config and config), found keys {', '.join(state)[:120]}")
    config = RunConfig.from_dict(recorded)
    data = config.data
    if args.dataset and args.dataset != data.dataset:
        data = dataclasses.replace(data, dataset=args.dataset, root=None)
    data = dataclasses.replace(data, root=args.data or data.root, workers=args.workers,
                               crop_size=tuple(args.crop_size or data.crop_size))
    config = dataclasses.replace(config, data=data)
    for name in ("batch_size", "workers"):
        if getattr(args, name) < (1 if name == "batch_size" else 0):
            raise ConfigError(f"--{name.replace('_', '-')}: expected an integer >= "
                              f"{1 if name == 'batch_size' else 0}, got {getattr(args, name)}")
    if min(data.crop_size) < 1:
        raise ConfigError(f"--crop-size: expected two integers >= 1, got {list(data.crop_size)}")
    if not all(math.isfinite(s) and s > 0 for s in args.scales):
        raise ConfigError(f"--scales: expected finite numbers > 0, got {args.scales}")
    check_device(args.device)
    return state, model_config, config


def main(argv: list[str] | None = None) -> int:
    from .pipeline import build_from_config, build_split

    args = build_parser().parse_args(argv)
    try:
        state, model_config, config = load_run(args)
        val_set = build_split(config.data, args.split, False, config.runtime.seed)
        if val_set.num_classes != model_config["num_classes"]:
            raise ConfigError(f"--checkpoint {args.checkpoint}: expected a model of {val_set.num_classes} classes "
                              f"({config.data.dataset}), found {model_config['num_classes']}")
        model = build_from_config(model_config)
        model.load_state_dict(checkpoint.model_state(state, args.checkpoint, "--checkpoint"))
    except ConfigError as error:
        if args.debug:
            raise
        print(f"frkd.evaluate: error: {error}", file=sys.stderr, flush=True)
        return 2
    env = init_distributed(args.device)
    try:
        model.to(env.device)
        loader = DataLoader(Subset(val_set, rank_shard(len(val_set), env.rank, env.world_size)),
                            batch_size=args.batch_size, num_workers=args.workers, generator=torch.Generator())
        result = evaluate(model, loader, model_config["num_classes"], env.device, amp_dtype=AMP_DTYPES[args.amp],
                          ignore_index=config.data.ignore_label, mode=args.mode, crop=config.data.crop_size,
                          flip=args.flip, scales=tuple(args.scales), align_corners=config.model.align_corners)
        if env.is_main:
            print(f"{args.checkpoint}: {model_config['arch']}-{model_config['backbone']} (width "
                  f"{model_config['width']}) on {config.data.dataset}/{args.split} ({len(val_set)} images), mode "
                  f"{args.mode}, flip {args.flip}, scales {args.scales}")
            print(format_metrics(result, list(getattr(val_set, "class_names", []))))
            print(json.dumps(json_safe(result)))  # machine-readable last line
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
