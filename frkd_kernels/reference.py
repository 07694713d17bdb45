"""Pure-PyTorch reference of every frkd op: the ``torch`` backend and the last fallback.

Vectorised and differentiable by autograd (the forwards), with explicit backwards that the
``torch`` backend's ``*_backward`` ops use. Every backend module exposes these same functions
with these same signatures; inputs arrive validated by ``frkd_kernels.ops``.

Notation: feat B×C×H×W, labels B×H×W (uint8/int32/int64), N = H·W, K classes. A pixel is valid
when 0 <= label < K and label != ignore_index. Statistics are float32 (float64 when an input
is float64); each gradient has its input's dtype and layout.
"""
from __future__ import annotations

import math

import torch


def status() -> tuple[bool, str]:
    return True, "pure PyTorch"


def serves(device: torch.device) -> tuple[bool, str]:
    return True, ""


def stat_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any floating input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def valid_labels(labels: torch.Tensor, num_classes: int, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid B×N bool, class index B×N int64 with invalid pixels sent to bucket K)."""
    y = labels.flatten(1).long()
    valid = (y >= 0) & (y < num_classes) & (y != ignore_index)
    return valid, torch.where(valid, y, num_classes)


def _cosines(f: torch.Tensor, c: torch.Tensor, eps: float):
    """cos between every prototype and every pixel: f B×C×N, c B×K×C -> (cos B×K×N, ok, den)."""
    dots = torch.bmm(c, f)
    den = torch.linalg.vector_norm(c, dim=2)[:, :, None] * torch.linalg.vector_norm(f, dim=1)[:, None, :]
    ok = den >= eps
    cos = torch.where(ok, dots / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(dots))
    return cos, ok, den


# --- prototype_pool -------------------------------------------------------------------------

def prototype_pool(feat, labels, num_classes: int, ignore_index: int):
    """feat B×C×H×W, labels B×H×W -> (protos B×K×C, counts B×K)."""
    B, C = feat.shape[:2]
    dt = stat_dtype(feat)
    valid, idx = valid_labels(labels, num_classes, ignore_index)
    f = feat.flatten(2).to(dt).transpose(1, 2)  # B×N×C
    sums = f.new_zeros(B, num_classes + 1, C).scatter_add(1, idx[:, :, None].expand(-1, -1, C), f)
    counts = torch.zeros(B, num_classes + 1, dtype=dt, device=feat.device).scatter_add(1, idx, valid.to(dt))
    counts = counts[:, :num_classes].contiguous()
    protos = sums[:, :num_classes] / counts.clamp_min(1)[:, :, None]
    return protos, counts


def prototype_pool_backward(grad_protos, labels, counts, feat, ignore_index: int):
    """grad_protos B×K×C -> grad_feat like feat: grad_protos[b, y_p] / counts[b, y_p] on valid pixels."""
    B, C = feat.shape[:2]
    K = counts.shape[1]
    valid, idx = valid_labels(labels, K, ignore_index)
    scaled = grad_protos.to(counts.dtype) / counts.clamp_min(1)[:, :, None]
    scaled = torch.cat([scaled, scaled.new_zeros(B, 1, C)], dim=1)  # bucket K gives 0
    g = torch.gather(scaled, 1, idx[:, :, None].expand(-1, -1, C)).transpose(1, 2)  # B×C×N
    out = torch.empty_like(feat)
    out.copy_(g.reshape(feat.shape))
    return out


# --- class_distance_maps --------------------------------------------------------------------

def class_distance_maps(feat, labels, protos, counts, ignore_index: int, eps: float):
    """-> (intra B×H×W, inter B×H×W, inter_class B×H×W int32; -1 where inter has no class)."""
    B, C, H, W = feat.shape
    K = protos.shape[1]
    dt = stat_dtype(feat, protos)
    valid, idx = valid_labels(labels, K, ignore_index)
    f = feat.flatten(2).to(dt)
    cos, _, _ = _cosines(f, protos.to(dt), eps)
    own = torch.gather(cos, 1, idx.clamp_max(K - 1)[:, None, :])[:, 0]
    intra = torch.where(valid, own, torch.ones_like(own))
    ks = torch.arange(K, device=feat.device)
    candidate = (counts > 0)[:, :, None] & (ks[None, :, None] != idx[:, None, :]) & valid[:, None, :]
    best, arg = cos.masked_fill(~candidate, -math.inf).max(dim=1)
    found = candidate.any(dim=1)
    inter = torch.where(found, best, torch.full_like(best, -1.0))
    inter_class = torch.where(found, arg, torch.full_like(arg, -1)).to(torch.int32)
    return intra.reshape(B, H, W), inter.reshape(B, H, W), inter_class.reshape(B, H, W)


def class_distance_maps_backward(grad_intra, grad_inter, feat, labels, protos, counts, inter_class,
                                 ignore_index: int, eps: float, need_feat: bool, need_protos: bool):
    """-> (grad_feat like feat or empty, grad_protos like protos or empty).

    With cos = f·c/(|f||c|): d cos/d f = c/(|f||c|) - cos f/|f|^2, d cos/d c = f/(|f||c|) - cos c/|c|^2;
    intra routes to the pixel's own class, inter to the saved arg-max class; no gradient where
    |f||c| < eps.
    """
    B, C = feat.shape[:2]
    K = protos.shape[1]
    dt = stat_dtype(feat, protos)
    valid, idx = valid_labels(labels, K, ignore_index)
    f = feat.flatten(2).to(dt)
    c = protos.to(dt)
    cos, ok, den = _cosines(f, c, eps)
    g = torch.zeros(B, K + 1, f.shape[2], dtype=dt, device=feat.device)
    g.scatter_add_(1, idx[:, None, :], torch.where(valid, grad_intra.flatten(1).to(dt), 0)[:, None, :])
    arg = inter_class.flatten(1).long()
    has = arg >= 0
    g.scatter_add_(1, torch.where(has, arg, K)[:, None, :],
                   torch.where(has, grad_inter.flatten(1).to(dt), 0)[:, None, :])
    g = torch.where(ok, g[:, :K], torch.zeros_like(cos))
    a = g / torch.where(ok, den, torch.ones_like(den))  # B×K×N
    gc = g * cos
    grad_feat = grad_protos = None
    if need_feat:
        fsq = (f * f).sum(1)  # B×N
        gf = torch.bmm(c.transpose(1, 2), a) - f * (gc.sum(1) / torch.where(fsq > 0, fsq, 1))[:, None, :]
        grad_feat = torch.empty_like(feat)
        grad_feat.copy_(gf.reshape(feat.shape))
    if need_protos:
        csq = (c * c).sum(2)  # B×K
        gp = torch.bmm(a, f.transpose(1, 2)) - c * (gc.sum(2) / torch.where(csq > 0, csq, 1))[:, :, None]
        grad_protos = torch.empty_like(protos)
        grad_protos.copy_(gp)
    return (grad_feat if need_feat else feat.new_empty(0),
            grad_protos if need_protos else protos.new_empty(0))


# --- masked_feature_mse ---------------------------------------------------------------------

def masked_feature_mse(student, teacher, weight):
    """student, teacher B×C×H×W, weight B×H×W -> Σ_{b,p} w·Σ_c (s - t)^2 / C (0-dim)."""
    dt = stat_dtype(student, teacher, weight)
    diff = student.to(dt) - teacher.to(dt)
    return (weight.to(dt)[:, None] * diff * diff).sum() / student.shape[1]


def masked_feature_mse_backward(grad_loss, student, teacher, weight, need_student: bool, need_teacher: bool):
    """-> (grad_student like student or empty, grad_teacher like teacher or empty)."""
    dt = stat_dtype(student, teacher, weight)
    g = (2.0 / student.shape[1]) * grad_loss.to(dt) * weight.to(dt)[:, None] * (student.to(dt) - teacher.to(dt))
    grad_student = grad_teacher = None
    if need_student:
        grad_student = torch.empty_like(student)
        grad_student.copy_(g)
    if need_teacher:
        grad_teacher = torch.empty_like(teacher)
        grad_teacher.copy_(-g)
    return (grad_student if need_student else student.new_empty(0),
            grad_teacher if need_teacher else teacher.new_empty(0))


# --- teacher_entropy ------------------------------------------------------------------------

def teacher_entropy(logits, temperature: float):
    """logits B×K×H×W -> (normalised entropy B×H×W in [0, 1], pred B×H×W int64)."""
    K = logits.shape[1]
    dt = stat_dtype(logits)
    z = logits.to(dt) / temperature
    pred = logits.argmax(dim=1)
    if K == 1:
        return torch.zeros_like(z[:, 0]), pred
    lse = torch.logsumexp(z, dim=1)
    p = torch.exp(z - lse[:, None])
    ent = (lse - (p * z).sum(1)) / math.log(K)
    return ent.clamp(0.0, 1.0), pred
