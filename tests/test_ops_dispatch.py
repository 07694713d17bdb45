"""The dispatch rule of docs/ops.md: ``use_backend`` (innermost wins) > env ``FRKD_BACKEND`` > default
(CPU tensors: cpu > torch); a forced backend that cannot serve raises; the backward runs on the
backend its forward used; ``backends()``.

Most tests swap every backend module for a spy that logs its calls and computes with the reference,
so the rule is checked whatever backends this machine has built.
"""
from __future__ import annotations

import threading
import types

import pytest
import torch

import frkd_kernels
from frkd_kernels import _backend, reference
from naive import random_feat, random_labels

BACKEND_FUNCTIONS = ("prototype_pool", "prototype_pool_backward", "class_distance_maps",
                     "class_distance_maps_backward", "masked_feature_mse", "masked_feature_mse_backward",
                     "teacher_entropy")
K = 3


def _spy_backend(name: str, calls: list, serves_cpu: bool) -> types.ModuleType:
    """A backend module that logs (name, function) and computes with the reference."""
    mod = types.ModuleType(f"spy_{name}")
    mod.status = lambda: (True, "spy")
    mod.serves = lambda device: (serves_cpu and device.type == "cpu", "" if serves_cpu else "spy refuses")
    for func in BACKEND_FUNCTIONS:
        def call(*args, _func=func, _real=getattr(reference, func)):
            calls.append((name, _func))
            return _real(*args)
        setattr(mod, func, call)
    return mod


@pytest.fixture
def spies(monkeypatch):
    """Replace the backends: triton, cpu and torch serve CPU tensors, cuda serves nothing.
    Returns the shared call log [(backend, function)]."""
    monkeypatch.delenv("FRKD_BACKEND", raising=False)
    calls = []
    for name in frkd_kernels.BACKENDS:
        monkeypatch.setitem(_backend._loaded, name, _spy_backend(name, calls, serves_cpu=name != "cuda"))
    return calls


@pytest.fixture
def inputs():
    gen = torch.Generator().manual_seed(1)
    feat = random_feat(gen, 2, 4, 3, 5).requires_grad_()
    return feat, random_labels(gen, 2, 3, 5, K)


def _pool(inputs):
    return frkd_kernels.prototype_pool(*inputs, K)[0]


def _ran(calls, func="prototype_pool"):
    return [name for name, f in calls if f == func]


def test_default_on_cpu_tensors_prefers_cpu(spies, inputs):
    _pool(inputs)
    assert _ran(spies) == ["cpu"], "triton is never a default for CPU tensors; cpu comes before torch"


def test_default_falls_back_to_torch_when_cpu_cannot_serve(spies, inputs, monkeypatch):
    monkeypatch.setitem(_backend._loaded, "cpu", _spy_backend("cpu", spies, serves_cpu=False))
    _pool(inputs)
    assert _ran(spies) == ["torch"]


def test_use_backend_nesting_innermost_wins(spies, inputs):
    with frkd_kernels.use_backend("torch"):
        with frkd_kernels.use_backend("triton"):
            _pool(inputs)
            with frkd_kernels.use_backend("cpu"):
                _pool(inputs)
        _pool(inputs)
    _pool(inputs)
    assert _ran(spies) == ["triton", "cpu", "torch", "cpu"]


def test_env_beats_default_and_use_backend_beats_env(spies, inputs, monkeypatch):
    monkeypatch.setenv("FRKD_BACKEND", "triton")
    _pool(inputs)
    with frkd_kernels.use_backend("torch"):
        _pool(inputs)
    assert _ran(spies) == ["triton", "torch"]


def test_torch_ops_and_functional_api_follow_the_same_rule(spies, inputs):
    with frkd_kernels.use_backend("triton"):
        torch.ops.frkd.prototype_pool(*inputs, K, 255)
        frkd_kernels.teacher_entropy(inputs[0].detach())
    assert spies == [("triton", "prototype_pool"), ("triton", "teacher_entropy")]


def test_use_backend_is_per_thread(spies, inputs):
    seen = []
    with frkd_kernels.use_backend("triton"):
        worker = threading.Thread(target=lambda: seen.append(_pool(inputs)))
        worker.start()
        worker.join()
    assert seen and _ran(spies) == ["cpu"], "a backend forced in one thread must not leak into another"


def test_unknown_backend_name_errors(spies, inputs, monkeypatch):
    with pytest.raises(ValueError, match="'bogus'"):
        with frkd_kernels.use_backend("bogus"):
            pass
    monkeypatch.setenv("FRKD_BACKEND", "bogus")
    with pytest.raises(ValueError, match="FRKD_BACKEND.*'bogus'"):
        _pool(inputs)
    assert spies == []


def test_forced_backend_that_cannot_serve_raises_instead_of_falling_back(spies, inputs, monkeypatch):
    with pytest.raises(RuntimeError, match="'cuda'.*cannot serve cpu"):
        with frkd_kernels.use_backend("cuda"):
            _pool(inputs)
    monkeypatch.setenv("FRKD_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="'cuda'.*cannot serve cpu"):
        _pool(inputs)
    assert spies == [], "nothing may run on another backend instead"


def _loss(op, inputs):
    feat, labels = inputs
    if op == "prototype_pool":
        return frkd_kernels.prototype_pool(feat, labels, K)[0].sum()
    if op == "class_distance_maps":
        protos, counts = frkd_kernels.prototype_pool(feat.detach(), labels, K)
        return sum(m.sum() for m in frkd_kernels.class_distance_maps(feat, labels, protos, counts))
    return frkd_kernels.masked_feature_mse(feat, feat.detach() + 1, torch.ones(labels.shape, device=feat.device))


def _backward_elsewhere(loss):
    """Run the backward from another thread, under another forced backend."""
    def run():
        with frkd_kernels.use_backend("torch"):
            loss.backward()

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()


@pytest.mark.parametrize("op", ("prototype_pool", "class_distance_maps", "masked_feature_mse"))
def test_backward_runs_on_the_forward_backend(spies, inputs, op, monkeypatch):
    with frkd_kernels.use_backend("triton"):
        loss = _loss(op, inputs)
    monkeypatch.setenv("FRKD_BACKEND", "cpu")
    _backward_elsewhere(loss)
    assert inputs[0].grad is not None
    assert _ran(spies, f"{op}_backward") == ["triton"]


@pytest.mark.parametrize("compiler", ("aot_eager", "inductor"))
@pytest.mark.parametrize("op", ("prototype_pool", "class_distance_maps", "masked_feature_mse"))
def test_compiled_backward_runs_on_the_forward_backend(spies, inputs, op, compiler):
    """Compiled under one ``use_backend`` and run under another: forward and backward follow the run."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda f, y: _loss(op, (f, y)), fullgraph=True, backend=compiler)
    with frkd_kernels.use_backend("triton"):
        compiled(*inputs).backward()
    with frkd_kernels.use_backend("cpu"):
        compiled(*inputs).backward()
    assert _ran(spies, op) == ["triton", "cpu"]
    assert _ran(spies, f"{op}_backward") == ["triton", "cpu"]


# --- the real backends ------------------------------------------------------------------------

@pytest.fixture
def implementation_calls(monkeypatch):
    """[(backend, function)] of every call routed through ``_backend.implementation``."""
    calls = []
    real = _backend.implementation

    def logged(name, func):
        calls.append((name, func))
        return real(name, func)

    monkeypatch.setattr(_backend, "implementation", logged)
    return calls


def _inputs_for(device):
    gen = torch.Generator().manual_seed(2)
    return random_feat(gen, 2, 4, 3, 5).to(device), random_labels(gen, 2, 3, 5, K).to(device)


@pytest.mark.parametrize("op", ("prototype_pool", "class_distance_maps", "masked_feature_mse"))
def test_real_backward_runs_on_the_forward_backend(backend_device, op, implementation_calls, monkeypatch):
    backend, device = backend_device
    feat, labels = _inputs_for(device)
    with frkd_kernels.use_backend(backend):
        loss = _loss(op, (feat.requires_grad_(), labels))
    monkeypatch.delenv("FRKD_BACKEND", raising=False)
    _backward_elsewhere(loss)
    assert [name for name, func in implementation_calls if func == f"{op}_backward"] == [backend]


@pytest.mark.parametrize("name", frkd_kernels.BACKENDS)
def test_real_forced_backend_serves_or_raises(name):
    feat, labels = _inputs_for("cpu")
    ok, reason = frkd_kernels.can_serve(name, "cpu")
    with frkd_kernels.use_backend(name):
        if ok:
            assert frkd_kernels.prototype_pool(feat, labels, K)[0].shape == (2, K, 4)
        else:
            with pytest.raises(RuntimeError, match=f"'{name}'.*cannot serve"):
                frkd_kernels.prototype_pool(feat, labels, K)


def test_backends_reports_every_backend():
    live = frkd_kernels.backends()
    assert list(live) == list(frkd_kernels.BACKENDS)
    assert all(isinstance(v, bool) for v in live.values()) and live["torch"] is True
    verbose = frkd_kernels.backends(verbose=True)
    assert list(verbose) == list(frkd_kernels.BACKENDS)
    for name, text in verbose.items():
        assert isinstance(text, str) and text, f"backends(verbose=True)[{name!r}] must say why"
        assert text.startswith("live") == live[name], f"{name}: {text!r} disagrees with backends()"
