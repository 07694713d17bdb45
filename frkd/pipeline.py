"""The trainer as a library: data -> models -> loss -> engine, driven by a ``RunConfig``.

``run(config)`` validates the config, loads every checkpoint it names (teacher, cached teacher,
resume file) and the student's ImageNet weights before any training, then trains the teacher
(unless given or cached), then the student, and returns the summary (also summary.json).
``frkd.train``, ``frkd.compare`` and the scripts call these functions; docs/trainer.md describes
the outputs and the rules for an out dir that already holds a run.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass

import torch

from . import checkpoint
from .checkpoint import CheckpointError, seed_everything
from .config import (NO_PRETRAINED, RUN_FILES, SYNTHETIC_PRETEXT, ConfigError, DataConfig, RunConfig, recorded, resolve,
                     resume_file, validate)
from .distributed import DistEnv, barrier, init_distributed
from .engine import Trainer, check_resumable, evaluate_model, place_model
from .run_log import MetricsLog, write_json

RESUME_HINT = "; resume from best.pt instead (--resume <out-dir>/best.pt) or start afresh with --overwrite"
PLOT_FILES = ("miou.png", "losses_teacher.png", "losses_student.png")


def say(env: DistEnv, message: str) -> None:
    if env.is_main:
        print(message, flush=True)


# ---------------------------------------------------------------- data
def build_split(data: DataConfig, split: str, train: bool, seed: int):
    """One split of ``data.dataset``; dataset errors (missing files, bad labels) become ConfigError."""
    from .data import build_dataset

    kw = {"num_classes": data.num_classes} if data.dataset in ("synthetic", "folder") else {}
    if train and data.label_noise:
        kw["label_noise"] = data.label_noise
    if data.dataset == "folder":
        kw["ignore_label"] = data.ignore_label
    length = data.train_length if train else data.val_length
    if length is not None:
        kw["length"] = length
    try:
        return build_dataset(data.dataset, data.root, split, crop_size=data.crop_size, train=train,
                             seed=data.data_seed if data.data_seed is not None else seed, **kw)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"--data {data.root}: {error}") from error


def build_datasets(config: RunConfig):
    """(train, val) datasets of the config."""
    return (build_split(config.data, "train", True, config.runtime.seed),
            build_split(config.data, "val", False, config.runtime.seed))


# ---------------------------------------------------------------- models
WEIGHT_KEYS = ("arch", "backbone", "num_classes", "width")  # what a checkpoint's weights depend on


def model_config(arch: str, backbone: str, num_classes: int, width: int, *, aux: bool = True,
                 feature_tap: str = "pre-dropout", feature: str | None = None, logits: str | None = None) -> dict:
    """``feature`` / ``logits``: module paths of a package.module:callable ``arch`` (None otherwise)."""
    return {"arch": arch, "backbone": backbone, "num_classes": num_classes, "width": width, "aux": aux,
            "feature_tap": feature_tap, "feature": feature, "logits": logits}


def student_model_config(config: RunConfig) -> dict:
    m = config.model
    return model_config(m.student_model, m.student_backbone, config.data.num_classes, m.width, aux=m.aux,
                        feature_tap=m.feature_tap, feature=m.student_feature, logits=m.student_logits)


def teacher_model_config(config: RunConfig) -> dict:
    m = config.model
    return model_config(m.teacher_model, m.teacher_backbone, config.data.num_classes, m.teacher_width,
                        feature_tap=m.feature_tap, feature=m.teacher_feature, logits=m.teacher_logits)


def pretrained_base_path(value: str | None, backbone: str, width: int, pretext_seed: int = 0) -> str | None:
    """The backbone weights file of a ``--*-pretrained-base`` value: a path, ``synthetic-pretext`` (the
    synthetic benchmark's pretext backbone for this backbone, width and draw: built once and
    cached, frkd.pretext), or None / ``none`` for random initialisation."""
    if value in (None, NO_PRETRAINED):
        return None
    if value == SYNTHETIC_PRETEXT:
        from .pretext import pretext_backbone_path

        return pretext_backbone_path(backbone, width, seed=pretext_seed)
    return value


def build_from_config(mc: dict, pretrained: str | None = None, role: str = "pretrained", prefix: str = "teacher"):
    """The model of a model config (``model_config``, any model of the registry); backbone weights from
    ``pretrained`` (a ``pretrained_base_path`` value; errors name ``role``, model errors --<prefix>-model)."""
    from .models import build_segmentation_model

    try:
        return build_segmentation_model(mc["arch"], mc["backbone"], mc["num_classes"], width=mc["width"],
                                        aux=mc.get("aux", True), feature_tap=mc.get("feature_tap", "pre-dropout"),
                                        pretrained=pretrained, feature=mc.get("feature"), logits=mc.get("logits"),
                                        role=f"--{prefix}-model")
    except (FileNotFoundError, ValueError) as error:
        if pretrained is None:
            raise ConfigError(str(error)) from error
        raise ConfigError(f"{role} {pretrained}: {str(error).removeprefix('pretrained: ')}") from error


@dataclass
class LoadedTeacher:
    model: torch.nn.Module
    config: dict
    miou: float | None  # None for a checkpoint from elsewhere (measured on this val set)
    per_class_iou: list | None


def teacher_from_state(state: dict, path: str, role: str, config: RunConfig) -> LoadedTeacher:
    """The teacher of a frkd checkpoint (its model config) or a bare state_dict (the flags); the
    feature tap is the run's. Raises CheckpointError naming ``path`` when the weights do not fit."""
    expected = teacher_model_config(config)
    weights = checkpoint.model_state(state, path, role)
    stored = state.get("model_config") or {}
    mc = {**expected, **{k: stored[k] for k in WEIGHT_KEYS if k in stored},
          "aux": any(k.startswith("aux_head.") for k in weights)}
    if mc["num_classes"] != expected["num_classes"]:
        raise CheckpointError(f"{role} {path}: expected a teacher of {expected['num_classes']} classes "
                              f"(--dataset {config.data.dataset}), found {mc['num_classes']}")
    teacher = build_from_config(mc)
    try:
        teacher.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{role} {path}: expected the weights of a {mc['arch']}-{mc['backbone']} (width "
                              f"{mc['width']}) as --teacher-model/--teacher-backbone/--teacher-width say, found "
                              f"others ({str(error).splitlines()[0]})") from error
    return LoadedTeacher(teacher, mc, state.get("miou"), state.get("per_class_iou"))


def cached_teacher_path(config: RunConfig) -> str:
    return os.path.join(config.runtime.out_dir, "teacher.pt")


def load_given_teacher(config: RunConfig) -> LoadedTeacher | None:
    """--teacher-pretrained, else a cached <out-dir>/teacher.pt that matches the flags, else None (train one)."""
    if config.model.teacher_ckpt:
        path = config.model.teacher_ckpt
        return teacher_from_state(checkpoint.load(path, "--teacher-pretrained"), path, "--teacher-pretrained", config)
    cached = cached_teacher_path(config)
    if not os.path.exists(cached):
        return None
    hint = "; delete it to train a new teacher, or pass --teacher-pretrained"
    state = checkpoint.load(cached, "cached teacher", hint)
    expected = {k: teacher_model_config(config)[k] for k in WEIGHT_KEYS}
    found = {k: (state.get("model_config") or {}).get(k) for k in WEIGHT_KEYS}
    if found != expected:
        raise ConfigError(f"cached teacher {cached}: expected {expected} (the teacher flags), found {found}{hint}")
    base, found_base = teacher_base(config.to_dict()), teacher_base((state.get("config") or {}))
    if found_base != base:
        raise ConfigError(f"cached teacher {cached}: expected one trained from {base} (the teacher flags), found one "
                          f"trained from {found_base}{hint}")
    return teacher_from_state(state, cached, "cached teacher", config)


def teacher_base(recorded_config: dict) -> dict:
    """The backbone weights a teacher trained here starts from, as a recorded config names them (a config from
    before ``pretext_seed`` existed used draw 0)."""
    m = recorded_config.get("model", {})
    base = m.get("teacher_pretrained_base")
    return {"teacher_pretrained_base": base, "pretext_seed": m.get("pretext_seed", 0) if base == SYNTHETIC_PRETEXT else None}


def train_teacher(config: RunConfig, env: DistEnv, train_set, val_set, log: MetricsLog) -> LoadedTeacher:
    """Trains the teacher (resuming <out-dir>/teacher/last.pt under --resume) and caches it as teacher.pt."""
    mc = teacher_model_config(config)
    cached = cached_teacher_path(config)
    say(env, f"teacher: no --teacher-pretrained, training {mc['arch']}-{mc['backbone']} (width {mc['width']}) for "
             f"{config.optim.teacher_iterations} iterations first; it is cached as {cached}")
    teacher_dir = os.path.join(config.runtime.out_dir, "teacher")
    if env.is_main:
        os.makedirs(teacher_dir, exist_ok=True)
    # the teacher phase leaves the caller's random stream as it found it: the student's distillation
    # modules (FRKD's φ, the CWD/FitNet projections) start the same whether the teacher was trained here
    # or loaded (teacher.pt, --teacher-ckpt)
    with torch.random.fork_rng(devices=[env.device] if env.device.type == "cuda" else []):
        seed_everything(config.runtime.seed)
        base = pretrained_base_path(config.model.teacher_pretrained_base, mc["backbone"], mc["width"],
                                    config.model.pretext_seed)
        model = build_from_config(mc, base, "--teacher-pretrained-base")
        check_head_lr(model, config, "--teacher-model")
        model = place_model(model, env)
        trainer = Trainer(phase="teacher", model=model, distill=None, train_set=train_set,
                          val_set=val_set, num_classes=mc["num_classes"],
                          max_iterations=config.optim.teacher_iterations, config=config, env=env,
                          out_dir=teacher_dir, log=log, model_config=mc, recorded=recorded(config))
        resume = os.path.join(teacher_dir, "last.pt")
        state = None
        if config.runtime.resume is not None and os.path.exists(resume):
            state = checkpoint.load(resume, "teacher checkpoint", RESUME_HINT)
        result = run_phase(trainer, env, state, resume)
    if env.is_main:
        checkpoint.save_atomic({"model": trainer.model.state_dict(), "model_config": mc, "miou": result["miou"],
                                "per_class_iou": result["per_class_iou"], "config": recorded(config)}, cached)
    barrier()
    return LoadedTeacher(trainer.model, mc, result["miou"], result["per_class_iou"])


def build_student(config: RunConfig):
    """The freshly seeded student (ImageNet weights from --student-pretrained-base; backbone stages frozen
    as --student-frozen-stages says)."""
    seed_everything(config.runtime.seed)
    mc = student_model_config(config)
    student = build_from_config(mc, pretrained_base_path(config.model.student_pretrained_base, mc["backbone"],
                                                         mc["width"], config.model.pretext_seed),
                                "--student-pretrained-base", "student")
    if config.model.student_frozen_stages != -1:  # validate: a ResNet backbone
        student.backbone.freeze_stages(config.model.student_frozen_stages)
    check_head_lr(student, config, "--student-model")
    return student


def check_head_lr(model, config: RunConfig, role: str) -> None:
    """--head-lr-mult ≠ 1 needs the model's ``backbone`` to tell backbone from head parameters."""
    if config.optim.head_lr_mult != 1.0 and getattr(model, "backbone", None) is None:
        raise ConfigError(f"--head-lr-mult {config.optim.head_lr_mult:g}: {role} has no .backbone attribute that "
                          "tells backbone from head parameters; expected --head-lr-mult 1")


def build_distillation(config: RunConfig, student, teacher):
    """The ``Distiller`` of the config (its loss with every option resolved; feature and logits by the models'
    ``feature_path`` / ``logits_path``), or None for method ``none`` / no teacher. Both models on one device."""
    from .distill import Distiller
    from .losses import resolved_loss_options

    if teacher is None or config.loss.method == "none":
        return None
    options = resolved_loss_options(config.loss.method, config.loss.options, config.data.dataset)
    return Distiller(student, teacher, config.loss.method, num_classes=config.data.num_classes,
                     student_feature=student.feature_path, teacher_feature=teacher.feature_path,
                     student_logits=student.logits_path, teacher_logits=teacher.logits_path,
                     student_channels=student.feat_channels, teacher_channels=teacher.feat_channels,
                     ignore_index=config.data.ignore_label, **options)


def student_trainer(config: RunConfig, env: DistEnv, train_set, val_set, teacher, log: MetricsLog,
                    student=None) -> Trainer:
    """The student phase: ``student`` (default: ``build_student``) and its distillation loss against
    ``teacher`` (no distillation when ``teacher`` is None)."""
    student = place_model(build_student(config) if student is None else student, env)
    teacher = teacher.to(env.device) if teacher is not None else None
    return Trainer(phase="student", model=student, distill=build_distillation(config, student, teacher),
                   train_set=train_set, val_set=val_set, num_classes=config.data.num_classes,
                   max_iterations=config.optim.max_iterations, config=config, env=env, out_dir=config.runtime.out_dir,
                   log=log, model_config=student_model_config(config), recorded=recorded(config))


def run_phase(trainer: Trainer, env: DistEnv, state: dict | None, path: str | None) -> dict:
    """Resumes from ``state`` (the checkpoint at ``path``) when given and trains; metrics.jsonl keeps this
    phase's records up to the start iteration only."""
    if state is not None:
        trainer.load_state_dict(state, path)
        say(env, f"[{trainer.phase}] resumed from {path} at iteration {trainer.iteration}")
    trainer.log.truncate_after(trainer.phase, trainer.iteration)
    return trainer.fit()


def clear_run(out_dir: str) -> None:
    """Removes the run files of ``out_dir`` (--overwrite); the cached teacher.pt stays."""
    for name in RUN_FILES + PLOT_FILES:
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            os.remove(path)
    shutil.rmtree(os.path.join(out_dir, "teacher"), ignore_errors=True)


# ---------------------------------------------------------------- the run
def provenance(config: RunConfig, teacher: LoadedTeacher | None) -> dict:
    """What decides the numbers besides the config: the machine and versions (frkd.provenance), the backbone
    files this run's models start from (for the teacher: the one a teacher trained here starts from) and the
    teacher's weights, identified by their tensor hashes."""
    from .provenance import file_state_hash, machine, state_hash

    m = config.model
    out = {"machine": machine()}
    for role, value, backbone, width in (("student", m.student_pretrained_base, m.student_backbone, m.width),
                                         ("teacher", m.teacher_pretrained_base, m.teacher_backbone, m.teacher_width)):
        path = pretrained_base_path(value, backbone, width, m.pretext_seed)
        out[f"{role}_backbone"] = {"file": path, "state_hash": file_state_hash(path)} if path else None
    out["teacher_state_hash"] = state_hash(teacher.model.state_dict()) if teacher is not None else None
    return out


def write_summary(path: str, summary: dict) -> None:
    """Writes summary.json; the summaries a resumed run wrote before are kept under ``history`` (oldest first),
    and ``total_wall_time_s`` adds up the wall time of every recorded session."""
    history = []
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        history = previous.pop("history", []) + [previous]
    summary = {**summary, "history": history,
               "total_wall_time_s": summary["wall_time_s"] + sum(h.get("wall_time_s") or 0 for h in history)}
    write_json(path, summary)


def prepare(config: RunConfig, world_size: int | None = None) -> RunConfig:
    """``resolve`` + ``validate``: the config a run uses; raises ConfigError on a user error."""
    return validate(resolve(config), world_size)


def run(config: RunConfig, env: DistEnv | None = None) -> dict:
    """One run (teacher phase unless given or cached, then the student); returns the summary.

    Raises ConfigError/CheckpointError for user errors (all found before any training), NonFiniteLoss,
    or TrainingStopped (Ctrl-C, SIGTERM, --stop-at-iteration) after saving last.pt.
    """
    from .metrics import format_metrics
    from .plots import plot_run

    started = time.time()
    config = prepare(config, env.world_size if env is not None else None)
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    env = env or init_distributed(config.runtime.device)
    out_dir = config.runtime.out_dir
    # every file the run needs, before any work
    teacher = load_given_teacher(config) if config.loss.method != "none" else None
    resume = resume_file(config)
    resume_state = checkpoint.load(resume, "--resume", RESUME_HINT) if resume else None
    student = build_student(config)
    train_set, val_set = build_datasets(config)
    if resume_state is not None:
        check_resumable(resume_state, resume, "student", config)
    if env.is_main:
        if config.runtime.overwrite:
            clear_run(out_dir)
        os.makedirs(out_dir, exist_ok=True)
    barrier()
    log = MetricsLog(out_dir, enabled=env.is_main)
    say(env, f"frkd.train: {config.data.dataset} ({len(train_set)} train / {len(val_set)} val images, "
             f"{config.data.num_classes} classes), method {config.loss.method}, device {env.device}, world size "
             f"{env.world_size}, out {out_dir}")
    if env.distributed and env.device.type != "cuda":
        say(env, "note: SyncBatchNorm needs CUDA; on CPU each rank keeps its own BatchNorm statistics")

    if config.loss.method != "none":
        if teacher is None:
            teacher = train_teacher(config, env, train_set, val_set, log)
        elif config.model.teacher_ckpt:
            say(env, f"teacher: loaded --teacher-pretrained {config.model.teacher_ckpt}")
        else:
            say(env, f"teacher: reusing the cached {cached_teacher_path(config)} (mIoU {100 * teacher.miou:.2f}); "
                     "delete it to retrain")
        if teacher.miou is None:  # a checkpoint from elsewhere: measure it once on this validation set
            result = evaluate_model(teacher.model.to(env.device), val_set, config, env)
            teacher.miou, teacher.per_class_iou = result["miou"], result["per_class_iou"]
            say(env, f"teacher: mIoU {100 * teacher.miou:.2f} on {config.data.dataset} val")
    trainer = student_trainer(config, env, train_set, val_set, teacher.model if teacher else None, log, student)
    if config.runtime.resume == "auto" and resume is None:
        say(env, f"--resume auto: no {os.path.join(out_dir, 'last.pt')} yet, starting the student from scratch")
    result = run_phase(trainer, env, resume_state, resume)
    summary = {
        "teacher_miou": teacher.miou if teacher else None,
        "teacher_per_class_iou": teacher.per_class_iou if teacher else None,
        "teacher": teacher.config if teacher else None,
        "student_miou": result["miou"], "student_pixel_acc": result["pixel_acc"],
        "student_per_class_iou": result["per_class_iou"], "student_best_miou": trainer.best_miou,
        "student": trainer.model_config, "class_names": list(getattr(train_set, "class_names", [])),
        "term_scales": trainer.term_scales, "iterations": trainer.iteration, "wall_time_s": time.time() - started, "world_size": env.world_size,
        "config": recorded(config), "provenance": provenance(config, teacher),
    }
    if env.is_main:
        write_summary(os.path.join(out_dir, "summary.json"), summary)
        plots = plot_run(out_dir)
        print(format_metrics(result, summary["class_names"]))
        if teacher is not None:
            print(f"teacher mIoU {100 * teacher.miou:.2f}")
        print(f"student mIoU {100 * result['miou']:.2f}  ({config.loss.method}; best {100 * trainer.best_miou:.2f})")
        print(f"wrote {os.path.join(out_dir, 'summary.json')}, metrics.jsonl, {len(plots)} plots "
              f"in {summary['wall_time_s']:.0f} s")
    return summary
