"""Benchmark shapes: Cityscapes-like, VOC-like, ADE20K-like and COCO-Stuff-like feature grids at
output stride 8, a sweep over the class count (K = 19, 150, 182), and the image batches of the
training-step share.

Per-op workloads use C = C_t (the teacher's width); the IFV term and the FRKD loss use a
student of width C_s (the FRKD loss projects it to C_t with the 1×1 conv φ). The step share
(``bench/step_share.py``) runs whole models on B×3×H×W crops (``StepShape``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Shape:
    name: str
    B: int
    C_t: int
    C_s: int
    H: int
    W: int
    K: int

    def dims(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "name"}


@dataclass(frozen=True)
class StepShape:
    """A training step: B crops of H×W, K classes, a DeepLabV3-ResNet18 student of stem width
    ``student_width`` and a DeepLabV3 teacher on ``teacher_backbone`` of width ``teacher_width``."""
    name: str
    B: int
    H: int
    W: int
    K: int
    student_width: int
    teacher_backbone: str
    teacher_width: int

    def dims(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "name"}


def _cityscapes(B: int, C_t: int) -> Shape:
    return Shape(f"cs-b{B}-c{C_t}", B, C_t, 128, 64, 128, 19)


HEADLINE = _cityscapes(8, 256)
CITYSCAPES = tuple(_cityscapes(B, C) for B in (2, 8, 16) for C in (128, 256, 512))
VOC = (Shape("voc-b8-c256", 8, 256, 128, 64, 64, 21), Shape("voc-b16-c512", 16, 512, 128, 64, 64, 21))
CPU = (Shape("cpu-b2-c128", 2, 128, 64, 64, 128, 19),)
TINY = Shape("tiny", 1, 16, 8, 8, 16, 5)
# The class sweep: one feature grid (B 2, C_s 128, C_t 256, 64×128) at Cityscapes' 19, ADE20K's 150 and
# COCO-Stuff-164k's 182 classes, so time against K is read off one set; and ADE20K / COCO-Stuff crops
# (512×512 -> 64×64, CIRKD's batch 16 over 8 GPUs = 2 a GPU, and 8) at their own K.
CLASSES = tuple(Shape(f"k{K}-b2-c256", 2, 256, 128, 64, 128, K) for K in (19, 150, 182))
ADE20K = (Shape("ade20k-b2-c256", 2, 256, 128, 64, 64, 150), Shape("ade20k-b8-c256", 8, 256, 128, 64, 64, 150))
COCO_STUFF = (Shape("cocostuff-b2-c256", 2, 256, 128, 64, 64, 182),
              Shape("cocostuff-b8-c256", 8, 256, 128, 64, 64, 182))
# Cityscapes crops with CIRKD's models (student features 128, teacher 256 channels); the CPU set
# is the synthetic benchmark's width-8 student / width-16 ResNet-50 teacher on a smaller crop.
STEP_CITYSCAPES = StepShape("step-cs-b8", 8, 512, 1024, 19, 64, "resnet101", 64)
STEP_CPU = StepShape("step-cpu-b2", 2, 128, 256, 19, 8, "resnet50", 16)
STEP_TINY = StepShape("step-tiny", 2, 32, 64, 5, 4, "resnet18", 4)

SETS = {
    "gpu": (HEADLINE,) + tuple(s for s in CITYSCAPES if s != HEADLINE) + VOC + (STEP_CITYSCAPES,),
    "cityscapes": CITYSCAPES + (STEP_CITYSCAPES,),
    "voc": VOC,
    "cpu": CPU + (STEP_CPU,),
    "headline": (HEADLINE, STEP_CITYSCAPES),
    "tiny": (TINY, STEP_TINY),
    "classes": CLASSES,
    "ade20k": ADE20K,
    "coco_stuff_164k": COCO_STUFF,
}
BY_NAME = {s.name: s for group in SETS.values() for s in group}


def resolve(names: list[str]) -> list[Shape | StepShape]:
    """Shapes for a list of set names (``gpu``, ``cpu``, ...) or shape names (``cs-b8-c256``,
    ``step-cs-b8``); op shapes and step shapes mixed, in the order given."""
    out: list[Shape | StepShape] = []
    for name in names:
        if name in SETS:
            group = SETS[name]
        elif name in BY_NAME:
            group = (BY_NAME[name],)
        else:
            known = ", ".join(list(SETS) + sorted(BY_NAME))
            raise SystemExit(f"bench: --shapes: unknown shape or set {name!r}; expected one of {known}")
        out.extend(s for s in group if s not in out)
    return out
