"""relation_kl on every backend against a float64 oracle written here (docs/ops.md): mini-batch
(keys = queries, one group per image) and memory (keys given) relations, forward and backward,
awkward sizes (rows and keys not multiples of any tile, one row, no rows), low-precision and
permuted inputs, zero vectors, gradcheck over seeds, the teacher side left without gradient, and
one-line input errors. opcheck and torch.compile: tests/test_ops_registration.py. Outputs the op
allocates are NaN-poisoned by the conftest.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import frkd_kernels
from test_ops_forward import skip_unsupported

relation_kl = frkd_kernels.relation_kl


def oracle(query_s, query_t, key_s, key_t, groups, tau):
    """float64: Σ_rows,groups KL(softmax(S_T/τ) ‖ softmax(S_S/τ)) / (max(1, R)·G), S = cosines."""
    unit = [None if t is None else F.normalize(t.double(), dim=1) for t in (query_s, query_t, key_s, key_t)]
    q_s, q_t, k_s, k_t = unit
    k_s, k_t = (q_s, q_t) if k_s is None else (k_s, k_t)
    R = q_s.shape[0]
    log_s = F.log_softmax((q_s @ k_s.T / tau).view(R, groups, -1), dim=2)
    log_t = F.log_softmax((q_t @ k_t.T / tau).view(R, groups, -1), dim=2)
    return (log_t.exp() * (log_t - log_s)).sum() / (max(1, R) * groups)


def _rows(gen, n, c, dtype=torch.float64, zero_every=0):
    x = torch.randn(n, c, generator=gen, dtype=torch.float64)
    if zero_every:
        x[::zero_every] = 0  # F.normalize keeps them 0: cosine 0 with everything
    return x.to(dtype)


# (rows, keys or None for keys = queries, groups, C_s, C_t); tiles are 256 (cpu) and 32 (triton)
CASES = {
    "minibatch": (12, None, 3, 5, 7),
    "minibatch_awkward": (37, None, 1, 4, 3),
    "one_row": (1, None, 1, 3, 2),
    "memory": (9, 20, 4, 6, 6),
    "memory_awkward": (33, 35, 1, 5, 4),
    "memory_one_row": (1, 3, 1, 2, 2),
}
BIG_CASES = {"minibatch_tiles": (600, None, 2, 8, 5), "memory_tiles": (300, 520, 2, 6, 6)}  # several cpu tiles


def _inputs(case, seed, dtype=torch.float64, zero_every=0):
    R, M, G, C_s, C_t = case
    gen = torch.Generator().manual_seed(seed)
    q_s, q_t = _rows(gen, R, C_s, dtype, zero_every), _rows(gen, R, C_t, dtype)
    k_s = k_t = None
    if M is not None:
        k_s, k_t = _rows(gen, M, C_s, dtype), _rows(gen, M, C_t, dtype)
    return q_s, q_t, k_s, k_t, G


TOL = {torch.float64: (1e-9, 1e-11), torch.float32: (2e-4, 2e-6), torch.float16: (2e-4, 2e-6),
       torch.bfloat16: (2e-4, 2e-6)}  # low-precision inputs are computed in float32
GRAD_TOL = {torch.float16: (2e-3, 1e-5), torch.bfloat16: (1.6e-2, 1e-4)}


def _check(backend, device, case, seed, dtype, tau=0.2, zero_every=0, layout=lambda t: t, tol=None):
    q_s, q_t, k_s, k_t, G = _inputs(case, seed, dtype, zero_every)
    leaves = [t.to(device).requires_grad_() if t is not None else None for t in (q_s, k_s)]
    args = [layout(t) if t is not None else None for t in (leaves[0], q_t.to(device), leaves[1],
                                                           None if k_t is None else k_t.to(device))]
    with frkd_kernels.use_backend(backend):
        loss = relation_kl(*args, groups=G, temperature=tau)
        wanted = [t for t in leaves if t is not None]
        grads = torch.autograd.grad(loss * 0.7, wanted)
    ref_leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (q_s, k_s)]
    want = oracle(ref_leaves[0], q_t, ref_leaves[1], k_t, G, tau)
    want_grads = torch.autograd.grad(want * 0.7, [t for t in ref_leaves if t is not None])
    rtol, atol = tol or TOL[dtype]
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.dtype == expected_dtype and loss.dim() == 0
    torch.testing.assert_close(loss.double().cpu(), want, rtol=rtol, atol=atol)
    for got, ref, leaf in zip(grads, want_grads, wanted):
        assert got.dtype == leaf.dtype and got.shape == leaf.shape
        grad_rtol, grad_atol = GRAD_TOL.get(dtype, (rtol, atol))  # gradients are returned in the input dtype
        torch.testing.assert_close(got.double().cpu(), ref, rtol=max(rtol, grad_rtol), atol=max(atol, grad_atol))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
def test_matches_the_oracle(backend_device, case, dtype):
    backend, device = backend_device
    skip_unsupported(backend, dtype)
    _check(backend, device, CASES[case], seed=len(case), dtype=dtype)


@pytest.mark.parametrize("case", BIG_CASES)
def test_several_tiles_match_the_oracle(backend_device, case):
    backend, device = backend_device
    if backend == "triton" and device == "cpu":
        pytest.skip("the triton interpreter takes tiny shapes only; its tiles are 32 rows/keys")
    skip_unsupported(backend, torch.float64)
    _check(backend, device, BIG_CASES[case], seed=5, dtype=torch.float64)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_low_precision_inputs_are_computed_in_float32(backend_device, dtype):
    backend, device = backend_device
    _check(backend, device, CASES["memory"], seed=3, dtype=dtype)
    _check(backend, device, CASES["minibatch"], seed=4, dtype=dtype)


def test_permuted_and_sliced_inputs(backend_device):
    backend, device = backend_device
    _check(backend, device, CASES["memory_awkward"], seed=6, dtype=torch.float32,
           layout=lambda t: t.T.contiguous().T)  # column-major
    _check(backend, device, CASES["minibatch"], seed=7, dtype=torch.float32,
           layout=lambda t: torch.cat([t, t], 1)[:, : t.shape[1]])  # rows with a gap


def test_zero_vectors_and_small_temperature(backend_device):
    """Zero rows (cosine 0 everywhere) and τ = 0.02 (logits up to ±50: the online max matters)."""
    backend, device = backend_device
    _check(backend, device, CASES["minibatch"], seed=8, dtype=torch.float32, tau=0.02, zero_every=4,
           tol=(1e-3, 1e-5))
    _check(backend, device, CASES["memory"], seed=9, dtype=torch.float32, tau=0.02, zero_every=3, tol=(1e-3, 1e-5))


def test_no_rows_gives_zero(backend_device):
    backend, device = backend_device
    q_s = torch.zeros(0, 4, device=device, requires_grad=True)
    keys = torch.randn(5, 4, device=device)
    with frkd_kernels.use_backend(backend):
        loss = relation_kl(q_s, torch.zeros(0, 4, device=device), keys, keys)
        loss.backward()
    assert loss.item() == 0 and q_s.grad.shape == (0, 4)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("case", ("minibatch", "memory"))
def test_gradcheck(backend_device, case, seed):
    backend, device = backend_device
    skip_unsupported(backend, torch.float64)
    q_s, q_t, k_s, k_t, G = _inputs(CASES[case], seed)
    q_s = q_s.to(device).requires_grad_()
    q_t = q_t.to(device)
    if k_s is None:
        inputs, fn = (q_s,), lambda a: relation_kl(a, q_t, groups=G, temperature=0.3)
    else:
        k_s, k_t = k_s.to(device).requires_grad_(), k_t.to(device)
        inputs, fn = (q_s, k_s), lambda a, b: relation_kl(a, q_t, b, k_t, groups=G, temperature=0.3)
    with frkd_kernels.use_backend(backend):
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def test_teacher_gets_no_gradient_and_key_gradient_only_when_asked(backend_device):
    backend, device = backend_device
    q_s, q_t, k_s, k_t, G = _inputs(CASES["memory"], 1, torch.float32)
    q_s, q_t, k_t = (t.to(device).requires_grad_() for t in (q_s, q_t, k_t))
    k_s = k_s.to(device)
    with frkd_kernels.use_backend(backend):
        relation_kl(q_s, q_t, k_s, k_t, groups=G).backward()
    assert q_s.grad is not None and q_t.grad is None and k_t.grad is None


ERRORS = {  # name -> (argument named in the message, call)
    "query_rank": ("query_s", lambda: relation_kl(torch.randn(2, 3, 4), torch.randn(2, 3))),
    "query_rows": ("query_t", lambda: relation_kl(torch.randn(4, 3), torch.randn(5, 3))),
    "one_key": ("key_s", lambda: relation_kl(torch.randn(4, 3), torch.randn(4, 3), torch.randn(6, 3))),
    "key_channels": ("key_s", lambda: relation_kl(torch.randn(4, 3), torch.randn(4, 3), torch.randn(6, 2),
                                                   torch.randn(6, 3))),
    "key_rows": ("key_t", lambda: relation_kl(torch.randn(4, 3), torch.randn(4, 3), torch.randn(6, 3),
                                              torch.randn(5, 3))),
    "groups": ("groups", lambda: relation_kl(torch.randn(4, 3), torch.randn(4, 3), groups=3)),
    "temperature": ("temperature", lambda: relation_kl(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)),
    "int_rows": ("query_s", lambda: relation_kl(torch.ones(4, 3, dtype=torch.long), torch.randn(4, 3))),
}


@pytest.mark.parametrize("name", ERRORS)
def test_bad_input_is_one_clear_line(name):
    argument, call = ERRORS[name]
    with pytest.raises((ValueError, TypeError), match=f"frkd.relation_kl: .*{argument}") as info:
        call()
    assert "\n" not in str(info.value)
