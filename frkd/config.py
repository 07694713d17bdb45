"""The typed run config of the trainer (docs/trainer.md): data, model, loss, optimisation, runtime.

``build_config(**fields)`` (or ``RunConfig.from_dict``) makes a config; fields left ``None`` take
their dataset's default from ``DATASET_DEFAULTS`` (the one table of per-dataset defaults) in
``resolve``; ``validate`` checks every value, path and the device before any work and raises
``ConfigError`` with one line naming the flag, what was expected and what was found.
Field names are unique across sections, so ``config.replace(lr=0.01, method="kd")`` works.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from .models.families import BACKBONES, MODEL_BACKBONES, RESNETS, is_factory

MODELS = tuple(MODEL_BACKBONES)  # and package.module:callable
FEATURE_TAPS = ("pre-dropout", "post-dropout")
AMP_CHOICES = ("none", "bf16", "fp16")
EVAL_MODES = ("whole", "slide")
# Files that make an out dir "hold a run"; the cached teacher.pt alone does not (it is reused by design).
RUN_FILES = ("metrics.jsonl", "summary.json", "last.pt", "best.pt", os.path.join("teacher", "last.pt"))

# Synthetic: the benchmark of ``python -m frkd.compare`` (docs/method.md "Synthetic benchmark": 7 classes
# of colour pairs × solid/holed objects at 128×128, a width-8 DeepLabV3-ResNet-50 teacher, a width-8
# PSPNet-ResNet-18 student whose pretrained backbone is frozen up to layer3 (layer4 trains) and whose heads
# learn at 10× the LR, both from the pretext-pretrained backbones of frkd.pretext; fixed images,
# data seed 0; batch 16 at LR 0.02 as CIRKD's VOC scripts; the teacher trains 300 iterations, the student 80: its
# handicap, which leaves at least 8 mIoU of headroom on every reference backbone draw, docs/method.md "Backbone draws");
# validation at the table runs' 6 points (frkd.benchmark.eval_every(80) = 13)
# on one intra-op thread (its tiny convolutions gain little from threads; on a busy CPU spinning OpenMP
# threads cost far more than they give).
# Cityscapes/VOC: CIRKD's recipes (align_corners and the post-dropout feature tap as CIRKD's code).
SYNTHETIC_PRETEXT = "synthetic-pretext"  # --*-pretrained-base value: the synthetic benchmark's pretext backbone
NO_PRETRAINED = "none"                   # --*-pretrained-base value: random initialisation
DATASET_DEFAULTS = {
    "synthetic": dict(num_classes=7, crop_size=(128, 128), batch_size=16, max_iterations=80, teacher_iterations=300,
                      lr=0.02, width=8, teacher_width=8, teacher_backbone="resnet50", student_model="pspnet",
                      student_frozen_stages=3, head_lr_mult=10.0, val_per_iters=13, save_per_iters=300,
                      log_per_iters=10, workers=0, val_batch_size=8, eval_mode="whole",
                      threads=1, align_corners=False, feature_tap="pre-dropout", data_seed=0, train_length=1000,
                      val_length=100, student_pretrained_base=SYNTHETIC_PRETEXT,
                      teacher_pretrained_base=SYNTHETIC_PRETEXT),
    "cityscapes": dict(num_classes=19, crop_size=(512, 1024), batch_size=16, max_iterations=40000,
                       teacher_iterations=40000, lr=0.02, width=64, teacher_width=64, teacher_backbone="resnet101",
                       student_model="deeplabv3", student_frozen_stages=-1, head_lr_mult=1.0,
                       val_per_iters=4000, save_per_iters=1000, log_per_iters=50, workers=8, val_batch_size=1,
                       eval_mode="whole", threads=0, align_corners=True, feature_tap="post-dropout"),
    "voc": dict(num_classes=21, crop_size=(512, 512), batch_size=16, max_iterations=40000, teacher_iterations=40000,
                lr=0.01, width=64, teacher_width=64, teacher_backbone="resnet101", student_model="deeplabv3",
                student_frozen_stages=-1, head_lr_mult=1.0, val_per_iters=4000,
                save_per_iters=1000, log_per_iters=50, workers=8, val_batch_size=1, eval_mode="whole", threads=0,
                align_corners=True, feature_tap="post-dropout"),
}
# ADE20K, COCO-Stuff-164k: CIRKD's scripts/train_baseline|train_cirkdv2/<dataset>/deeplabv3_resnet18.sh (crop 512×512,
# batch 16, LR 0.02, 80 000 iterations); CamVid: train_scripts/train_baseline/camvid/deeplabv3_res18.sh (crop 360×360)
# with train_baseline.py's argparse defaults (batch 16, LR 0.02, 40 000 iterations); folder: train_kd.py's argparse
# defaults. All evaluate the whole image, one image a batch, as CIRKD's validation.
_CIRKD_COMMON = dict(teacher_width=64, width=64, teacher_backbone="resnet101", student_model="deeplabv3",
                     student_frozen_stages=-1, head_lr_mult=1.0, val_per_iters=4000, save_per_iters=1000,
                     log_per_iters=50, workers=8, val_batch_size=1, eval_mode="whole", threads=0, align_corners=True,
                     feature_tap="post-dropout", batch_size=16, lr=0.02)
DATASET_DEFAULTS.update({
    "ade20k": dict(_CIRKD_COMMON, num_classes=150, crop_size=(512, 512), max_iterations=80000,
                   teacher_iterations=80000),
    "coco_stuff_164k": dict(_CIRKD_COMMON, num_classes=182, crop_size=(512, 512), max_iterations=80000,
                            teacher_iterations=80000),
    "camvid": dict(_CIRKD_COMMON, num_classes=11, crop_size=(360, 360), max_iterations=40000,
                   teacher_iterations=40000),
    "folder": dict(_CIRKD_COMMON, crop_size=(512, 1024), max_iterations=40000, teacher_iterations=40000),
})
DATASETS = tuple(DATASET_DEFAULTS)
FIXED_CLASSES = {"cityscapes": 19, "voc": 21, "ade20k": 150, "coco_stuff_164k": 182, "camvid": 11}
SETTABLE_CLASSES = ("synthetic", "folder")  # datasets whose --num-classes the user sets


class ConfigError(ValueError):
    """A user error (a flag, a file, the device): one line naming it, what was expected, what was found."""


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    root: str | None = None                      # dataset folder (CIRKD --data); not needed for synthetic
    num_classes: int | None = None               # synthetic and folder (required there); fixed for the others
    crop_size: tuple[int, int] | None = None
    workers: int | None = None
    val_batch_size: int | None = None
    ignore_label: int = 255
    train_length: int | None = None              # synthetic: samples per split (None: the dataset's default)
    val_length: int | None = None
    data_seed: int | None = None                 # seed of the datasets (None: runtime seed)
    label_noise: float = 0.0                     # synthetic: fraction of noisy training label maps (val stays clean)


@dataclass
class ModelConfig:
    student_model: str | None = None
    student_backbone: str = "resnet18"
    width: int | None = None
    teacher_model: str = "deeplabv3"
    teacher_backbone: str | None = None
    teacher_width: int | None = None
    teacher_ckpt: str | None = None              # trained segmentation teacher (CIRKD --teacher-pretrained)
    teacher_pretrained_base: str | None = None   # ImageNet backbone .pth of a teacher trained here
    student_pretrained_base: str | None = None   # ImageNet backbone .pth of the student
    pretext_seed: int = 0                        # the draw of the synthetic-pretext backbones (frkd.pretext)
    student_frozen_stages: int | None = None     # mmseg frozen_stages of the student backbone (-1: none)
    aux: bool = True                             # auxiliary FCN head and its 0.4·CE
    align_corners: bool | None = None            # logits -> label size in CE and evaluation
    feature_tap: str | None = None               # the head feature given to the losses
    student_feature: str | None = None           # module paths of a package.module:callable model's feature
    student_logits: str | None = None            # and logits (what the Distiller hooks)
    teacher_feature: str | None = None
    teacher_logits: str | None = None


@dataclass
class LossConfig:
    method: str = "frkd"
    options: dict = field(default_factory=dict)  # the loss options set by the user (unset: recipe defaults)
    grad_ratio: float | None = None              # calibrate the terms' gradients to this ratio of CE's (0: off;
                                                 # None: the dataset's default for the method)
    grad_per_term: bool = False                  # calibrate each term to grad_ratio (not grad_ratio / n terms)
    warmup_iters: int = 0                        # linear warm-up of the distillation terms (0: none)


@dataclass
class OptimConfig:
    batch_size: int | None = None                # global batch (divided over ranks)
    max_iterations: int | None = None
    teacher_iterations: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    amp: str = "none"
    lr_d: float = 4e-4                           # Adam lr of a loss's discriminator (CIRKD --lr-d)
    head_lr_mult: float | None = None            # lr × this outside the backbone (mmseg paramwise lr_mult)


@dataclass
class RuntimeConfig:
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    out_dir: str | None = None
    resume: str | None = None                    # a checkpoint path, or "auto" for <out_dir>/last.pt
    overwrite: bool = False
    val_per_iters: int | None = None
    save_per_iters: int | None = None
    log_per_iters: int | None = None
    eval_mode: str | None = None
    stop_at_iteration: int | None = None


SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "optim": OptimConfig,
            "runtime": RuntimeConfig}
FIELD_SECTION = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        """Nested plain dict (tuples as lists), JSON-ready."""
        out = dataclasses.asdict(self)
        if out["data"]["crop_size"] is not None:
            out["data"]["crop_size"] = list(out["data"]["crop_size"])
        return out

    @classmethod
    def from_dict(cls, nested: dict) -> "RunConfig":
        """Inverse of ``to_dict``; unknown sections or fields raise ConfigError. Extra keys of a
        recorded config (``loss.resolved``) are ignored."""
        sections = {}
        for name, values in nested.items():
            if name not in SECTIONS:
                raise ConfigError(f"config: unknown section {name!r}; expected one of {', '.join(SECTIONS)}")
            known = {f.name for f in dataclasses.fields(SECTIONS[name])}
            unknown = sorted(set(values) - known - {"resolved"})
            if unknown:
                raise ConfigError(f"config: unknown field(s) {', '.join(unknown)} in section {name!r}")
            kept = {k: v for k, v in values.items() if k in known}
            if kept.get("crop_size") is not None:
                kept["crop_size"] = tuple(kept["crop_size"])
            sections[name] = SECTIONS[name](**kept)
        return cls(**sections)

    def replace(self, **fields) -> "RunConfig":
        """A copy with fields replaced by name (``lr=0.01``, ``method="kd"``, ``options={...}``)."""
        per_section: dict[str, dict] = {}
        for name, value in fields.items():
            if name not in FIELD_SECTION:
                raise ConfigError(f"config: unknown field {name!r}")
            per_section.setdefault(FIELD_SECTION[name], {})[name] = value
        return dataclasses.replace(self, **{s: dataclasses.replace(getattr(self, s), **v)
                                            for s, v in per_section.items()})


def build_config(**fields) -> RunConfig:
    """A resolved config from flat fields (see ``RunConfig.replace``); not yet validated."""
    return resolve(RunConfig().replace(**fields))


def resolve(config: RunConfig) -> RunConfig:
    """Fills every ``None`` that has a per-dataset default and the default out dir; returns a copy."""
    dataset = config.data.dataset
    if dataset not in DATASET_DEFAULTS:
        raise ConfigError(f"--dataset: expected one of {', '.join(DATASETS)}, got {dataset!r}")
    unset = {name: value for name, value in DATASET_DEFAULTS[dataset].items()
             if getattr(getattr(config, FIELD_SECTION[name]), name) is None}
    config = config.replace(**unset)
    if config.loss.grad_ratio is None:
        from .losses.recipes import GRAD_RATIO_DEFAULTS

        config = config.replace(grad_ratio=GRAD_RATIO_DEFAULTS.get(dataset, {}).get(config.loss.method, 0.0))
    config = config.replace(crop_size=tuple(config.data.crop_size))
    if config.runtime.out_dir is None:
        m = config.model
        config = config.replace(out_dir=os.path.join(
            "runs", f"{dataset}-{m.student_model}-{m.student_backbone}-{config.loss.method}"))
    return config


def flag(name: str) -> str:
    """The CLI flag of a config field."""
    return {"root": "--data", "teacher_ckpt": "--teacher-pretrained", "grad_ratio": "--distill-grad-ratio",
            "grad_per_term": "--distill-grad-per-term", "warmup_iters": "--distill-warmup"}.get(
        name, "--" + name.replace("_", "-"))


def _check_number(name: str, value, *, kind=int, low=None, high=None, low_open=False, high_open=False,
                  allow_none=False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (kind is float or isinstance(value, int)) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        what = "an integer" if kind is int else "a finite number"
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high}")
        raise ConfigError(f"{flag(name)}: expected {what}{' ' + ' and '.join(bounds) if bounds else ''}, "
                          f"got {value!r}")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{flag(name)}: expected one of {', '.join(map(str, choices))}, got {value!r}")


def _check_file(name: str, path: str | None) -> None:
    if path is None:
        return
    if not os.path.isfile(path):
        found = "a folder" if os.path.isdir(path) else "no such file"
        raise ConfigError(f"{flag(name)} {path}: expected a readable file, found {found}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{flag(name)} {path}: expected a readable file, found no read permission")


def _check_writable_dir(name: str, path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag(name)} {path}: expected a folder, found a file")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag(name)} {path}: expected a writable folder, but {existing} is not writable")


def check_device(name: str) -> None:
    """'auto', 'cpu', 'cuda' or 'cuda:N' that this machine has; ConfigError otherwise."""
    import torch

    if name == "auto":
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: expected a CUDA GPU, found none (torch.cuda.is_available() is "
                              "False); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: expected an index < {torch.cuda.device_count()} "
                              f"(GPUs on this machine), got {device.index}")
    elif device.type != "cpu":
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}")


def out_dir_holds_run(out_dir: str) -> list[str]:
    """The run files (RUN_FILES) present in ``out_dir``."""
    return [name for name in RUN_FILES if os.path.exists(os.path.join(out_dir, name))]


def resume_file(config: RunConfig) -> str | None:
    """The student checkpoint to resume from: --resume PATH, or <out_dir>/last.pt for auto when present."""
    resume = config.runtime.resume
    if resume == "auto":
        path = os.path.join(config.runtime.out_dir, "last.pt")
        return path if os.path.exists(path) else None
    return resume


def validate(config: RunConfig, world_size: int | None = None) -> RunConfig:
    """Checks a resolved config in full (values, paths, device, out dir); returns it or raises ConfigError.

    world_size: processes of the run (default: torchrun's WORLD_SIZE, else 1).
    """
    d, m, o, r = config.data, config.model, config.optim, config.runtime
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    _check_choice("dataset", d.dataset, DATASETS)
    if d.dataset == "folder" and d.num_classes is None:
        raise ConfigError("--num-classes: expected the number of classes of the folder dataset (its masks hold "
                          "0..N-1), got none")
    if d.dataset in SETTABLE_CLASSES:
        _check_number("num_classes", d.num_classes, low=2, high=255 if d.dataset == "folder" else None)
    elif d.num_classes != FIXED_CLASSES[d.dataset]:
        raise ConfigError(f"--num-classes: applies to --dataset {' and '.join(SETTABLE_CLASSES)} only ({d.dataset} "
                          f"has {FIXED_CLASSES[d.dataset]} fixed classes), got {d.num_classes}")
    if d.dataset != "synthetic":
        if not d.root:
            raise ConfigError(f"--data: expected the {d.dataset} dataset folder, got none")
    if d.root is not None and not os.path.isdir(d.root):
        found = "a file" if os.path.exists(d.root) else "no such folder"
        raise ConfigError(f"--data {d.root}: expected the {d.dataset} dataset folder, found {found}")
    if len(d.crop_size) != 2:
        raise ConfigError(f"--crop-size: expected two integers H W, got {d.crop_size!r}")
    for value in d.crop_size:
        _check_number("crop_size", value, low=1)
    _check_number("workers", d.workers, low=0)
    _check_number("val_batch_size", d.val_batch_size, low=1)
    _check_number("ignore_label", d.ignore_label)
    if 0 <= d.ignore_label < d.num_classes:
        raise ConfigError(f"--ignore-label: expected a value outside the class ids 0..{d.num_classes - 1}, "
                          f"got {d.ignore_label}")
    if d.dataset == "folder" and d.ignore_label > 255:
        raise ConfigError(f"--ignore-label: expected a value in {d.num_classes}..255 (a value of the 8-bit masks), "
                          f"got {d.ignore_label}")
    for name in ("train_length", "val_length"):
        _check_number(name, getattr(d, name), low=1, allow_none=True)
    _check_number("data_seed", d.data_seed, low=0, allow_none=True)
    _check_number("label_noise", d.label_noise, kind=float, low=0, high=1)
    if d.label_noise and d.dataset != "synthetic":
        raise ConfigError(f"--label-noise: applies to --dataset synthetic only, got {d.label_noise:g} for {d.dataset}")

    for prefix in ("student", "teacher"):
        _check_model(m, prefix)
    _check_number("width", m.width, low=1)
    _check_number("teacher_width", m.teacher_width, low=1)
    _check_number("student_frozen_stages", m.student_frozen_stages, low=-1, high=4)
    _check_choice("feature_tap", m.feature_tap, FEATURE_TAPS)
    for name, value in (("aux", m.aux), ("align_corners", m.align_corners), ("overwrite", r.overwrite),
                        ("grad_per_term", config.loss.grad_per_term)):
        if not isinstance(value, bool):
            raise ConfigError(f"{flag(name)}: expected true or false, got {value!r}")
    _check_file("teacher_ckpt", m.teacher_ckpt)
    for name in ("teacher_pretrained_base", "student_pretrained_base"):
        value = getattr(m, name)
        if value == SYNTHETIC_PRETEXT and d.dataset != "synthetic":
            raise ConfigError(f"{flag(name)} {value}: applies to --dataset synthetic only; expected an ImageNet "
                              f"backbone .pth or {NO_PRETRAINED}")
        prefix = name.split("_")[0]
        if value == SYNTHETIC_PRETEXT and (is_factory(getattr(m, f"{prefix}_model"))
                                           or getattr(m, f"{prefix}_backbone") not in RESNETS):
            raise ConfigError(f"{flag(name)} {value}: the pretext backbones are ResNets; expected an ImageNet "
                              f"backbone file or {NO_PRETRAINED} for --{prefix}-model {getattr(m, f'{prefix}_model')} "
                              f"on {getattr(m, f'{prefix}_backbone')}")
    if m.student_frozen_stages != -1 and (is_factory(m.student_model) or m.student_backbone not in RESNETS):
        raise ConfigError(f"--student-frozen-stages {m.student_frozen_stages}: only ResNet backbones have stages to "
                          f"freeze; expected -1 for --student-model {m.student_model}")
        if value not in (SYNTHETIC_PRETEXT, NO_PRETRAINED):
            _check_file(name, value)
    _check_number("pretext_seed", m.pretext_seed, low=0)

    _check_loss(config)
    _check_number("grad_ratio", config.loss.grad_ratio, kind=float, low=0)
    _check_number("warmup_iters", config.loss.warmup_iters, low=0)

    for name in ("batch_size", "max_iterations", "teacher_iterations"):
        _check_number(name, getattr(o, name), low=1)
    if o.batch_size % world_size:
        raise ConfigError(f"--batch-size {o.batch_size} (global) is not divisible by the world size {world_size}")
    _check_number("lr", o.lr, kind=float, low=0, low_open=True)
    _check_number("lr_d", o.lr_d, kind=float, low=0, low_open=True)
    _check_number("head_lr_mult", o.head_lr_mult, kind=float, low=0, low_open=True)
    _check_number("momentum", o.momentum, kind=float, low=0, high=1, high_open=True)
    _check_number("weight_decay", o.weight_decay, kind=float, low=0)
    _check_number("power", o.power, kind=float, low=0)
    _check_choice("amp", o.amp, AMP_CHOICES)

    check_device(r.device)
    _check_number("threads", r.threads, low=0)
    _check_number("seed", r.seed, low=0)
    for name in ("val_per_iters", "save_per_iters", "log_per_iters"):
        _check_number(name, getattr(r, name), low=1)
    _check_choice("eval_mode", r.eval_mode, EVAL_MODES)
    _check_number("stop_at_iteration", r.stop_at_iteration, low=1, allow_none=True)
    _check_writable_dir("out_dir", r.out_dir)
    if r.resume is not None and r.resume != "auto":
        _check_file("resume", r.resume)
    if r.resume is not None and r.overwrite:
        raise ConfigError("--overwrite: replaces the run in --out-dir, --resume continues it; expected one, got both")
    held = out_dir_holds_run(r.out_dir)
    if held and r.resume is None and not r.overwrite:
        raise ConfigError(f"--out-dir {r.out_dir}: expected a folder without a run, found {', '.join(held)}; "
                          "continue it with --resume auto, replace it with --overwrite, or pick another --out-dir")
    return config


def _check_model(m: ModelConfig, prefix: str) -> None:
    """--<prefix>-model: a registry name on one of its backbones (paths unset), or package.module:callable with
    --<prefix>-feature and --<prefix>-logits."""
    name, backbone = getattr(m, f"{prefix}_model"), getattr(m, f"{prefix}_backbone")
    paths = {key: getattr(m, f"{prefix}_{key}") for key in ("feature", "logits")}
    if is_factory(name):
        missing = [f"--{prefix}-{key}" for key, value in paths.items() if not value]
        if missing:
            raise ConfigError(f"--{prefix}-model {name}: a package.module:callable model needs {' and '.join(missing)} "
                              "(the module paths of its feature and its logits)")
        return
    if name not in MODEL_BACKBONES:
        raise ConfigError(f"--{prefix}-model: expected one of {', '.join(MODELS)} or package.module:callable, "
                          f"got {name!r}")
    if backbone not in MODEL_BACKBONES[name]:
        raise ConfigError(f"--{prefix}-backbone: expected one of {', '.join(MODEL_BACKBONES[name])} for "
                          f"--{prefix}-model {name}, got {backbone!r}")
    given = [f"--{prefix}-{key}" for key, value in paths.items() if value]
    if given:
        raise ConfigError(f"{' and '.join(given)}: apply to a package.module:callable --{prefix}-model only; "
                          f"{name} knows its own")


def _check_loss(config: RunConfig) -> None:
    from .losses import LOSSES, option_names

    method, options = config.loss.method, config.loss.options
    _check_choice("method", method, tuple(LOSSES))
    accepted = option_names(method)
    for name, value in options.items():
        shown = flag(name)
        if name not in accepted:
            raise ConfigError(f"{shown} does not apply to --method {method}; it takes "
                              f"{', '.join(flag(a) for a in accepted) or 'no loss options'}")
        if isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{shown}: expected a finite number, got {value!r}")
        if name.startswith("lambda_") and value < 0:
            raise ConfigError(f"{shown}: expected a weight >= 0, got {value!r}")
        if name.endswith("temperature") and value <= 0:
            raise ConfigError(f"{shown}: expected a temperature > 0, got {value!r}")


def recorded(config: RunConfig) -> dict:
    """The config as written to summary.json and checkpoints: ``to_dict`` plus ``loss.resolved``, every
    option of the method with its effective value (``frkd.losses.resolved_loss_options``)."""
    from .losses import resolved_loss_options

    out = config.to_dict()
    out["loss"]["resolved"] = resolved_loss_options(config.loss.method, config.loss.options, config.data.dataset)
    return out
