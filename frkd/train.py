"""``python -m frkd.train``: teacher phase (unless --teacher-ckpt), then distillation into the student.

Single process (CPU or one GPU) or ``torchrun --nproc_per_node=N -m frkd.train`` (DDP) with the
same flags; see ``frkd.cli`` for the flags and per-dataset defaults. Outputs in --out-dir:
teacher.pt (cached teacher), last.pt/best.pt, metrics.jsonl, summary.json, losses_*.png, miou.png.
"""
from __future__ import annotations

import os
import sys
import time

import torch

from . import checkpoint
from .checkpoint import seed_everything
from .cli import parse_args
from .distributed import DistEnv, barrier, cleanup, init_distributed
from .engine import NonFiniteLoss, Trainer, TrainingStopped, evaluate_model
from .metrics import format_metrics
from .plots import plot_run
from .run_log import MetricsLog, write_json


def say(env: DistEnv, message: str) -> None:
    if env.is_main:
        print(message, flush=True)


def model_config(arch: str, backbone: str, num_classes: int, width: int) -> dict:
    return {"arch": arch, "backbone": backbone, "num_classes": num_classes, "width": width}


def build_from_config(config: dict, pretrained: str | None = None):
    from .models import build_model

    return build_model(config["arch"], config["backbone"], config["num_classes"], width=config["width"],
                       pretrained=pretrained)


def resume_path(args, out_dir: str) -> str | None:
    """The checkpoint to resume from: --resume PATH, or <out_dir>/last.pt for --resume auto if present."""
    if args.resume is None:
        return None
    if args.resume == "auto":
        path = os.path.join(out_dir, "last.pt")
        return path if os.path.exists(path) else None
    return args.resume


def run_phase(trainer: Trainer, env: DistEnv, resume: str | None) -> dict:
    """Resumes (when asked) and trains; metrics.jsonl keeps only this phase's records up to the start."""
    if resume:
        trainer.load_state_dict(checkpoint.load(resume))
        say(env, f"[{trainer.phase}] resumed from {resume} at iteration {trainer.iteration}")
    trainer.log.truncate_after(trainer.phase, trainer.iteration)
    return trainer.fit()


def load_teacher(args, env: DistEnv, path: str, expected: dict):
    """Builds the teacher from a frkd checkpoint (its model_config) or a state_dict (the flags)."""
    state = checkpoint.load(path)
    config = state.get("model_config", expected) if isinstance(state, dict) else expected
    if config["num_classes"] != expected["num_classes"]:
        raise SystemExit(f"teacher {path} predicts {config['num_classes']} classes, "
                         f"--dataset {args.dataset} has {expected['num_classes']}")
    teacher = build_from_config(config)
    teacher.load_state_dict(checkpoint.model_state(state))
    return teacher, config, state.get("miou"), state.get("per_class_iou")


def obtain_teacher(args, env: DistEnv, train_set, val_set, num_classes: int, log: MetricsLog):
    """The frozen teacher: --teacher-ckpt, else the cached <out-dir>/teacher.pt, else trained here.

    Returns (teacher, config, miou, per_class_iou); miou is None when unknown (a foreign checkpoint).
    """
    expected = model_config(args.teacher_model, args.teacher_backbone, num_classes, args.teacher_width)
    if args.teacher_ckpt:
        say(env, f"teacher: loading --teacher-ckpt {args.teacher_ckpt}")
        teacher, config, miou, per_class = load_teacher(args, env, args.teacher_ckpt, expected)
        if miou is None:  # a checkpoint from elsewhere: measure it once on this validation set
            result = evaluate_model(teacher.to(env.device), val_set, args, env)
            miou, per_class = result["miou"], result["per_class_iou"]
            say(env, f"teacher: mIoU {100 * miou:.2f} on {args.dataset} val")
        return teacher, config, miou, per_class
    cached = os.path.join(args.out_dir, "teacher.pt")
    if os.path.exists(cached):
        teacher, config, miou, per_class = load_teacher(args, env, cached, expected)
        if config != expected:
            raise SystemExit(f"cached teacher {cached} is {config}, but the flags ask for {expected}; "
                             "delete it or pass --teacher-ckpt")
        say(env, f"teacher: reusing the cached {cached} (mIoU {100 * miou:.2f}); delete it to retrain")
        return teacher, config, miou, per_class
    say(env, f"teacher: no --teacher-ckpt, training {args.teacher_model}-{args.teacher_backbone} (width "
             f"{args.teacher_width}) for {args.teacher_iterations} iterations first; it is cached as {cached}")
    teacher_dir = os.path.join(args.out_dir, "teacher")
    if env.is_main:
        os.makedirs(teacher_dir, exist_ok=True)
    teacher = build_from_config(expected, args.teacher_pretrained)
    trainer = Trainer(phase="teacher", model=teacher, teacher=None, distill=None, train_set=train_set,
                      val_set=val_set, num_classes=num_classes, max_iterations=args.teacher_iterations, args=args,
                      env=env, out_dir=teacher_dir, log=log, model_config=expected)
    teacher_resume = os.path.join(teacher_dir, "last.pt") if args.resume else None
    result = run_phase(trainer, env, teacher_resume if teacher_resume and os.path.exists(teacher_resume) else None)
    if env.is_main:
        checkpoint.save_atomic({"model": trainer.model.state_dict(), "model_config": expected,
                                "miou": result["miou"], "per_class_iou": result["per_class_iou"],
                                "args": vars(args)}, cached)
    barrier()
    teacher, _, _, _ = load_teacher(args, env, cached, expected)
    return teacher, expected, result["miou"], result["per_class_iou"]


def student_trainer(args, env: DistEnv, train_set, val_set, num_classes: int, teacher, log: MetricsLog) -> Trainer:
    """The student phase: a freshly seeded student and its distillation loss against ``teacher``
    (no distillation when ``teacher`` is None)."""
    from .losses import build_loss, loss_options

    seed_everything(args.seed)
    config = model_config(args.student_model, args.student_backbone, num_classes, args.width)
    student = build_from_config(config, pretrained=args.student_pretrained)
    distill = None
    if teacher is not None:
        distill = build_loss(args.method, num_classes=num_classes, student_channels=student.feat_channels,
                             teacher_channels=teacher.feat_channels, ignore_index=255, **loss_options(args))
    return Trainer(phase="student", model=student, teacher=teacher, distill=distill, train_set=train_set,
                   val_set=val_set, num_classes=num_classes, max_iterations=args.max_iterations, args=args,
                   env=env, out_dir=args.out_dir, log=log, model_config=config)


def train(args, env: DistEnv) -> dict:
    """Both phases; returns the summary (also written to <out-dir>/summary.json by rank 0)."""
    from .data import build_dataset

    started = time.time()
    if args.batch_size % env.world_size:
        raise SystemExit(f"--batch-size {args.batch_size} (global) is not divisible by the world size "
                         f"{env.world_size}")
    seed_everything(args.seed)
    if env.is_main:
        os.makedirs(args.out_dir, exist_ok=True)
    barrier()
    log = MetricsLog(args.out_dir, enabled=env.is_main)
    sizes = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    train_set = build_dataset(args.dataset, args.data_root, "train", crop_size=args.crop_size, train=True,
                              seed=args.seed, **sizes)
    val_set = build_dataset(args.dataset, args.data_root, "val", crop_size=args.crop_size, train=False,
                            seed=args.seed, **sizes)
    num_classes = train_set.num_classes
    say(env, f"frkd.train: {args.dataset} ({len(train_set)} train / {len(val_set)} val images, {num_classes} "
             f"classes), method {args.method}, device {env.device}, world size {env.world_size}, out {args.out_dir}")
    if env.distributed and env.device.type != "cuda":
        say(env, "note: SyncBatchNorm needs CUDA; on CPU each rank keeps its own BatchNorm statistics")

    teacher, teacher_config, teacher_miou, teacher_per_class = None, None, None, None
    if args.method != "none":
        teacher, teacher_config, teacher_miou, teacher_per_class = obtain_teacher(
            args, env, train_set, val_set, num_classes, log)
    trainer = student_trainer(args, env, train_set, val_set, num_classes, teacher, log)
    resume = resume_path(args, args.out_dir)
    if args.resume == "auto" and resume is None:
        say(env, f"--resume auto: no {os.path.join(args.out_dir, 'last.pt')} yet, starting the student from scratch")
    result = run_phase(trainer, env, resume)
    summary = {
        "teacher_miou": teacher_miou, "teacher_per_class_iou": teacher_per_class, "teacher": teacher_config,
        "student_miou": result["miou"], "student_pixel_acc": result["pixel_acc"],
        "student_per_class_iou": result["per_class_iou"], "student_best_miou": trainer.best_miou,
        "student": trainer.model_config, "class_names": list(getattr(train_set, "class_names", [])),
        "wall_time_s": time.time() - started, "world_size": env.world_size, "args": vars(args),
    }
    if env.is_main:
        write_json(os.path.join(args.out_dir, "summary.json"), summary)
        plots = plot_run(args.out_dir)
        print(format_metrics(result, summary["class_names"]))
        if teacher_miou is not None:
            print(f"teacher mIoU {100 * teacher_miou:.2f}")
        print(f"student mIoU {100 * result['miou']:.2f}  ({args.method}; best {100 * trainer.best_miou:.2f})")
        print(f"wrote {os.path.join(args.out_dir, 'summary.json')}, metrics.jsonl, {len(plots)} plots "
              f"in {summary['wall_time_s']:.0f} s")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = init_distributed(args.device)
    try:
        train(args, env)
        return 0
    except NonFiniteLoss as error:
        print(f"frkd.train: {error}", file=sys.stderr, flush=True)
        return 1
    except TrainingStopped as error:
        say(env, f"frkd.train: {error}")
        if env.is_main:
            plot_run(args.out_dir)
        return 0 if error.reason.startswith("--stop-at") else 130
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
