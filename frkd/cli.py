"""Command-line flags of ``python -m frkd.train`` (CIRKD-compatible names) and per-dataset defaults.

A flag left unset takes its dataset's default from ``DATASET_DEFAULTS``; ``resolve_defaults``
fills them in after parsing, so ``--dataset cityscapes`` alone gives the CIRKD recipe.
"""
from __future__ import annotations

import argparse
import os

MODELS = ("deeplabv3", "pspnet")
BACKBONES = ("resnet18", "resnet50", "resnet101")

# Synthetic: the benchmark of ``python -m frkd.compare`` (docs/method.md: 4 classes, a width-16
# ResNet-50 teacher, a width-8 ResNet-18 student; ≈ 2 min of single-thread CPU time),
# on one intra-op thread: its tiny convolutions gain little from threads, and on a busy shared CPU
# two spinning OpenMP threads cost ~50x the CPU time of one. Real datasets: CIRKD's recipes.
DATASET_DEFAULTS = {
    "synthetic": dict(crop_size=(64, 64), batch_size=8, max_iterations=200, teacher_iterations=800, lr=0.02,
                      width=8, teacher_width=16, teacher_backbone="resnet50", num_classes=4, val_per_iters=100,
                      save_per_iters=100, log_per_iters=10, workers=0, val_batch_size=8, eval_mode="whole",
                      threads=1),
    "cityscapes": dict(crop_size=(512, 1024), batch_size=16, max_iterations=40000, teacher_iterations=40000,
                       lr=0.02, width=64, teacher_width=64, teacher_backbone="resnet101", val_per_iters=4000,
                       save_per_iters=1000, log_per_iters=50, workers=8, val_batch_size=1, eval_mode="whole",
                       threads=0),
    "voc": dict(crop_size=(512, 512), batch_size=16, max_iterations=40000, teacher_iterations=40000, lr=0.01,
                width=64, teacher_width=64, teacher_backbone="resnet101", val_per_iters=4000,
                save_per_iters=1000, log_per_iters=50, workers=8, val_batch_size=1, eval_mode="whole",
                threads=0),
}


def build_parser() -> argparse.ArgumentParser:
    from .losses import add_loss_args

    p = argparse.ArgumentParser(
        prog="python -m frkd.train",
        description="Train a teacher (unless --teacher-ckpt) then distil it into a student with FRKD "
                    "or a baseline. Unset flags take per-dataset defaults (see frkd/cli.py).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic", choices=sorted(DATASET_DEFAULTS))
    g.add_argument("--data-root", default=None, help="dataset folder (not needed for synthetic)")
    g.add_argument("--num-classes", type=int, default=None,
                   help="classes of the synthetic dataset (cityscapes: 19, voc: 21, fixed)")
    g.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), default=None)
    g.add_argument("--workers", type=int, default=None, help="data loader worker processes per rank")
    g = p.add_argument_group("models")
    g.add_argument("--teacher-model", default="deeplabv3", choices=MODELS)
    g.add_argument("--teacher-backbone", default=None, choices=BACKBONES)
    g.add_argument("--student-model", default="deeplabv3", choices=MODELS)
    g.add_argument("--student-backbone", default="resnet18", choices=BACKBONES)
    g.add_argument("--width", type=int, default=None, help="student stem width (64 = torchvision sizes)")
    g.add_argument("--teacher-width", type=int, default=None, help="teacher stem width")
    g.add_argument("--teacher-ckpt", default=None, help="trained teacher (frkd checkpoint or state_dict)")
    g.add_argument("--teacher-pretrained", default=None, help="ImageNet .pth for the teacher backbone")
    g.add_argument("--student-pretrained", default=None, help="ImageNet .pth for the student backbone")
    g.add_argument("--teacher-iterations", type=int, default=None,
                   help="iterations of the teacher phase when no --teacher-ckpt is given")
    add_loss_args(p)  # --method and the loss flags
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=None, help="global batch (divided over ranks)")
    g.add_argument("--max-iterations", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=1e-4)
    g.add_argument("--power", type=float, default=0.9, help="poly LR power")
    g.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--threads", type=int, default=None, help="CPU intra-op threads per process (0: torch's default)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out-dir", default=None, help="default: runs/<dataset>-<student>-<method>")
    g.add_argument("--resume", default=None, help="a last.pt path, or 'auto' for <out-dir>/last.pt")
    g.add_argument("--val-per-iters", type=int, default=None)
    g.add_argument("--save-per-iters", type=int, default=None)
    g.add_argument("--log-per-iters", type=int, default=None)
    g.add_argument("--val-batch-size", type=int, default=None, help="per rank")
    g.add_argument("--eval-mode", default=None, choices=("whole", "slide"))
    g.add_argument("--stop-at-iteration", type=int, default=None,
                   help="save last.pt and exit after this many iterations, as on Ctrl-C "
                        "(time-sliced jobs); continue with --resume auto")
    g.add_argument("--local-rank", "--local_rank", type=int, default=0,
                   help="ignored: torchrun's LOCAL_RANK environment variable is used")
    return p


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fills unset flags from DATASET_DEFAULTS and checks the combination; returns args."""
    for key, value in DATASET_DEFAULTS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.crop_size = tuple(args.crop_size)
    if args.dataset != "synthetic" and not args.data_root:
        raise SystemExit(f"--data-root is required for --dataset {args.dataset}")
    if args.dataset != "synthetic" and args.num_classes is not None:
        raise SystemExit(f"--num-classes applies to --dataset synthetic only ({args.dataset} has a fixed class list)")
    for name in ("batch_size", "max_iterations", "teacher_iterations", "val_per_iters", "save_per_iters",
                 "log_per_iters", "width", "teacher_width", "val_batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if min(args.crop_size) < 1:
        raise SystemExit(f"--crop-size must be positive, got {args.crop_size}")
    if args.out_dir is None:
        args.out_dir = os.path.join("runs", f"{args.dataset}-{args.student_model}-{args.student_backbone}-"
                                            f"{args.method}")
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return resolve_defaults(build_parser().parse_args(argv))
