"""The functional frkd API over the pure-PyTorch reference, called directly (no custom ops).

This is the namespace the ``eager`` and ``compile`` peers pass as ``ops=``: custom ops are opaque
to Inductor, so compiling ``torch.ops.frkd.*`` would not compile the maths. Signatures and
returns match ``frkd_kernels``' functional API; gradients come from autograd through the
reference forwards (not from the reference's explicit backwards).
"""
from __future__ import annotations

from frkd_kernels import reference


def prototype_pool(feat, labels, num_classes: int, ignore_index: int = 255):
    """feat B×C×H×W, labels B×H×W -> (protos B×K×C, counts B×K)."""
    return reference.prototype_pool(feat, labels, num_classes, ignore_index)


def class_distance_maps(feat, labels, protos, counts, ignore_index: int = 255, eps: float = 1e-8):
    """-> (intra B×H×W, inter B×H×W)."""
    intra, inter, _ = reference.class_distance_maps(feat, labels, protos, counts, ignore_index, eps)
    return intra, inter


def masked_feature_mse(student, teacher, weight):
    """student, teacher B×C×H×W, weight B×H×W -> 0-dim loss."""
    return reference.masked_feature_mse(student, teacher, weight)


def teacher_entropy(logits, temperature: float = 1.0):
    """logits B×K×H×W -> (entropy B×H×W, pred B×H×W int64)."""
    return reference.teacher_entropy(logits, temperature)
