"""Command-line flags of ``python -m frkd.train`` (CIRKD's names and meanings) -> ``frkd.config.RunConfig``.

A flag left unset takes the config's default, per dataset from ``frkd.config.DATASET_DEFAULTS``
(``--help`` prints them), so ``--dataset cityscapes`` alone gives the CIRKD recipe. docs/trainer.md
lists the flags, the CIRKD flag each mirrors and the outputs.
"""
from __future__ import annotations

import argparse

from .config import (AMP_CHOICES, BACKBONES, DATASET_DEFAULTS, DATASETS, EVAL_MODES, FEATURE_TAPS, FIELD_SECTION,
                     MODEL_BACKBONES, MODELS, NO_PRETRAINED, SYNTHETIC_PRETEXT, RunConfig, resolve)
from .losses.recipes import GRAD_RATIO_DEFAULTS, OPTIONS

# argparse dest -> config field, where the names differ
DEST_FIELDS = {"data": "root", "teacher_pretrained": "teacher_ckpt"}
NOT_CONFIG = {"local_rank", "debug"}


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def dataset_default(field: str) -> str:
    """'default: X' or 'default: synthetic X, cityscapes Y, voc Z' from DATASET_DEFAULTS."""
    shown = {name: _show(DATASET_DEFAULTS[name].get(field, NO_PRETRAINED if field.endswith("pretrained_base") else None))
             for name in DATASETS}
    shown = {name: "required" if value == "None" else value for name, value in shown.items()}
    if len(set(shown.values())) == 1:
        return f"default: {shown[DATASETS[0]]}"
    return "default: " + ", ".join(f"{name} {value}" for name, value in shown.items())


def build_parser() -> argparse.ArgumentParser:
    from .losses import add_loss_args

    p = argparse.ArgumentParser(
        prog="python -m frkd.train",
        description="Train a teacher (unless --teacher-pretrained) then distil it into a student with FRKD or a "
                    "baseline. Flags mirror CIRKD's train_*.py where CIRKD has one (noted as 'CIRKD --x'); "
                    "unset flags take per-dataset defaults. docs/trainer.md has the details.")
    d = dataset_default
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None, choices=DATASETS, help="CIRKD --dataset (default: synthetic)")
    g.add_argument("--data", "--data-root", dest="data", default=None, metavar="DIR",
                   help="dataset folder, CIRKD --data (not needed for synthetic)")
    g.add_argument("--num-classes", type=int, default=None,
                   help=f"classes; required for folder, settable for synthetic only ({d('num_classes')})")
    g.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help=f"training crop, CIRKD --crop-size ({d('crop_size')})")
    g.add_argument("--workers", type=int, default=None,
                   help=f"data loader processes per rank, CIRKD --workers ({d('workers')})")
    g.add_argument("--ignore-label", type=int, default=None,
                   help="label of ignored pixels in CE, losses and evaluation, CIRKD --ignore-label (default: 255; "
                        "the built-in datasets mark ignored pixels 255; folder: the masks' ignore value, 0..255)")
    g.add_argument("--label-noise", type=float, default=None, metavar="FRACTION",
                   help="synthetic: this fraction of the training label maps made noisy (boundaries eroded or "
                        "dilated, objects swapped with their look-alike class), from the data seed; validation "
                        "labels stay clean (default: 0)")
    g = p.add_argument_group("models")
    models = ", ".join(f"{name} ({'|'.join(MODEL_BACKBONES[name])})" for name in MODELS)
    g.add_argument("--student-model", default=None, metavar="NAME|package.module:callable",
                   help=f"CIRKD --student-model: one of {models} (psp = pspnet); or a factory called with "
                        f"num_classes=K, with --student-feature and --student-logits ({d('student_model')})")
    g.add_argument("--student-backbone", default=None, choices=BACKBONES,
                   help="CIRKD --student-backbone, one the model takes (default: resnet18)")
    g.add_argument("--student-feature", default=None, metavar="PATH",
                   help="module path of a factory student's feature (what the losses distil), e.g. decode_head.fuse")
    g.add_argument("--student-logits", default=None, metavar="PATH",
                   help="module path of a factory student's logits, e.g. decode_head.conv_seg")
    g.add_argument("--width", type=int, default=None, help=f"student stem width, 64 = torchvision ({d('width')})")
    g.add_argument("--teacher-model", default=None, metavar="NAME|package.module:callable",
                   help="CIRKD --teacher-model, the names of --student-model (default: deeplabv3)")
    g.add_argument("--teacher-feature", default=None, metavar="PATH", help="as --student-feature, for the teacher")
    g.add_argument("--teacher-logits", default=None, metavar="PATH", help="as --student-logits, for the teacher")
    g.add_argument("--teacher-backbone", default=None, choices=BACKBONES,
                   help=f"CIRKD --teacher-backbone ({d('teacher_backbone')})")
    g.add_argument("--teacher-width", type=int, default=None, help=f"teacher stem width ({d('teacher_width')})")
    g.add_argument("--teacher-pretrained", "--teacher-ckpt", dest="teacher_pretrained", default=None, metavar="FILE",
                   help="the trained segmentation teacher (frkd checkpoint or state_dict), CIRKD "
                        "--teacher-pretrained (default: train one first, cached as <out-dir>/teacher.pt)")
    g.add_argument("--teacher-pretrained-base", default=None, metavar="FILE",
                   help="ImageNet ResNet .pth for the backbone of a teacher trained here, CIRKD "
                        f"--teacher-pretrained-base; '{SYNTHETIC_PRETEXT}': the synthetic benchmark's pretext backbone "
                        f"(frkd.pretext), '{NO_PRETRAINED}': random init ({d('teacher_pretrained_base')})")
    g.add_argument("--student-pretrained-base", default=None, metavar="FILE",
                   help="ImageNet ResNet .pth for the student backbone, CIRKD --student-pretrained-base; "
                        f"'{SYNTHETIC_PRETEXT}' or '{NO_PRETRAINED}' as above ({d('student_pretrained_base')})")
    g.add_argument("--pretext-seed", type=int, default=None, metavar="S",
                   help=f"which draw of the '{SYNTHETIC_PRETEXT}' backbones: their pretext seed (built once on "
                        "first use and cached; 0, 1 and 2 have reference builds, the README's draws; default: 0)")
    g.add_argument("--student-frozen-stages", type=int, default=None, metavar="N",
                   help="freeze the student backbone's stem and layer1..layerN (no gradients, BatchNorms in eval "
                        f"mode), mmseg's ResNet frozen_stages; -1 freezes nothing ({d('student_frozen_stages')})")
    g.add_argument("--teacher-iterations", type=int, default=None,
                   help=f"iterations of the teacher phase without --teacher-pretrained ({d('teacher_iterations')})")
    g.add_argument("--aux", action=argparse.BooleanOptionalAction, default=None,
                   help="auxiliary FCN head on layer3 with 0.4·CE, CIRKD --aux (default: on)")
    g.add_argument("--align-corners", action=argparse.BooleanOptionalAction, default=None,
                   help=f"align_corners when upsampling logits to the labels in CE and evaluation; CIRKD uses on "
                        f"({d('align_corners')})")
    g.add_argument("--feature-tap", default=None, choices=FEATURE_TAPS,
                   help=f"head feature given to the losses: before or after its Dropout(0.1); CIRKD taps after "
                        f"({d('feature_tap')})")
    add_loss_args(p)  # --method and the loss flags (frkd.losses.cli)
    g = p.add_argument_group("distillation schedule (any method; docs/method.md, 'Gradient calibration')")
    g.add_argument("--distill-grad-ratio", dest="grad_ratio", type=float, default=None, metavar="RHO",
                   help="scale each distillation term once, on the first batch, so that its gradient on the student "
                        "feature is RHO/n times the task loss's (n terms); 0 = off; no CIRKD counterpart (default: "
                        + "; ".join(f"{dataset} {m} {r:g}" for dataset, by in GRAD_RATIO_DEFAULTS.items() for m, r in by.items())
                        + " (the tuned ratios); otherwise off)")
    g.add_argument("--distill-grad-per-term", dest="grad_per_term", action="store_true", default=None,
                   help="with --distill-grad-ratio: each term's gradient starts at RHO times the task loss's (a RHO "
                        "per term), not RHO/n (default: off)")
    g.add_argument("--distill-warmup", dest="warmup_iters", type=int, default=None, metavar="N",
                   help="ramp the distillation terms linearly from 1/N to 1 over the first N iterations (default: 0, off)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=None,
                   help=f"global batch, divided over ranks, CIRKD --batch-size ({d('batch_size')})")
    g.add_argument("--max-iterations", type=int, default=None,
                   help=f"student iterations, CIRKD --max-iterations ({d('max_iterations')})")
    g.add_argument("--lr", type=float, default=None, help=f"SGD base LR, CIRKD --lr ({d('lr')})")
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum (default: 0.9)")
    g.add_argument("--weight-decay", type=float, default=None, help="SGD weight decay (default: 0.0001)")
    g.add_argument("--power", type=float, default=None, help="poly LR power (default: 0.9)")
    g.add_argument("--amp", default=None, choices=AMP_CHOICES, help="mixed precision (default: none)")
    g.add_argument("--lr-d", type=float, default=None,
                   help="Adam LR of an adversarial loss's discriminator, CIRKD --lr-d (default: 0.0004)")
    g.add_argument("--head-lr-mult", type=float, default=None,
                   help="LR multiplier of every trained parameter outside the backbone (heads, loss connectors), in "
                        f"both phases; mmseg's paramwise_cfg lr_mult ({d('head_lr_mult')})")
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--threads", type=int, default=None,
                   help=f"CPU intra-op threads per process, 0 = torch's choice ({d('threads')})")
    g.add_argument("--seed", type=int, default=None, help="student init and data order (default: 0)")
    g.add_argument("--out-dir", default=None, metavar="DIR",
                   help="outputs, like CIRKD --save-dir (default: runs/<dataset>-<student model>-<backbone>-<method>)")
    g.add_argument("--resume", default=None, metavar="FILE|auto",
                   help="continue from a checkpoint (last.pt or best.pt), or 'auto' for <out-dir>/last.pt when it "
                        "exists; needed to reuse an --out-dir that holds a run")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out-dir (its metrics, summary, checkpoints, plots; a cached "
                        "teacher.pt is kept and reused)")
    g.add_argument("--val-per-iters", type=int, default=None,
                   help=f"validate every N iterations, CIRKD --val-per-iters ({d('val_per_iters')})")
    g.add_argument("--save-per-iters", type=int, default=None,
                   help=f"write last.pt every N iterations, CIRKD --save-per-iters ({d('save_per_iters')})")
    g.add_argument("--log-per-iters", type=int, default=None,
                   help=f"one metrics.jsonl record per N iterations, CIRKD --log-iter ({d('log_per_iters')})")
    g.add_argument("--val-batch-size", type=int, default=None, help=f"per rank ({d('val_batch_size')})")
    g.add_argument("--eval-mode", default=None, choices=EVAL_MODES, help=f"validation inference ({d('eval_mode')})")
    g.add_argument("--stop-at-iteration", type=int, default=None,
                   help="save last.pt and exit after this many iterations, as on Ctrl-C (time-sliced jobs); "
                        "continue with --resume auto (default: never)")
    g.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    g.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The resolved (not yet validated) config of parsed flags; unset flags keep the config's defaults."""
    from .config import ConfigError
    from .losses import loss_options

    loss_dests = {option.dest for option in OPTIONS}
    fields = {}
    for dest, value in vars(args).items():
        if value is None or dest in NOT_CONFIG or dest in loss_dests:
            continue
        name = DEST_FIELDS.get(dest, dest)
        if name not in FIELD_SECTION:
            raise AssertionError(f"flag dest {dest!r} has no config field")
        fields[name] = tuple(value) if name == "crop_size" else value
    # the options the user set (over the recipe's defaults, resolved later per dataset)
    set_flags = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "dataset"})
    try:
        fields["options"] = loss_options(set_flags)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return resolve(RunConfig().replace(**fields))


def parse_config(argv: list[str] | None = None) -> tuple[RunConfig, argparse.Namespace]:
    """(resolved config, parsed flags) of a command line; argparse errors exit with code 2."""
    args = build_parser().parse_args(argv)
    return config_from_args(args), args
