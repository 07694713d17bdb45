"""Test oracle for the frkd ops: naive float64 loops, written from docs/ops.md alone.

Deliberately independent of the op slices' references (``frkd_kernels/ops``): one pixel, one class at a time, with
the tie and eps rules spelled out. Also holds what every op test shares with the oracle: random
inputs, memory layouts, and the tolerance with which a backend must match it.

Shapes: feat B×C×H×W, labels B×H×W, protos B×K×C, counts B×K, maps B×H×W. Every function takes
tensors of any dtype/layout/device and returns float64 CPU tensors (int64 for classes).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _ints(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.int64).numpy()


def _valid(y: int, num_classes: int, ignore_index: int) -> bool:
    return 0 <= y < num_classes and y != ignore_index


def _cos(a: np.ndarray, b: np.ndarray, eps: float) -> tuple[float, float]:
    """(cos(a, b), ‖a‖·‖b‖); cos is 0 where ‖a‖·‖b‖ < eps."""
    den = math.sqrt(float(a @ a)) * math.sqrt(float(b @ b))
    return (float(a @ b) / den if den >= eps else 0.0), den


def _d_cos(a: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """∂cos(a, b)/∂a (0 where ‖a‖·‖b‖ < eps)."""
    cos, den = _cos(a, b, eps)
    if den < eps:
        return np.zeros_like(a)
    return b / den - cos * a / float(a @ a)


def _tensor(a) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


# --- prototype_pool ---------------------------------------------------------------------------

def prototype_pool(feat, labels, num_classes: int, ignore_index: int = 255):
    """-> (protos B×K×C, counts B×K): per-image class means, 0 for absent classes."""
    f, y = _f64(feat), _ints(labels)
    B, C, H, W = f.shape
    sums = np.zeros((B, num_classes, C))
    counts = np.zeros((B, num_classes))
    for b in range(B):
        for i in range(H):
            for j in range(W):
                k = y[b, i, j]
                if _valid(k, num_classes, ignore_index):
                    sums[b, k] += f[b, :, i, j]
                    counts[b, k] += 1
    protos = np.zeros_like(sums)
    for b in range(B):
        for k in range(num_classes):
            if counts[b, k] > 0:
                protos[b, k] = sums[b, k] / counts[b, k]
    return _tensor(protos), _tensor(counts)


def prototype_pool_grad(grad_protos, feat, labels, num_classes: int, ignore_index: int = 255):
    """∂L/∂feat (B×C×H×W) given ∂L/∂protos (B×K×C)."""
    g, y = _f64(grad_protos), _ints(labels)
    counts = _f64(prototype_pool(feat, labels, num_classes, ignore_index)[1])
    B, C, H, W = feat.shape
    out = np.zeros((B, C, H, W))
    for b in range(B):
        for i in range(H):
            for j in range(W):
                k = y[b, i, j]
                if _valid(k, num_classes, ignore_index):
                    out[b, :, i, j] = g[b, k] / counts[b, k]
    return _tensor(out)


# --- class_distance_maps ----------------------------------------------------------------------

def class_distance_maps(feat, labels, protos, counts, ignore_index: int = 255, eps: float = 1e-8):
    """-> (intra B×H×W, inter B×H×W, inter_class B×H×W int64 with -1 where inter has no class)."""
    f, y, c, n = _f64(feat), _ints(labels), _f64(protos), _f64(counts)
    B, C, H, W = f.shape
    K = c.shape[1]
    intra, inter = np.ones((B, H, W)), -np.ones((B, H, W))
    inter_class = -np.ones((B, H, W), dtype=np.int64)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                own = y[b, i, j]
                if not _valid(own, K, ignore_index):
                    continue
                fp = f[b, :, i, j]
                intra[b, i, j] = _cos(fp, c[b, own], eps)[0]
                for k in range(K):  # strict '>' keeps the lowest k on ties; the first NaN wins
                    if k == own or n[b, k] <= 0:
                        continue
                    cos = _cos(fp, c[b, k], eps)[0]
                    best = inter[b, i, j]
                    if (inter_class[b, i, j] < 0 or cos > best
                            or (math.isnan(cos) and not math.isnan(best))):
                        inter[b, i, j], inter_class[b, i, j] = cos, k
    return _tensor(intra), _tensor(inter), torch.from_numpy(inter_class)


def class_distance_maps_grad(grad_intra, grad_inter, feat, labels, protos, counts,
                             ignore_index: int = 255, eps: float = 1e-8):
    """-> (∂L/∂feat B×C×H×W, ∂L/∂protos B×K×C) given ∂L/∂intra and ∂L/∂inter (B×H×W)."""
    gi, ge = _f64(grad_intra), _f64(grad_inter)
    f, y, c = _f64(feat), _ints(labels), _f64(protos)
    inter_class = _ints(class_distance_maps(feat, labels, protos, counts, ignore_index, eps)[2])
    B, C, H, W = f.shape
    K = c.shape[1]
    grad_f, grad_c = np.zeros_like(f), np.zeros_like(c)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                own = y[b, i, j]
                if not _valid(own, K, ignore_index):
                    continue
                routes = [(own, gi[b, i, j])]
                if inter_class[b, i, j] >= 0:
                    routes.append((inter_class[b, i, j], ge[b, i, j]))
                fp = f[b, :, i, j]
                for k, g in routes:
                    grad_f[b, :, i, j] += g * _d_cos(fp, c[b, k], eps)
                    grad_c[b, k] += g * _d_cos(c[b, k], fp, eps)
    return _tensor(grad_f), _tensor(grad_c)


# --- masked_feature_mse -----------------------------------------------------------------------

def masked_feature_mse(student, teacher, weight):
    """-> 0-dim Σ_{b,p} w[b,p]·Σ_c (s − t)² / C."""
    s, t, w = _f64(student), _f64(teacher), _f64(weight)
    B, C, H, W = s.shape
    total = 0.0
    for b in range(B):
        for i in range(H):
            for j in range(W):
                d = s[b, :, i, j] - t[b, :, i, j]
                total += w[b, i, j] * float(d @ d) / C
    return _tensor(total)


def masked_feature_mse_grad(grad_loss: float, student, teacher, weight):
    """-> (∂L/∂student, ∂L/∂teacher), both B×C×H×W, given the scalar ∂L/∂loss."""
    s, t, w = _f64(student), _f64(teacher), _f64(weight)
    C = s.shape[1]
    g = np.zeros_like(s)
    for c in range(C):
        g[:, c] = 2.0 * float(grad_loss) * w * (s[:, c] - t[:, c]) / C
    return _tensor(g), _tensor(-g)


# --- teacher_entropy --------------------------------------------------------------------------

def teacher_entropy(logits, temperature: float = 1.0):
    """-> (entropy B×H×W normalised by log K, pred B×H×W int64, ties to the lowest k)."""
    z = _f64(logits)
    B, K, H, W = z.shape
    ent = np.zeros((B, H, W))
    pred = np.zeros((B, H, W), dtype=np.int64)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                zs = [float(v) for v in z[b, :, i, j]]
                pred[b, i, j] = zs.index(max(zs))
                if K == 1:
                    continue
                scaled = [v / temperature for v in zs]
                top = max(scaled)
                weights = [math.exp(v - top) for v in scaled]
                total = sum(weights)
                lse = top + math.log(total)
                mean_z = sum(wk * v for wk, v in zip(weights, scaled)) / total
                ent[b, i, j] = (lse - mean_z) / math.log(K)
    return _tensor(ent), torch.from_numpy(pred)


# --- shared test inputs and tolerances --------------------------------------------------------

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FLOAT64_BACKENDS = ("torch", "cpu")  # the backends that also take float64 (docs/ops.md)
LAYOUTS = ("contiguous", "channels_last", "sliced")

# (rtol, atol relative to the largest expected magnitude) for a result stored in that dtype
_TOLERANCE = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-4, 2e-5),
    torch.float16: (4e-3, 2e-3),
    torch.bfloat16: (2e-2, 1.6e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, what: str = ""):
    """Compare a backend result with the float64 oracle at the precision of ``dtype``
    (default: the result's dtype)."""
    dtype = dtype or actual.dtype
    rtol, atol = _TOLERANCE[dtype]
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual.detach().to("cpu", torch.float64), expected.to(torch.float64),
                               rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` (3-D or 4-D) in a memory layout: contiguous, channels_last (4-D) /
    W-major (3-D), or sliced: a strided view into a larger buffer whose other elements are NaN
    (floats) or class 0 (integers), so reading outside the view changes the result."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        if t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "sliced":
        shape = list(t.shape)
        shape[1] *= 2
        shape[-1] += 3
        junk = float("nan") if t.is_floating_point() else 0
        big = torch.full(shape, junk, dtype=t.dtype, device=t.device)
        view = big[:, ::2, ..., 1:1 + t.shape[-1]]
        view.copy_(t)
        return view
    raise ValueError(f"with_layout: unknown layout {layout!r}; expected one of {LAYOUTS}")


def random_labels(gen: torch.Generator, B: int, H: int, W: int, num_classes: int, dtype=torch.int64,
                  ignore_index: int = 255, out_of_range: bool = True) -> torch.Tensor:
    """B×H×W labels with about 1/8 ignored pixels, 1/8 labels outside [0, K) (when
    ``out_of_range``), and class K-1 absent from image 0 when K >= 3."""
    y = torch.randint(0, num_classes, (B, H, W), generator=gen)
    if num_classes >= 3:
        y[0][y[0] == num_classes - 1] = 0
    u = torch.rand(B, H, W, generator=gen)
    y[u < 0.125] = ignore_index
    if out_of_range:
        top = 255 if dtype == torch.uint8 else 1000
        strays = torch.randint(num_classes, top, (B, H, W), generator=gen)
        if dtype != torch.uint8:
            strays[torch.rand(B, H, W, generator=gen) < 0.5] = -3
        y = torch.where((u >= 0.125) & (u < 0.25), strays, y)
    return y.to(dtype)


def random_feat(gen: torch.Generator, *shape: int, dtype=torch.float32, zero_pixels: bool = False) -> torch.Tensor:
    """Standard-normal B×C×H×W features rounded to ``dtype``; with ``zero_pixels`` every 5th
    pixel is an all-zero vector (a ReLU output)."""
    f = torch.randn(*shape, generator=gen, dtype=torch.float64)
    if zero_pixels:
        f.flatten(2)[:, :, ::5] = 0
    return f.to(dtype)


def random_protos(gen: torch.Generator, counts: torch.Tensor, C: int, dtype=torch.float32) -> torch.Tensor:
    """Random B×K×C prototypes, exactly zero for classes with count 0 (as prototype_pool gives)."""
    protos = torch.randn(*counts.shape, C, generator=gen, dtype=torch.float64)
    return (protos * (counts.cpu() > 0)[:, :, None]).to(dtype)
