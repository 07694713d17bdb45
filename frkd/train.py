"""``python -m frkd.train``: teacher phase (unless --teacher-pretrained), then distillation into the student.

Single process (CPU or one GPU) or ``torchrun --nproc_per_node=N -m frkd.train`` (DDP) with the
same flags (``frkd.cli``); the work is ``frkd.pipeline.run``. Outputs in --out-dir: teacher.pt
(cached teacher), last.pt/best.pt, metrics.jsonl, summary.json, losses_*.png, miou.png
(docs/trainer.md). A user error prints one line ``frkd.train: error: ...`` and exits with 2
before any work (``--debug`` shows its traceback).
"""
from __future__ import annotations

import sys

from .cli import build_parser, config_from_args
from .config import ConfigError
from .distributed import cleanup, init_distributed
from .engine import NonFiniteLoss, TrainingStopped
from .pipeline import prepare, run, say


def main(argv: list[str] | None = None) -> int:
    from .plots import plot_run

    args = build_parser().parse_args(argv)
    try:
        config = prepare(config_from_args(args))
        env = init_distributed(config.runtime.device)
    except ConfigError as error:
        if args.debug:
            raise
        print(f"frkd.train: error: {error}", file=sys.stderr, flush=True)
        return 2
    try:
        run(config, env)
        return 0
    except ConfigError as error:
        if args.debug:
            raise
        print(f"frkd.train: error: {error}", file=sys.stderr, flush=True)
        return 2
    except NonFiniteLoss as error:
        print(f"frkd.train: {error}", file=sys.stderr, flush=True)
        return 1
    except TrainingStopped as error:
        say(env, f"frkd.train: {error}")
        if env.is_main:
            plot_run(config.runtime.out_dir)
        return 0 if error.reason.startswith("--stop-at") else 130
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
