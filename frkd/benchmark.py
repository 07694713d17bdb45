"""The synthetic benchmark of ``python -m frkd.compare`` as run configs (docs/method.md).

``run_config(bench, method=..., options=..., seed=..., out_dir=...)`` is the ``RunConfig`` of one
(method, seed, loss options) student run on the benchmark ``bench`` (``BENCHMARK`` or ``QUICK``);
``frkd.pipeline.run(config)`` runs it. The train and val images depend on ``bench["data_seed"]``
only; the seed sets the student's init and data order.
"""
from __future__ import annotations

import argparse
import shlex

from .config import RunConfig, build_config

BENCHMARK = dict(  # sized on tuning seeds so that 3 seeds × 12 rows run in < 3 h on 2 CPU cores (docs/method.md)
    num_classes=4, crop_size=[64, 64], train_length=1000, val_length=100, data_seed=0,
    teacher_backbone="resnet50", teacher_width=16, teacher_iterations=800,
    student_backbone="resnet18", width=8, iterations=200, batch_size=8, lr=0.02)
QUICK = dict(BENCHMARK, teacher_iterations=150, iterations=40)
# FRKD's relation weights for this benchmark, tuned on seeds 100 and 101 (docs/method.md); the loss defaults
# (λ_intra = λ_inter = 20, CIRKD's scale for full-size students) swamp the task loss of a width-8 student.
TUNED_FRKD_FLAGS = "--lambda-intra 0.5 --lambda-inter 0.5"
ABLATIONS = {  # row name -> FRKD flags switching one part off
    "frkd-no-pseudo-filter": ["--no-pseudo-filter"],
    "frkd-no-fgbg": ["--no-fgbg"],
    "frkd-no-coord-mask": ["--no-coord-mask"],
    "frkd-no-intra": ["--lambda-intra", "0"],
    "frkd-no-inter": ["--lambda-inter", "0"],
}


def options_from_flags(method: str, flags: list[str] | str) -> dict:
    """The loss options that loss flags (``["--lambda-intra", "0.5"]`` or the same as one string) set for
    ``method``; a flag that is not a loss flag or does not apply raises ValueError naming it."""
    from .losses import add_loss_args, loss_options

    parser = argparse.ArgumentParser(prog="loss flags", add_help=False, exit_on_error=False)
    add_loss_args(parser)
    words = shlex.split(flags) if isinstance(flags, str) else list(flags)
    try:
        args, unknown = parser.parse_known_args(["--method", method, *words])
    except argparse.ArgumentError as error:
        raise ValueError(str(error)) from None
    if unknown:
        raise ValueError(f"not loss flags: {' '.join(unknown)}")
    return loss_options(args)


def run_config(bench: dict, *, method: str, options: dict | None = None, seed: int, out_dir: str,
               device: str = "auto", teacher_ckpt: str | None = None, threads: int | None = None,
               **fields) -> RunConfig:
    """The config of one student run on ``bench`` (resumable: ``--resume auto``); ``fields`` override any
    config field (``RunConfig.replace`` names)."""
    iterations = bench["iterations"]
    base = dict(dataset="synthetic", num_classes=bench["num_classes"], crop_size=tuple(bench["crop_size"]),
                train_length=bench["train_length"], val_length=bench["val_length"], data_seed=bench["data_seed"],
                workers=0, method=method, options=dict(options or {}), seed=seed, batch_size=bench["batch_size"],
                lr=bench["lr"], max_iterations=iterations, teacher_iterations=bench["teacher_iterations"],
                student_backbone=bench["student_backbone"], width=bench["width"],
                teacher_backbone=bench["teacher_backbone"], teacher_width=bench["teacher_width"],
                val_per_iters=iterations, save_per_iters=max(1, iterations // 4),
                log_per_iters=max(1, min(10, iterations)), device=device, threads=threads, out_dir=out_dir,
                resume="auto", teacher_ckpt=teacher_ckpt)
    return build_config(**{**base, **fields})


def teacher_config(bench: dict, *, out_dir: str, device: str = "auto", teacher_ckpt: str | None = None,
                   threads: int | None = None) -> RunConfig:
    """The config whose teacher phase trains the benchmark's shared teacher into <out_dir>/teacher.pt."""
    t = bench["teacher_iterations"]
    return run_config(bench, method="kd", seed=bench["data_seed"], out_dir=out_dir, device=device,
                      teacher_ckpt=teacher_ckpt, threads=threads, val_per_iters=t, save_per_iters=max(1, t // 4))
