"""Sizing runs of the synthetic benchmark (docs/benchmark_design.md): one teacher or one student per call.

    python scripts/bench_probe.py teacher --out-dir D [frkd.train flags]
    python scripts/bench_probe.py student --out-dir D --seed S --method none [frkd.train flags]

Images come from data seed 0 whatever the run seed (as in ``frkd.compare``); the benchmark's sizes
(``SYNTHETIC_BENCHMARK``) are the defaults, frkd.train flags override them. ``--pretrained`` selects the
pretext backbones (``frkd.data.pretext``). One JSON record per run (mIoU, per-class IoU, wall and CPU
seconds, flags) is appended to ``--results``.
"""
import argparse
import json
import os
import resource
import sys
import time

import torch

from frkd.compare import train_student
from frkd.data.synthetic import SYNTHETIC_BENCHMARK as B


def base_argv(pretrained: bool) -> list[str]:
    argv = ["--dataset", "synthetic", "--num-classes", str(B["num_classes"]),
            "--crop-size", *map(str, B["crop_size"]), "--batch-size", str(B["batch_size"]), "--lr", str(B["lr"]),
            "--max-iterations", str(B["iterations"]), "--teacher-iterations", str(B["teacher_iterations"]),
            "--student-backbone", B["student_backbone"], "--width", str(B["width"]),
            "--teacher-backbone", B["teacher_backbone"], "--teacher-width", str(B["teacher_width"]),
            "--workers", "0", "--threads", "1", "--device", "cpu"]
    return argv


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("phase", choices=("teacher", "student"))
    p.add_argument("--pretrained", choices=("none", "student", "both"), default="both",
                   help="which models start from the pretext backbone")
    p.add_argument("--results", default="experiments/results.jsonl")
    p.add_argument("--tag", default="")
    args, flags = p.parse_known_args()
    from frkd.cli import parse_args
    from frkd.data.pretext import pretext_backbone_path

    torch.set_num_threads(1)
    argv = base_argv(args.pretrained)
    probe = parse_args(argv + flags)
    if args.pretrained != "none":
        argv += ["--student-pretrained", pretext_backbone_path(probe.student_backbone, probe.width)]
    if args.pretrained == "both":
        argv += ["--teacher-pretrained", pretext_backbone_path(probe.teacher_backbone, probe.teacher_width)]
    argv += flags
    run_args = parse_args(argv)
    config = dict(crop_size=list(run_args.crop_size), data_seed=B["data_seed"], num_classes=run_args.num_classes,
                  train_length=B["train_length"], val_length=B["val_length"])
    os.makedirs(run_args.out_dir, exist_ok=True)
    cpu0, wall0 = cpu_seconds(), time.time()
    if args.phase == "teacher":
        from frkd.data import build_dataset
        from frkd.distributed import init_distributed
        from frkd.run_log import MetricsLog
        from frkd.train import obtain_teacher

        common = dict(crop_size=run_args.crop_size, seed=B["data_seed"], num_classes=run_args.num_classes)
        train_set = build_dataset("synthetic", None, "train", train=True, length=B["train_length"], **common)
        val_set = build_dataset("synthetic", None, "val", train=False, length=B["val_length"], **common)
        os.makedirs(run_args.out_dir, exist_ok=True)
        run_args.val_per_iters = run_args.save_per_iters = run_args.teacher_iterations
        _, _, miou, per_class = obtain_teacher(run_args, init_distributed("cpu"), train_set, val_set,
                                               run_args.num_classes, MetricsLog(run_args.out_dir))
        record = {"miou": miou, "per_class_iou": per_class}
    else:
        run_args_argv = argv + ["--val-per-iters", str(run_args.max_iterations),
                                "--save-per-iters", str(run_args.max_iterations)]
        record = train_student({"argv": run_args_argv, "config": config})
    record.update(phase=args.phase, tag=args.tag, method=run_args.method, seed=run_args.seed,
                  pretrained=args.pretrained, flags=flags, cpu_s=cpu_seconds() - cpu0, wall_total_s=time.time() - wall0,
                  load1=os.getloadavg()[0])
    os.makedirs(os.path.dirname(args.results) or ".", exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}))


if __name__ == "__main__":
    sys.exit(main())
