"""Benchmark shapes: Cityscapes-like and VOC-like feature grids at output stride 8.

Per-op workloads use C = C_t (the teacher's width); the IFV term and the FRKD loss use a
student of width C_s (the FRKD loss projects it to C_t with the 1×1 conv φ).
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


def _cityscapes(B: int, C_t: int) -> Shape:
    return Shape(f"cs-b{B}-c{C_t}", B, C_t, 128, 64, 128, 19)


HEADLINE = _cityscapes(8, 256)
CITYSCAPES = tuple(_cityscapes(B, C) for B in (2, 8, 16) for C in (128, 256, 512))
VOC = (Shape("voc-b8-c256", 8, 256, 128, 64, 64, 21), Shape("voc-b16-c512", 16, 512, 128, 64, 64, 21))
CPU = (Shape("cpu-b2-c128", 2, 128, 64, 64, 128, 19),)
TINY = Shape("tiny", 1, 16, 8, 8, 16, 5)

SETS = {
    "gpu": (HEADLINE,) + tuple(s for s in CITYSCAPES if s != HEADLINE) + VOC,
    "cityscapes": CITYSCAPES,
    "voc": VOC,
    "cpu": CPU,
    "headline": (HEADLINE,),
    "tiny": (TINY,),
}
BY_NAME = {s.name: s for group in SETS.values() for s in group}


def resolve(names: list[str]) -> list[Shape]:
    """Shapes for a list of set names (``gpu``, ``cpu``, ...) or shape names (``cs-b8-c256``)."""
    out: list[Shape] = []
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
