"""Why FRKD trails KD/CWD on the synthetic benchmark: filter statistics and per-term gradients.

Two measurements with the real code (docs/method.md, "Why FRKD trails here"):

``filter``: the table's teacher on augmented crops of the benchmark's training set (the trainer's
random scale/crop/flip, epoch 0): fractions of the stride-8 pixels that are valid, pseudo
(teacher wrong), fg, bg, coord, boundary (a 3×3 neighbour has another label), per class; the
per-image τ; where the feature-MSE and KD weights land (background vs object pixels).

``grads``: trains one benchmark ``frkd`` student (exactly as ``frkd.compare`` does, seeds ≥ 100
only) and, at a few iterations, the norm of the gradient each λ-weighted term sends into the
student's feature (B×C_s×h×w) on one fixed batch, and its cosine with the CE gradient.

    python scripts/diagnose_frkd.py filter --crops 400
    python scripts/diagnose_frkd.py grads --seed 100 --out-dir /tmp/diag/s100 [--flags "--lambda-feat 0.1"]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import torch
import torch.nn.functional as F

import frkd_kernels
from frkd import checkpoint, pipeline
from frkd.benchmark import Row, options_from_flags, run_config
from frkd.distributed import init_distributed
from frkd.engine import TrainingStopped, task_terms
from frkd.losses.base import resize_labels
from frkd.losses.frkd import pseudo_knowledge_filter, share
from frkd.run_log import MetricsLog

TEACHER = "runs/compare/teacher.pt"
CHECKPOINTS = (0, 50, 100, 200)


def teacher_of(config):
    teacher = pipeline.load_given_teacher(config).model
    return teacher.eval().requires_grad_(False)


def benchmark_run(seed: int, out_dir: str, flags: list[str], teacher_ckpt: str, **fields):
    """The config of the benchmark's frkd student (its synthetic defaults, then ``flags``)."""
    row = Row("frkd", "frkd", options_from_flags("frkd", flags))
    return run_config(row, seed=seed, out_dir=out_dir, device="cpu", teacher_ckpt=teacher_ckpt, **fields)


def boundary_pixels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """y B×h×w -> B×h×w bool: a valid pixel with a 3×3 neighbour of another class (or ignored)."""
    one_hot = F.one_hot(y.clamp(0, num_classes), num_classes + 1).permute(0, 3, 1, 2).float()
    present = F.max_pool2d(one_hot, 3, stride=1, padding=1)
    return present.sum(1) > 1


def filter_stats(crops: int, batch: int, teacher_ckpt: str) -> dict:
    """Filter fractions of the table's teacher on ``crops`` augmented training crops (see module doc)."""
    config = benchmark_run(0, "/tmp", [], teacher_ckpt)
    teacher = teacher_of(config)
    train_set, _ = pipeline.build_datasets(config)
    train_set.set_epoch(0)
    K = train_set.num_classes
    groups = ("all", "background", "objects", "on_boundary", "interior") + tuple(f"class{k}" for k in range(K))
    sums = {g: {m: 0.0 for m in ("pixels", "pseudo", "fg", "bg", "coord", "boundary", "feat_w", "kd_w")}
            for g in groups}
    total, valid_total, taus, feat_w_total, kd_w_total = 0, 0, [], 0.0, 0.0
    with torch.no_grad():
        for start in range(0, crops, batch):
            items = [train_set[i] for i in range(start, min(crops, start + batch))]
            images, labels = torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])
            out = teacher(images)
            y = resize_labels(labels, out.feat.shape[-2:])
            valid, fg, bg = pseudo_knowledge_filter(out.logits, y, num_classes=K)
            entropy, pred = frkd_kernels.teacher_entropy(out.logits, 1.0)
            n_valid = valid.flatten(1).sum(1).clamp_min(1)
            taus += (torch.where(valid, entropy, 0.0).flatten(1).sum(1) / n_valid).tolist()
            protos, counts = frkd_kernels.prototype_pool(out.feat, y, K, 255)
            intra, inter = frkd_kernels.class_distance_maps(out.feat, y, protos, counts, 255)
            coord = valid & fg & (intra - inter > 0)
            feat_w = share(fg) + 0.25 * share(bg) + share(coord)  # the synthetic defaults α, β, γ
            kd_w = share(fg)
            pseudo = valid & (pred != y)
            boundary = valid & boundary_pixels(y, K)
            total += y.numel()
            valid_total += int(valid.sum())
            feat_w_total += float(feat_w.sum())
            kd_w_total += float(kd_w.sum())
            selections = {"all": valid, "background": valid & (y == 0), "objects": valid & (y > 0),
                          "on_boundary": boundary, "interior": valid & ~boundary}
            selections.update({f"class{k}": valid & (y == k) for k in range(K)})
            for g, sel in selections.items():
                s = sums[g]
                s["pixels"] += int(sel.sum())
                for name, mask in (("pseudo", pseudo), ("fg", fg), ("bg", bg), ("coord", coord),
                                   ("boundary", boundary)):
                    s[name] += int((sel & mask).sum())
                s["feat_w"] += float(feat_w[sel].sum())
                s["kd_w"] += float(kd_w[sel].sum())
    report = {"crops": crops, "grid": list(y.shape[-2:]), "valid_of_all": valid_total / total,
              "tau": {"mean": sum(taus) / len(taus), "min": min(taus), "max": max(taus)}}
    for g, s in sums.items():
        n = max(1.0, s["pixels"])
        report[g] = {"share_of_valid": s["pixels"] / max(1, valid_total),
                     **{m: s[m] / n for m in ("pseudo", "fg", "bg", "coord", "boundary")},
                     "teacher_acc": 1 - s["pseudo"] / n,
                     "feat_weight_share": s["feat_w"] / max(feat_w_total, 1e-12),
                     "kd_weight_share": s["kd_w"] / max(kd_w_total, 1e-12)}
    return report


def term_gradients(trainer, teacher, images, labels) -> dict:
    """{term: {"value", "grad_norm" into the student feature, "cos_ce" with the CE gradient}} on one batch;
    "distillation" is the sum of the distillation terms."""
    trainer.model.train()
    torch.manual_seed(0)
    out = trainer.model(images)
    with torch.no_grad():
        teacher_out = teacher(images)
    terms = task_terms(out, labels, ignore_index=trainer.config.data.ignore_label,
                       align_corners=trainer.config.model.align_corners)
    terms.update(trainer.distill.loss(out, teacher_out, labels))
    grads = {}
    for name, value in terms.items():
        (g,) = torch.autograd.grad(value, out.feat, retain_graph=True, allow_unused=True)
        grads[name] = (value.item(), torch.zeros_like(out.feat) if g is None else g)
    distill = [name for name in terms if name not in ("ce", "aux_ce")]
    grads["distillation"] = (sum(grads[n][0] for n in distill), sum(grads[n][1] for n in distill))
    g_ce = grads["ce"][1].flatten()
    return {name: {"value": v, "grad_norm": g.norm().item(),
                   "cos_ce": F.cosine_similarity(g.flatten(), g_ce, dim=0).item()}
            for name, (v, g) in grads.items()}


def gradient_trace(seed: int, out_dir: str, flags: list[str], teacher_ckpt: str) -> dict:
    """Trains the benchmark student of ``seed`` and measures ``term_gradients`` at CHECKPOINTS."""
    if seed < 100:
        raise SystemExit(f"--seed: the table's seeds (0-4) are not for diagnosis runs; expected >= 100, got {seed}")
    config = benchmark_run(seed, out_dir, flags, teacher_ckpt)
    env = init_distributed("cpu")
    teacher = teacher_of(config)
    train_set, val_set = pipeline.build_datasets(config)
    probe = pipeline.build_datasets(config)[0]
    probe.set_epoch(1000)  # a fixed batch of augmented crops, the same at every checkpoint
    batch = config.optim.batch_size
    images = torch.stack([probe[i][0] for i in range(batch)])
    labels = torch.stack([probe[i][1] for i in range(batch)])
    trace = {}
    for iteration in CHECKPOINTS:
        if iteration:
            stop = None if iteration == config.optim.max_iterations else iteration
            try:
                summary = pipeline.run(config.replace(stop_at_iteration=stop), env)
                trace["final_miou"], trace["per_class_iou"] = summary["student_miou"], summary["student_per_class_iou"]
            except TrainingStopped:
                pass
        trainer = pipeline.student_trainer(config, env, train_set, val_set, teacher, MetricsLog(out_dir, enabled=False))
        if iteration:
            path = os.path.join(out_dir, "last.pt")
            trainer.load_state_dict(checkpoint.load(path), path)
        trace[iteration] = term_gradients(trainer, teacher, images, labels)
        print(json.dumps({"iteration": iteration, **trace[iteration]}), flush=True)
    return trace


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("filter", "grads"))
    p.add_argument("--teacher-ckpt", default=TEACHER, help="the table's teacher")
    p.add_argument("--crops", type=int, default=400, help="filter: augmented training crops")
    p.add_argument("--seed", type=int, default=100, help="grads: student seed (>= 100)")
    p.add_argument("--out-dir", default="/tmp/diagnose_frkd", help="grads: the run's folder")
    p.add_argument("--flags", default="", help="grads: extra frkd flags after the table's")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.mode == "filter":
        report = filter_stats(a.crops, benchmark_run(0, "/tmp", [], a.teacher_ckpt).optim.batch_size, a.teacher_ckpt)
    else:
        os.makedirs(a.out_dir, exist_ok=True)
        report = gradient_trace(a.seed, a.out_dir, shlex.split(a.flags), a.teacher_ckpt)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
