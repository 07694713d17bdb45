"""frkd::relation_kl: the KL between the row softmaxes of a teacher's and a student's cosine
similarities, CIRKD's pixel relations (docs/ops.md).

The whole op on the Python side: schema, input checks, the pure-PyTorch reference (the ``torch``
backend) and its backward, the call into the compiled kernels (``cpu``/``cuda`` backends), the
routed private forward/backward, fake kernels and autograd. Its kernels: triton_ops/relation_kl.py,
csrc/cpu/relation_kl.h (the blocked ATen implementation the ``cpu`` and ``cuda`` backends share),
csrc/cpu/relation_kl.cpp and csrc/cuda/bind_relation_kl.cpp.

Shapes: query_s R×C_s, query_t R×C_t (rows), key_s M×C_s, key_t M×C_t (columns, split into
``groups`` consecutive groups of M/G); without keys the keys are the queries (M = R).
The public op L2-normalises the rows (``F.normalize``) and hands unit rows in the statistics dtype
to the private forward; the backends see only unit rows. Per (row, group) statistics: the
log-sum-exp of both sides (R×G), kept for the backward, which recomputes the similarities.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _library as lib

OP = "relation_kl"
SCHEMA = ("(Tensor query_s, Tensor query_t, Tensor? key_s=None, Tensor? key_t=None, int groups=1, "
          "float temperature=1.0) -> Tensor")
BACKWARD_SCHEMA = ("(Tensor grad_loss, Tensor query_s, Tensor query_t, Tensor? key_s, Tensor? key_t, "
                   "Tensor lse_s, Tensor lse_t, int groups, float temperature, bool need_key, Tensor backend) "
                   "-> (Tensor, Tensor)")
KERNELS = {  # unit rows in the statistics dtype; the kernels write their out-arguments
    OP: ("(Tensor query_s, Tensor query_t, Tensor? key_s, Tensor? key_t, int groups, float temperature, "
         "Tensor(a!) kl, Tensor(b!) lse_s, Tensor(c!) lse_t) -> ()"),
    OP + "_backward": ("(Tensor scale, Tensor query_s, Tensor query_t, Tensor? key_s, Tensor? key_t, "
                       "Tensor lse_s, Tensor lse_t, int groups, float temperature, bool need_key, "
                       "Tensor(a!) grad_query, Tensor(b!) grad_key) -> ()"),
}

lib.define(OP, SCHEMA)
lib.define(OP + "_forward", lib.forward_schema(SCHEMA, "Tensor lse_s", "Tensor lse_t", "Tensor backend"))
lib.define(OP + "_backward", BACKWARD_SCHEMA)
lib.define_kernels(KERNELS)


def relation_kl(query_s: torch.Tensor, query_t: torch.Tensor, key_s: torch.Tensor | None = None,
                key_t: torch.Tensor | None = None, groups: int = 1, temperature: float = 1.0) -> torch.Tensor:
    """Σ over rows i and key groups g of KL(softmax_g(S_T[i]/τ) ‖ softmax_g(S_S[i]/τ)) / (max(1, R)·G).

    S_S = norm(query_s)·norm(key_s)ᵀ, S_T = norm(query_t)·norm(key_t)ᵀ (cosines; norm = ``F.normalize``
    over dim 1); softmax_g is over the M/G columns of group g. query_s R×C_s, query_t R×C_t,
    key_s M×C_s, key_t M×C_t, both keys or neither (then the keys are the queries). Differentiable
    w.r.t. query_s and key_s; the teacher side is a target (no gradient). Returns a 0-dim float32
    (float64 when an input is float64).
    """
    return torch.ops.frkd.relation_kl(query_s, query_t, key_s, key_t, groups, temperature)


def check(query_s, query_t, key_s, key_t, groups, temperature) -> None:
    float_rows = "a 2-D rows×channels float tensor"
    lib.check_tensor(OP, "query_s", query_s, 2, lib.FLOAT_DTYPES, float_rows)
    lib.check_tensor(OP, "query_t", query_t, 2, lib.FLOAT_DTYPES, float_rows)
    R = query_s.shape[0]
    if query_t.shape[0] != R:
        raise ValueError(f"frkd.{OP}: query_t must have query_s's {R} rows, got {tuple(query_t.shape)}")
    if (key_s is None) != (key_t is None):
        raise ValueError(f"frkd.{OP}: give both key_s and key_t or neither (keys = queries), got "
                         f"key_s {'None' if key_s is None else 'a tensor'} and key_t "
                         f"{'None' if key_t is None else 'a tensor'}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"frkd.{OP}: groups must be an int >= 1, got {groups!r}")
    if not temperature > 0:
        raise ValueError(f"frkd.{OP}: temperature must be > 0, got {temperature!r}")
    tensors = {"query_s": query_s, "query_t": query_t}
    M = R
    if key_s is not None:
        lib.check_tensor(OP, "key_s", key_s, 2, lib.FLOAT_DTYPES, "a 2-D keys×channels float tensor")
        lib.check_tensor(OP, "key_t", key_t, 2, lib.FLOAT_DTYPES, "a 2-D keys×channels float tensor")
        M = key_s.shape[0]
        for name, key, query in (("key_s", key_s, query_s), ("key_t", key_t, query_t)):
            if key.shape[1] != query.shape[1]:
                raise ValueError(f"frkd.{OP}: {name} must have {query.shape[1]} channels as its query, got "
                                 f"{tuple(key.shape)}")
        if key_t.shape[0] != M or M == 0:
            raise ValueError(f"frkd.{OP}: key_t must have key_s's rows (at least one), got key_s "
                             f"{tuple(key_s.shape)} and key_t {tuple(key_t.shape)}")
        tensors.update(key_s=key_s, key_t=key_t)
    if M % groups:
        raise ValueError(f"frkd.{OP}: groups={groups} must divide the {M} keys")
    lib.check_same_device(OP, **tensors)


def stat_dtype(query_s, query_t, key_s, key_t) -> torch.dtype:
    return lib.stat_dtype(*(t for t in (query_s, query_t, key_s, key_t) if t is not None))


def mean_count(rows: int, groups: int) -> int:
    """The loss's divisor: one KL per (row, group), averaged; no rows give 0."""
    return max(1, rows) * groups


# --- reference: the torch backend (dense: holds R×M similarities) --------------------------------

def _logits(query, key, temperature: float, groups: int):
    """Unit rows -> similarities / τ as R×G×(M/G)."""
    keys = query if key is None else key
    return (query @ keys.T / temperature).view(query.shape[0], groups, keys.shape[0] // groups)


def reference(query_s, query_t, key_s, key_t, groups: int, temperature: float):
    """Unit rows (stat dtype) -> (kl R×G, lse_s R×G, lse_t R×G)."""
    x, y = _logits(query_s, key_s, temperature, groups), _logits(query_t, key_t, temperature, groups)
    lse_s, lse_t = torch.logsumexp(x, 2), torch.logsumexp(y, 2)
    p_t = torch.exp(y - lse_t[..., None])
    kl = (p_t * ((y - lse_t[..., None]) - (x - lse_s[..., None]))).sum(2)
    return kl, lse_s, lse_t


def reference_backward(scale, query_s, query_t, key_s, key_t, lse_s, lse_t, groups: int, temperature: float,
                       need_key: bool):
    """scale = grad_loss / ``mean_count`` (0-dim) -> (grad of the unit query_s rows, grad of the unit
    key_s rows or empty). Without keys the first holds both (keys are the queries)."""
    x, y = _logits(query_s, key_s, temperature, groups), _logits(query_t, key_t, temperature, groups)
    g = ((torch.exp(x - lse_s[..., None]) - torch.exp(y - lse_t[..., None])) * (scale / temperature)).flatten(1)
    keys = query_s if key_s is None else key_s
    grad_query = g @ keys
    grad_key = query_s.new_empty(0)
    if key_s is None:
        grad_query = grad_query + g.T @ query_s
    elif need_key:
        grad_key = g.T @ query_s
    return grad_query, grad_key


# --- the compiled kernels (cpu and cuda backends) ---------------------------------------------

def compiled(backend, query_s, query_t, key_s, key_t, groups: int, temperature: float):
    """Run ``backend``'s (a ``_compiled.CompiledBackend``) forward kernel on outputs allocated here."""
    R = query_s.shape[0]
    kl, lse_s, lse_t = (query_s.new_empty(R, groups) for _ in range(3))
    backend.run(OP, (query_s, query_t, key_s, key_t, groups, temperature), (kl, lse_s, lse_t))
    return kl, lse_s, lse_t


def compiled_backward(backend, scale, query_s, query_t, key_s, key_t, lse_s, lse_t, groups: int,
                      temperature: float, need_key: bool):
    grad_query = torch.empty_like(query_s)
    grad_key = torch.empty_like(key_s) if key_s is not None and need_key else query_s.new_empty(0)
    backend.run(OP + "_backward", (scale, query_s, query_t, key_s, key_t, lse_s, lse_t, groups, temperature,
                                   need_key), (grad_query, grad_key))
    return grad_query, grad_key


# --- routing, fakes, autograd -----------------------------------------------------------------

def _unit_rows(query_s, query_t, key_s, key_t):
    """The backends' inputs: contiguous unit rows in the statistics dtype (the private ops' contract)."""
    dt = stat_dtype(query_s, query_t, key_s, key_t)
    return tuple(None if t is None else t.to(dt).contiguous() for t in (query_s, query_t, key_s, key_t))


def _forward(query_s, query_t, key_s=None, key_t=None, groups=1, temperature=1.0):
    check(query_s, query_t, key_s, key_t, groups, temperature)
    rows = _unit_rows(query_s, query_t, key_s, key_t)
    kernel, backend = lib.resolved(OP, query_s.device)
    kl, lse_s, lse_t = kernel(*rows, groups, temperature)
    return kl.sum() / mean_count(query_s.shape[0], groups), lse_s, lse_t, backend


def _backward_op(grad_loss, query_s, query_t, key_s, key_t, lse_s, lse_t, groups, temperature, need_key, backend):
    rows = _unit_rows(query_s, query_t, key_s, key_t)
    scale = grad_loss.to(rows[0].dtype).reshape(()) / mean_count(query_s.shape[0], groups)
    grad_query, grad_key = lib.recorded(OP + "_backward", backend)(scale, *rows, lse_s, lse_t, groups, temperature,
                                                                   need_key)
    grad_key = _like(grad_key, key_s) if key_s is not None and need_key else grad_key.to(query_s.dtype)
    return _like(grad_query, query_s), grad_key


def _like(grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``grad`` with ``t``'s dtype and layout (itself when they already agree)."""
    if grad.dtype == t.dtype and grad.stride() == t.stride():
        return grad
    out = torch.empty_like(t)
    out.copy_(grad)
    return out


lib.register_routed(OP + "_forward", _forward)
lib.register_routed(OP + "_backward", _backward_op)


@torch.library.impl(f"frkd::{OP}", "CompositeImplicitAutograd")
def _public(query_s, query_t, key_s=None, key_t=None, groups=1, temperature=1.0):
    check(query_s, query_t, key_s, key_t, groups, temperature)
    dt = stat_dtype(query_s, query_t, key_s, key_t)

    def unit(t, target):
        if t is None:
            return None
        return F.normalize((t.detach() if target else t).to(dt), p=2, dim=1)

    loss, _, _, _ = torch.ops.frkd.relation_kl_forward(unit(query_s, False), unit(query_t, True),
                                                       unit(key_s, False), unit(key_t, True), groups, temperature)
    return loss


@torch.library.register_fake(f"frkd::{OP}_forward")
def _fake_forward(query_s, query_t, key_s=None, key_t=None, groups=1, temperature=1.0):
    check(query_s, query_t, key_s, key_t, groups, temperature)
    dt = stat_dtype(query_s, query_t, key_s, key_t)
    R = query_s.shape[0]
    return (query_s.new_empty((), dtype=dt), query_s.new_empty(R, groups, dtype=dt),
            query_s.new_empty(R, groups, dtype=dt), lib.fake_backend())


@torch.library.register_fake(f"frkd::{OP}_backward")
def _fake_backward(grad_loss, query_s, query_t, key_s, key_t, lse_s, lse_t, groups, temperature, need_key, backend):
    grad_key = torch.empty_like(key_s) if key_s is not None and need_key else query_s.new_empty(0)
    return torch.empty_like(query_s), grad_key


def _setup_context(ctx, inputs, output):
    query_s, query_t, key_s, key_t, groups, temperature = inputs
    _, lse_s, lse_t, backend = output
    ctx.mark_non_differentiable(lse_s, lse_t, backend)
    ctx.meta = (groups, temperature, key_s is None)
    ctx.save_for_backward(query_s, query_t, key_s, key_t, lse_s, lse_t, backend)


def _autograd_backward(ctx, grad_loss, grad_lse_s, grad_lse_t, grad_backend):
    query_s, query_t, key_s, key_t, lse_s, lse_t, backend = ctx.saved_tensors
    groups, temperature, self_keys = ctx.meta
    need_query, need_key = ctx.needs_input_grad[0], not self_keys and ctx.needs_input_grad[2]
    if not (need_query or need_key):
        return None, None, None, None, None, None
    grad_query, grad_key = torch.ops.frkd.relation_kl_backward(
        grad_loss, query_s, query_t, key_s, key_t, lse_s, lse_t, groups, temperature, need_key, backend)
    return grad_query if need_query else None, None, grad_key if need_key else None, None, None, None


torch.library.register_autograd(f"frkd::{OP}_forward", _autograd_backward, setup_context=_setup_context)
lib.no_double_backward(OP + "_backward")
