"""The training loop shared by the teacher phase (method none) and the distillation phase.

One iteration: poly LR, the forward (the model alone, or a ``frkd.distill.Distiller``: the frozen
teacher under no_grad, then the student), CE on the upsampled logits + 0.4·CE(aux) + the distillation
terms, a finite-loss check, backward (with a GradScaler for fp16), SGD step; then, when the loss has a
discriminator (``discriminator_parameters()`` not empty), one Adam step of the discriminator on
``discriminator_loss`` of the detached student maps. The student's SGD never updates the
discriminator. Checkpoints hold everything needed for a bit-exact resume (docs/trainer.md).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from collections import defaultdict

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from . import checkpoint
from .config import RunConfig, flag
from .distill import Distiller
from .distributed import DistEnv, all_reduce_mean, any_rank
from .inference import evaluate
from .interrupts import StopSignal, ignore_sigint_in_worker
from .run_log import MetricsLog
from .sampling import IterationBatchSampler, SeededSamples, rank_shard

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AUX_WEIGHT = 0.4
DISCRIMINATOR_BETAS = (0.9, 0.99)  # CIRKD's Adam for the discriminator


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or inf; the message names the term and the iteration."""


class TrainingStopped(Exception):
    """The run stopped early (Ctrl-C, SIGTERM or --stop-at-iteration) after saving last.pt."""

    def __init__(self, iteration: int, path: str, reason: str):
        super().__init__(f"{reason}: stopped after iteration {iteration}; saved {path} "
                         f"(continue with --resume auto)")
        self.iteration, self.path, self.reason = iteration, path, reason


def param_groups(params: list, backbone: nn.Module, head_lr_mult: float) -> list[dict]:
    """SGD groups of ``params``: the backbone's at the base lr (``lr_mult`` 1), the others (heads, loss
    connectors) at ``head_lr_mult`` × it; one group when ``head_lr_mult`` is 1. ``backbone`` None: a model
    without a ``backbone`` attribute, which takes ``head_lr_mult`` 1 only."""
    if head_lr_mult == 1.0:
        return [{"params": params, "lr_mult": 1.0}]
    if backbone is None:
        raise ValueError(f"--head-lr-mult {head_lr_mult:g}: the model has no .backbone attribute that tells backbone "
                         "from head parameters; pass --head-lr-mult 1")
    own = {id(p) for p in backbone.parameters()}
    return [{"params": [p for p in params if id(p) in own], "lr_mult": 1.0},
            {"params": [p for p in params if id(p) not in own], "lr_mult": head_lr_mult}]


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float) -> float:
    """base_lr · (1 − iteration / max_iterations)^power."""
    return base_lr * (1.0 - iteration / max_iterations) ** power


def task_terms(out, labels: torch.Tensor, *, ignore_index: int = 255,
               align_corners: bool = False) -> dict[str, torch.Tensor]:
    """CE of the logits upsampled to the label size (B×H×W, ``ignore_index`` ignored), plus 0.4·CE of the
    aux logits."""
    size = labels.shape[-2:]

    def ce(logits):
        up = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=align_corners)
        return F.cross_entropy(up, labels, ignore_index=ignore_index)

    terms = {"ce": ce(out.logits)}
    if out.aux is not None:
        terms["aux_ce"] = AUX_WEIGHT * ce(out.aux)
    return terms


class StepModule(nn.Module):
    """The trainable part of a step: the model and the distiller (its loss's adapters, e.g. the 1×1 conv φ).

    One module so that DDP synchronises the gradients of both with one wrapper (a discriminator of the
    loss is left out of it: the engine averages its gradients itself). The distiller holds the teacher
    outside the module tree.
    """

    def __init__(self, model: nn.Module, distill: Distiller | None, *, ignore_index: int, align_corners: bool):
        super().__init__()
        self.model = model
        self.distill = distill
        self.ignore_index, self.align_corners = ignore_index, align_corners

    def forward(self, images, labels):
        """(task terms, the distiller's DistillOutput or None, student SegOutput). The task loss is built
        before the distillation terms, as the runs of the method table were."""
        captured = self.distill.capture(images) if self.distill is not None else None
        out = captured.student if captured is not None else self.model(images)
        task = task_terms(out, labels, ignore_index=self.ignore_index, align_corners=self.align_corners)
        distilled = self.distill.distill(captured, labels) if captured is not None else None
        return task, distilled, out


def place_model(model: nn.Module, env: DistEnv) -> nn.Module:
    """``model`` on the run's device, with SyncBatchNorm under multi-GPU DDP (before a Distiller hooks it)."""
    if env.distributed and env.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(env.device)


def evaluate_model(model: nn.Module, val_set, config: RunConfig, env: DistEnv) -> dict:
    """Metrics of ``model`` on this rank's shard of ``val_set``, all-reduced (config: val_batch_size, workers,
    amp, eval_mode, crop_size, ignore_label, align_corners)."""
    d = config.data
    shard = Subset(val_set, rank_shard(len(val_set), env.rank, env.world_size))
    loader = DataLoader(shard, batch_size=d.val_batch_size, shuffle=False, num_workers=d.workers,
                        pin_memory=env.device.type == "cuda", generator=torch.Generator())
    return evaluate(model, loader, val_set.num_classes, env.device, amp_dtype=AMP_DTYPES[config.optim.amp],
                    ignore_index=d.ignore_label, mode=config.runtime.eval_mode, crop=d.crop_size,
                    align_corners=config.model.align_corners)


def check_resumable(state: dict, path: str, phase: str, config: RunConfig) -> None:
    """Raises CheckpointError naming ``path`` when the checkpoint ``state`` cannot continue ``phase`` of ``config``."""
    if state.get("phase") != phase or "optimizer" not in state:
        raise checkpoint.CheckpointError(f"--resume {path}: expected a {phase}-phase checkpoint of frkd.train, found "
                                         f"phase {state.get('phase')!r}; pass one of this phase or start afresh "
                                         "with --overwrite")
    batch = state["data"]["global_batch"]
    if batch != config.optim.batch_size:
        raise checkpoint.CheckpointError(f"--resume {path}: expected --batch-size {batch} as the checkpoint's run "
                                         f"(the data order would differ), got {config.optim.batch_size}")
    # the fields that shape the optimizer's parameter groups (defaults: checkpoints written before them)
    group_fields = [("optim", "head_lr_mult", 1.0)]
    if phase == "student":
        group_fields.append(("model", "student_frozen_stages", -1))
    saved = state.get("config") or {}
    for section, name, before in group_fields:
        value, current = saved.get(section, {}).get(name, before), getattr(getattr(config, section), name)
        if value != current:
            raise checkpoint.CheckpointError(f"--resume {path}: expected {flag(name)} {value:g} as the checkpoint's "
                                             f"run (its optimizer holds other parameter groups), got {current:g}")


class Trainer:
    """Trains ``model`` (placed by ``place_model``), distilled by ``distill`` when given (a Distiller whose
    student is ``model``), for one phase.

    phase: "teacher" or "student" (names records and checkpoints); out_dir: where last.pt/best.pt go;
    config: the run's config (optimisation, schedule, data loading); recorded: the config as written to
    checkpoints (``frkd.config.recorded``).
    """

    def __init__(self, *, phase: str, model: nn.Module, distill: Distiller | None,
                 train_set, val_set, num_classes: int, max_iterations: int, config: RunConfig, env: DistEnv,
                 out_dir: str, log: MetricsLog, model_config: dict, recorded: dict):
        self.phase, self.config, self.env, self.out_dir, self.log = phase, config, env, out_dir, log
        self.recorded = recorded
        o = config.optim
        self.num_classes, self.max_iterations, self.model_config = num_classes, max_iterations, model_config
        self.train_set, self.val_set = train_set, val_set
        device = env.device
        self.model = model
        self.distill = distill.to(device) if distill is not None else None
        step = StepModule(self.model, self.distill, ignore_index=config.data.ignore_label,
                          align_corners=config.model.align_corners)
        self.discriminator = list(self.distill.discriminator_parameters()) if self.distill is not None else []
        own = {id(p) for p in self.discriminator}
        if env.distributed:
            if own:
                DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                    step, [name for name, p in step.named_parameters() if id(p) in own])
            step = DistributedDataParallel(step, device_ids=[device] if device.type == "cuda" else None)
        self.step = step
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.distill is not None:
            params += [p for p in self.distill.parameters() if p.requires_grad]
        backbone = getattr(self.model, "backbone", None)
        self.optimizer = torch.optim.SGD(param_groups(params, backbone, o.head_lr_mult), lr=o.lr,
                                         momentum=o.momentum, weight_decay=o.weight_decay)
        self.d_optimizer = torch.optim.Adam(self.discriminator, lr=o.lr_d, betas=DISCRIMINATOR_BETAS) \
            if self.discriminator else None
        self.amp_dtype = AMP_DTYPES[o.amp]
        self.scaler = torch.amp.GradScaler(device.type, enabled=o.amp == "fp16")
        self.iteration = 0
        self.term_scales: dict[str, float] | None = None  # set by the gradient calibration (--distill-grad-ratio)
        self.best_miou = -math.inf
        self.last_eval = None
        checkpoint.seed_everything(config.runtime.seed + 7919 * env.rank)  # per-rank dropout; a resume restores its own

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        rng = checkpoint.rng_state()
        if self.env.distributed:
            per_rank = [None] * self.env.world_size
            dist.all_gather_object(per_rank, rng)
        else:
            per_rank = [rng]
        return {
            "phase": self.phase, "iteration": self.iteration, "max_iterations": self.max_iterations,
            "model": self.model.state_dict(), "model_config": self.model_config,
            "loss": self.distill.loss.state_dict() if self.distill is not None else {},
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "d_optimizer": self.d_optimizer.state_dict() if self.d_optimizer is not None else None,
            "best_miou": self.best_miou, "last_eval": self.last_eval, "rng": per_rank,
            "term_scales": self.term_scales,
            "data": {"seed": self.config.runtime.seed, "global_batch": self.config.optim.batch_size,
                     "position": self.iteration * self.config.optim.batch_size},
            "config": self.recorded,
        }

    def load_state_dict(self, state: dict, path: str = "checkpoint") -> None:
        check_resumable(state, path, self.phase, self.config)
        self.model.load_state_dict(state["model"])
        if self.distill is not None:
            self.distill.loss.load_state_dict(state["loss"])
        if self.d_optimizer is not None:
            self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.best_miou, self.last_eval = state["iteration"], state["best_miou"], state["last_eval"]
        self.term_scales = state.get("term_scales")
        rng = state["rng"]
        checkpoint.set_rng_state(rng[self.env.rank] if len(rng) == self.env.world_size else rng[0])

    def save(self, name: str) -> str:
        """Writes <out_dir>/<name> from rank 0 (all ranks must call: RNG states are gathered)."""
        path = os.path.join(self.out_dir, name)
        state = self.state_dict()
        if self.env.is_main:
            checkpoint.save_atomic(state, path)
        return path

    # ---------------------------------------------------------------- data
    def _train_loader(self) -> DataLoader:
        workers = self.config.data.workers
        sampler = IterationBatchSampler(len(self.train_set), self.config.optim.batch_size, self.env.rank,
                                        self.env.world_size, self.config.runtime.seed, self.iteration,
                                        self.max_iterations)
        return DataLoader(SeededSamples(self.train_set), batch_sampler=sampler, num_workers=workers,
                          pin_memory=self.env.device.type == "cuda", generator=torch.Generator(),
                          worker_init_fn=ignore_sigint_in_worker if workers else None)

    # ---------------------------------------------------------------- loop
    def evaluate(self) -> dict:
        result = evaluate_model(self.model, self.val_set, self.config, self.env)
        self.last_eval = result
        self.log.write({"phase": self.phase, "iteration": self.iteration, **result})
        return result

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.amp_dtype)

    def _check_finite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        local_bad = not bool(torch.isfinite(loss.detach()))
        if not any_rank(local_bad, self.env.device):
            return
        at = f"at iteration {self.iteration + 1} ({self.phase} phase)"
        for name, value in terms.items():
            v = value.detach().float()
            if not bool(torch.isfinite(v)):
                raise NonFiniteLoss(f"loss term '{name}' is {v.item()} {at}; stopping "
                                    f"(last good checkpoint: {os.path.join(self.out_dir, 'last.pt')}). "
                                    "Try a lower --lr, --amp none or other loss weights.")
        raise NonFiniteLoss(f"the loss is non-finite on another rank {at}; stopping")

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        lr = poly_lr(self.config.optim.lr, self.iteration, self.max_iterations, self.config.optim.power)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)  # checkpoints before lr_mult had one group at 1
        with self._autocast():
            task, distilled, out = self.step(images, labels)
        distill = distilled.terms if distilled is not None else {}
        if distill and self.config.loss.grad_ratio and self.term_scales is None:
            self.term_scales = self._calibrate(task, distill, distilled.student_maps.feat)
        terms = {**task, **self._scaled(distill)}
        loss = sum(t.float() for t in terms.values())
        self._check_finite(loss, terms)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        values = {**{k: v.detach().float() for k, v in terms.items()}, "loss": loss.detach()}
        if self.d_optimizer is not None:
            values["discriminator"] = self._discriminator_step(distilled)
        self.iteration += 1
        return values

    def _scaled(self, distill: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The distillation terms times their calibrated scales and the warm-up factor
        min(1, (iteration + 1) / --distill-warmup)."""
        warmup = self.config.loss.warmup_iters
        factor = min(1.0, (self.iteration + 1) / warmup) if warmup else 1.0
        scales = self.term_scales or {}
        return {name: term * (factor * scales.get(name, 1.0)) for name, term in distill.items()}

    def _calibrate(self, task: dict[str, torch.Tensor], distill: dict[str, torch.Tensor],
                   feat: torch.Tensor) -> dict[str, float]:
        """Scales s_t such that each distillation term's gradient on the student feature, ‖∂(s_t·L_t)/∂F_S‖,
        is grad_ratio / n times the task loss's (n: terms with a gradient; 1 with --distill-grad-per-term),
        on this first batch; norms are averaged over ranks. Terms without a gradient on F_S (e.g. a zero weight)
        keep scale 1. ``feat``: F_S as the loss saw it."""
        norms = {}
        for name, term in {"task": sum(task.values()), **distill}.items():
            grad = torch.autograd.grad(term.float(), feat, retain_graph=True, allow_unused=True)[0] \
                if term.requires_grad else None
            norms[name] = grad.float().norm() if grad is not None else torch.zeros((), device=feat.device)
        norms = all_reduce_mean(norms)
        live = [name for name in distill if norms[name] > 0]
        share = 1 if self.config.loss.grad_per_term else max(1, len(live))  # a ρ per term, or ρ shared by n
        target = self.config.loss.grad_ratio * norms["task"] / share
        scales = {name: (target / norms[name] if name in live else 1.0) for name in distill}
        self.log.write({"phase": self.phase, "iteration": self.iteration, "calibration": {
            "grad_ratio": self.config.loss.grad_ratio, "per_term": self.config.loss.grad_per_term, "task_grad_norm": norms["task"],
            "term_grad_norms": {n: norms[n] for n in distill}, "term_scales": scales}})
        return scales

    def _discriminator_step(self, distilled) -> torch.Tensor:
        """One Adam step of the loss's discriminator on the detached student maps of ``distilled`` (float32, no
        autocast); under DDP its gradients are averaged over ranks. Returns the discriminator loss."""
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss = self.distill.discriminator_loss(distilled).float()
        self._check_finite(d_loss, {"discriminator": d_loss})
        d_loss.backward()
        if self.env.distributed:
            for p in self.discriminator:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.env.world_size
        self.d_optimizer.step()
        return d_loss.detach()

    def _log_window(self, sums: dict, count: int, lr: float, step_seconds: float) -> None:
        """One metrics.jsonl record: window means over ranks; it_per_s counts training steps only."""
        means = all_reduce_mean({k: v / count for k, v in sums.items()})
        self.log.write({"phase": self.phase, "iteration": self.iteration, "lr": lr, **means,
                        "it_per_s": count / max(step_seconds, 1e-9)})

    def _stop(self, reason: str):
        path = self.save("last.pt")
        raise TrainingStopped(self.iteration, path, reason)

    def fit(self) -> dict:
        """Trains up to max_iterations (from self.iteration); returns the final evaluation."""
        a = self.config.runtime
        self.model.train()
        if self.iteration >= self.max_iterations:
            return self.last_eval or self.evaluate()
        sums, count, step_seconds = defaultdict(float), 0, 0.0
        bar = tqdm(total=self.max_iterations, initial=self.iteration, desc=self.phase, dynamic_ncols=True,
                   disable=not self.env.is_main, mininterval=1.0)
        with StopSignal() as stop, bar:
            batches = iter(self._train_loader())
            while self.iteration < self.max_iterations:
                if any_rank(stop.requested is not None, self.env.device):
                    self._stop(stop.requested or "stopped by another rank")
                step_started = time.perf_counter()
                images, labels = next(batches)
                images = images.to(self.env.device, non_blocking=True)
                labels = labels.to(self.env.device, non_blocking=True)
                values = self._train_step(images, labels)
                for k, v in values.items():
                    sums[k] = sums[k] + v
                count += 1
                step_seconds += time.perf_counter() - step_started
                lr = self.optimizer.param_groups[0]["lr"]
                bar.update(1)
                if self.env.is_main:
                    bar.set_postfix(loss=f"{values['loss'].item():.4f}", lr=f"{lr:.2e}", refresh=False)
                last = self.iteration == self.max_iterations
                if self.iteration % a.log_per_iters == 0 or last:
                    self._log_window(sums, count, lr, step_seconds)
                    sums, count, step_seconds = defaultdict(float), 0, 0.0
                if self.iteration % a.val_per_iters == 0 or last:
                    result = self.evaluate()
                    if result["miou"] > self.best_miou:
                        self.best_miou = result["miou"]
                        self.save("best.pt")
                    if self.env.is_main:
                        bar.write(f"[{self.phase}] iteration {self.iteration}: mIoU {100 * result['miou']:.2f} "
                                  f"(best {100 * self.best_miou:.2f})")
                if self.iteration % a.save_per_iters == 0 or last:
                    self.save("last.pt")
                if a.stop_at_iteration is not None and self.iteration == a.stop_at_iteration and not last:
                    self._stop(f"--stop-at-iteration {a.stop_at_iteration}")
        return self.last_eval
