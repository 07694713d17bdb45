"""Training-step share: what the FRKD loss adds to a student's training step.

A student step is the trainer's step without the teacher: zero the gradients, the student's
forward, the task loss (``frkd.engine.task_terms``: CE of the upsampled logits + 0.4·CE of the aux
logits), backward, SGD step. The FRKD step distils through ``frkd.distill.Distiller`` (recipe
``frkd`` with its defaults, as the trainer) against the frozen teacher's outputs, computed once
outside the timed region and replayed by a stand-in teacher, and trains its 1×1 conv φ too.
Every student of ``STUDENTS`` is timed: frkd's DeepLabV3-ResNet18 (the shape's width) and CIRKD's
student families (full size; the ResNet-18 of UperNet-lite at the shape's width; the transformers
families only when transformers is installed). The teacher's forward under ``no_grad`` is timed apart: it is the same
for every distillation method. Timed, per frkd backend for the parts that run frkd ops:

- ``teacher_forward``: the teacher's forward under ``no_grad`` (eval mode);
- ``student_step``: the student step alone;
- ``student_step+frkd``: the student step with the FRKD loss;
- ``frkd_loss``: the FRKD loss forward + backward alone, on fixed student outputs.

Shares of a student step (measured, not asserted): ``share_step`` = (student_step+frkd −
student_step) / student_step, and ``share_loss`` = frkd_loss / student_step.
"""
from __future__ import annotations

import importlib.util

import torch
from torch import nn

import frkd_kernels
from frkd.distill import Distiller
from frkd.engine import task_terms
from frkd.models import SegOutput, build_model, build_segmentation_model

from . import inputs
from .shapes import StepShape
from .timing import peak_memory_bytes, time_all

NAME = "step_share"
DESCRIPTION = ("training-step share of the FRKD loss: a student step (forward, CE + 0.4 aux CE, backward, SGD) with "
               "and without the FRKD loss, for DeepLabV3-ResNet18 and CIRKD's student families; teacher forward "
               "(no_grad) timed apart")
# (model, backbone) by CIRKD's names; the first is the headline student
STUDENTS = (("deeplabv3", "resnet18"), ("deeplabv3_mobilenet_ssseg", "mobilenetv3_small"),
            ("deeplabv3_mobilenet_ssseg", "mobilenetv3_large"), ("psp_mobile", "mobilenetv3_small"),
            ("psp_mobile", "mobilenetv3_large"), ("deeplab_mobile", "mobilevit_xx_small"),
            ("psp_mobile", "mobilevit_xx_small"), ("upernet_lite", "resnet18"), ("segformer", "MiT_B0"))
NEEDS_TRANSFORMERS = {"mobilevit_xx_small", "MiT_B0"}
PARTS = ("teacher_forward", "student_step", "student_step+frkd", "frkd_loss")
LR = 1e-3  # small: the weights move little over the timed repeats
GPU_REP_MS = 3000  # do_bench's timing window: about ten steps of a few hundred ms each


class ReplayTeacher(nn.Module):
    """Stands in for the teacher in the timed steps: its ``feat`` and ``logits`` modules emit the teacher's
    outputs computed once."""

    def __init__(self, out: SegOutput):
        super().__init__()
        self.out = out
        self.feat, self.logits = nn.Identity(), nn.Identity()

    def forward(self, images):
        return self.logits(self.out.logits), self.feat(self.out.feat)


def available_students() -> list[tuple[str, str]]:
    """STUDENTS less the transformers families when transformers is not installed."""
    has_transformers = importlib.util.find_spec("transformers") is not None
    return [s for s in STUDENTS if has_transformers or s[1] not in NEEDS_TRANSFORMERS]


class StepBench:
    """Models, distiller, optimisers and inputs of one ``StepShape`` and ``student`` (model, backbone) on
    ``device`` (float32)."""

    def __init__(self, shape: StepShape, device: torch.device, student: tuple[str, str] = STUDENTS[0]):
        torch.manual_seed(0)
        arch, backbone = student
        self.student = build_segmentation_model(arch, backbone, shape.K, width=shape.student_width).to(device).train()
        self.teacher = build_model("deeplabv3", shape.teacher_backbone, shape.K, width=shape.teacher_width)
        self.teacher.to(device).eval().requires_grad_(False)
        g = inputs.generator(7)
        self.images = torch.randn(shape.B, 3, shape.H, shape.W, generator=g).to(device)
        self.labels = inputs.labels(shape.B, shape.H, shape.W, shape.K, seed=8, device=device, block=32)
        with torch.no_grad():
            self.teacher_out = self.teacher(self.images)
        self.distiller = Distiller(self.student, ReplayTeacher(self.teacher_out), "frkd", num_classes=shape.K,
                                   student_feature=self.student.feature_path, teacher_feature="feat",
                                   student_logits=self.student.logits_path, teacher_logits="logits",
                                   student_channels=self.student.feat_channels,
                                   teacher_channels=self.teacher.feat_channels).to(device)
        self.plain_sgd = torch.optim.SGD(self.student.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        self.frkd_sgd = torch.optim.SGD(list(self.student.parameters()) + list(self.distiller.parameters()), lr=LR,
                                        momentum=0.9, weight_decay=1e-4)
        with torch.no_grad():
            fixed = self.distiller(self.images, self.labels)
        self.fixed_student, self.teacher_maps = fixed.student_maps, fixed.teacher_maps
        self.params = sum(p.numel() for p in self.student.parameters())

    def teacher_forward(self):
        with torch.no_grad():
            return self.teacher(self.images)

    def student_step(self):
        self.plain_sgd.zero_grad(set_to_none=True)
        out = self.student(self.images)
        sum(task_terms(out, self.labels).values()).backward()
        self.plain_sgd.step()

    def frkd_step(self, backend: str):
        self.frkd_sgd.zero_grad(set_to_none=True)
        with frkd_kernels.use_backend(backend):
            out = self.distiller(self.images, self.labels)
            terms = task_terms(out.student, self.labels)
            terms.update(out.terms)
            sum(t.float() for t in terms.values()).backward()
        self.frkd_sgd.step()

    def frkd_loss(self, backend: str) -> torch.Tensor:
        """The FRKD loss forward + backward on fixed (leaf) student outputs; returns the loss."""
        out = SegOutput(*(t.detach().requires_grad_(True) if t is not None else None for t in self.fixed_student))
        with frkd_kernels.use_backend(backend):
            total = sum(self.distiller.loss(out, self.teacher_maps, self.labels).values())
            total.backward()
        return total.detach()


def _error(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def measure(shape: StepShape, device: torch.device, backends: list[str], *, warmup: int, repeats: int) -> list[dict]:
    """One row per (student, part, backend) with median/p20/p80/min ms, peak MiB (GPU), and the shares on the
    ``student_step+frkd`` rows. ``backends``: the live frkd backends to run the FRKD loss with."""
    rows = []
    for student in available_students():
        rows += measure_student(shape, device, backends, student, warmup=warmup, repeats=repeats)
    add_shares(rows)
    return rows


def measure_student(shape: StepShape, device: torch.device, backends: list[str], student: tuple[str, str], *,
                    warmup: int, repeats: int) -> list[dict]:
    bench = StepBench(shape, device, student)
    fns = {("teacher_forward", None): bench.teacher_forward, ("student_step", None): bench.student_step}
    loss_values = {}
    for backend in backends:
        fns[("student_step+frkd", backend)] = lambda b=backend: bench.frkd_step(b)
        fns[("frkd_loss", backend)] = lambda b=backend: bench.frkd_loss(b)
        loss_values[backend] = float(bench.frkd_loss(backend))  # also a warm-up of the backend's kernels
    keyed = {f"{part}/{backend}": fn for (part, backend), fn in fns.items()}
    timings = time_all(keyed, device, (), warmup=warmup, repeats=repeats, gpu_rep_ms=GPU_REP_MS)
    rows = []
    for (part, backend), fn in fns.items():
        result = timings[f"{part}/{backend}"]
        row = {"workload": NAME, "shape": shape.name, "dims": shape.dims(), "student": "/".join(student),
               "params": bench.params, "feat_channels": bench.student.feat_channels, "part": part, "provider": backend,
               "loss_value": loss_values.get(backend) if part == "frkd_loss" else None, "error": None}
        if isinstance(result, Exception):
            row.update(median_ms=None, p20_ms=None, p80_ms=None, min_ms=None, peak_mem_mib=None,
                       error=_error(result))
        else:
            peak = peak_memory_bytes(fn, device, ())
            row.update(median_ms=result.median_ms, p20_ms=result.p20_ms, p80_ms=result.p80_ms,
                       min_ms=result.min_ms, peak_mem_mib=None if peak is None else peak / 2**20)
        rows.append(row)
    return rows


def add_shares(rows: list[dict]) -> None:
    """share_step and share_loss (fractions of the student step) on each ``student_step+frkd`` row."""
    by_key = {(r.get("student"), r["part"], r["provider"]): r for r in rows}
    for r in rows:
        if r["part"] != "student_step+frkd":
            continue
        step = by_key.get((r.get("student"), "student_step", None))
        loss = by_key.get((r.get("student"), "frkd_loss", r["provider"]))
        ok = step is not None and step["median_ms"] and r["median_ms"] is not None
        r["share_step"] = (r["median_ms"] - step["median_ms"]) / step["median_ms"] if ok else None
        r["share_loss"] = loss["median_ms"] / step["median_ms"] if ok and loss and loss["median_ms"] else None


def _ms(r: dict | None) -> str:
    if r is None:
        return "—"
    return f"error: {r['error'][:60]}" if r["error"] else f"{r['median_ms']:.2f} [{r['p20_ms']:.2f}, {r['p80_ms']:.2f}]"


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _mib(r: dict | None) -> str:
    return "n/a" if r is None or r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.0f}"


def markdown(rows: list[dict]) -> list[str]:
    """One table line per (shape, backend, student): its parameters and feature channels, the four timings
    (median [p20, p80] ms) and the shares."""
    head = ["shape", "frkd backend", "student", "params", "feature channels", "teacher fwd ms", "student step ms",
            "student step + FRKD ms", "FRKD loss fwd+bwd ms", "share (step difference)", "share (loss alone)",
            "peak MiB step / + FRKD"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for shape, student in dict.fromkeys((r["shape"], r.get("student")) for r in rows):
        mine = {(r["part"], r["provider"]): r for r in rows if r["shape"] == shape and r.get("student") == student}
        for (part, backend), r in mine.items():
            if part != "student_step+frkd":
                continue
            plain = mine.get(("student_step", None))
            params = f"{r['params'] / 1e6:.2f} M" if r.get("params") else "—"
            cells = [shape, f"`{backend}`", f"`{student}`", params, str(r.get("feat_channels", "—")),
                     _ms(mine.get(("teacher_forward", None))), _ms(plain), _ms(r),
                     _ms(mine.get(("frkd_loss", backend))), _pct(r["share_step"]), _pct(r["share_loss"]),
                     f"{_mib(plain)} / {_mib(r)}"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines
