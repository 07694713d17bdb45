"""Registration of the ``frkd::*`` ops: schemas, ``torch.library.opcheck`` on every backend (public,
private forward and backward ops, contiguous and permuted inputs), ``torch.compile(fullgraph=True)`` forward and backward,
and the NaN poisoning of frkd allocations that the other op tests rely on.
"""
from __future__ import annotations

import importlib
import os
import pathlib
import re

import pytest
import torch

import frkd_kernels
from naive import random_feat, random_labels, with_layout

ROOT = pathlib.Path(__file__).resolve().parent.parent
PUBLIC_OPS = ("prototype_pool", "class_distance_maps", "masked_feature_mse", "teacher_entropy", "relation_kl")
CODE_SUFFIXES = {".py", ".cpp", ".cu", ".h", ".cuh"}


def _documented_schemas() -> dict[str, str]:
    """{op: schema} as docs/ops.md states them (a line `op(args) -> returns` in backticks)."""
    text = (ROOT / "docs" / "ops.md").read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"^`(\w+)(\(.*\) -> .*)`$", text, re.M)}


def _code_text(under: pathlib.Path = ROOT) -> str:
    """Every source file under ``under``, with adjacent string literals joined."""
    texts = []
    for path in sorted(under.rglob("*")):
        if path.suffix in CODE_SUFFIXES and not ({".git", "build", ".venv", ".venv-ci"} & set(path.parts)):
            texts.append(re.sub(r'"\s*\n\s*"', "", path.read_text(errors="replace")))
    return "\n".join(texts)


BACKWARD_OPS = ("prototype_pool_backward", "class_distance_maps_backward", "masked_feature_mse_backward",
                "relation_kl_backward")
FORWARD_OPS = ("prototype_pool_forward", "class_distance_maps_forward", "masked_feature_mse_forward",
               "relation_kl_forward")
K = 3


@pytest.mark.parametrize("name", PUBLIC_OPS)
def test_public_schema_is_the_documented_one(name):
    documented = _documented_schemas()
    assert name in documented, f"docs/ops.md states no schema for {name}"
    expected = torch._C.parse_schema(f"frkd::{name}{documented[name]}")
    assert str(getattr(torch.ops.frkd, name).default._schema) == str(expected)


def test_each_schema_is_written_once_in_the_code():
    """One schema text per op (public, backward and each private kernel, shared by cpu and cuda);
    the C++ library registers kernels only, never a schema."""
    from frkd_kernels import _library

    code = _code_text()
    slices = {op: importlib.import_module(f"frkd_kernels.ops.{op}") for op in PUBLIC_OPS}
    texts = {op: module.SCHEMA.split(" -> ")[0] + " -> " for op, module in slices.items()}
    texts.update({op + "_backward": module.BACKWARD_SCHEMA.split(" -> ")[0] + " -> "
                  for op, module in slices.items() if hasattr(module, "BACKWARD_SCHEMA")})
    texts.update({f"kernel {name}": schema.split("{")[0] for name, schema in _library.KERNEL_SCHEMAS.items()})
    counts = {name: code.count(text) for name, text in texts.items()}
    assert counts == {name: 1 for name in texts}, f"schema texts written more (or less) than once: {counts}"
    assert not re.search(r"\bm\.def\(|TORCH_LIBRARY(_FRAGMENT)?\(", _code_text(ROOT / "csrc")), "a schema in C++"


@pytest.mark.parametrize("name", ("prototype_pool", "class_distance_maps"))
def test_schema_default_ignore_index_is_the_library_one(name):
    """The functional API's default (``_library.IGNORE_INDEX``) and the schema's agree."""
    from frkd_kernels import _library

    (arg,) = [a for a in getattr(torch.ops.frkd, name).default._schema.arguments if a.name == "ignore_index"]
    assert arg.default_value == _library.IGNORE_INDEX


@pytest.mark.parametrize("name", FORWARD_OPS + BACKWARD_OPS)
def test_private_forward_and_backward_ops_are_registered(name):
    schema = getattr(torch.ops.frkd, name).default._schema
    assert schema.name == f"frkd::{name}"


@pytest.mark.parametrize("name", FORWARD_OPS)
def test_private_forward_returns_the_backend_it_ran_on(name, backend_device):
    backend, device = backend_device
    calls = _op_calls(backend, device, permuted=False)
    op, args = calls[name]
    with frkd_kernels.use_backend(backend):
        recorded = op(*args)[-1]
    assert recorded.device.type == "cpu" and recorded.dtype == torch.int8 and recorded.dim() == 0, recorded
    assert frkd_kernels.BACKENDS[int(recorded)] == backend


def _op_calls(backend: str, device: str, permuted: bool):
    """{name: (op, args)} for every frkd op on small inputs, computed under ``backend``."""
    layout = "channels_last" if permuted else "contiguous"
    gen = torch.Generator().manual_seed(3)
    B, C, H, W = 2, 4, 3, 5
    feat = with_layout(random_feat(gen, B, C, H, W).to(device), layout).requires_grad_()
    teacher = with_layout(random_feat(gen, B, C, H, W).to(device), layout)
    labels = with_layout(random_labels(gen, B, H, W, K).to(device), layout)
    weight = with_layout(torch.rand(B, H, W, generator=gen).to(device), layout)
    logits = with_layout(random_feat(gen, B, K, H, W).to(device), layout)
    ops = torch.ops.frkd
    with torch.no_grad(), frkd_kernels.use_backend(backend):
        protos, counts = ops.prototype_pool(feat, labels, K)
        _, _, inter_class, recorded = ops.class_distance_maps_forward(feat, labels, protos, counts)
    protos = with_layout(protos, layout).requires_grad_()
    maps = torch.randn(2, B, H, W, generator=gen).to(device)
    grad_protos = torch.randn(B, K, C, generator=gen).to(device)
    # relation_kl: rows (column-major when permuted); its private ops take unit rows
    rows = [torch.randn(n, C, generator=gen).to(device) for n in (6, 6, 4, 4)]
    rows = [r.T.contiguous().T if permuted else r for r in rows]
    units = [torch.nn.functional.normalize(r, dim=1) for r in rows]
    rows[0].requires_grad_()
    units[0].requires_grad_()
    with torch.no_grad(), frkd_kernels.use_backend(backend):
        _, lse_s, lse_t, _ = ops.relation_kl_forward(*units, 2, 0.5)
    return {
        "relation_kl": (ops.relation_kl, (*rows, 2, 0.5)),
        "relation_kl_forward": (ops.relation_kl_forward, (*units, 2, 0.5)),
        "relation_kl_backward": (ops.relation_kl_backward,
                                 (torch.tensor(0.5, device=device), units[0].detach(), *units[1:], lse_s, lse_t,
                                  2, 0.5, True, recorded)),
        "prototype_pool": (ops.prototype_pool, (feat, labels, K, 255)),
        "class_distance_maps": (ops.class_distance_maps, (feat, labels, protos, counts, 255, 1e-8)),
        "class_distance_maps_forward": (ops.class_distance_maps_forward, (feat, labels, protos, counts, 255, 1e-8)),
        "prototype_pool_forward": (ops.prototype_pool_forward, (feat, labels, K, 255)),
        "masked_feature_mse": (ops.masked_feature_mse, (feat, teacher, weight)),
        "masked_feature_mse_forward": (ops.masked_feature_mse_forward, (feat, teacher, weight)),
        "teacher_entropy": (ops.teacher_entropy, (logits, 2.0)),
        "prototype_pool_backward": (ops.prototype_pool_backward,
                                    (grad_protos, labels, counts, feat.detach(), 255, recorded)),
        "class_distance_maps_backward": (ops.class_distance_maps_backward,
                                         (maps[0], maps[1], feat.detach(), labels, protos.detach(), counts,
                                          inter_class, 255, 1e-8, True, True, recorded)),
        "masked_feature_mse_backward": (ops.masked_feature_mse_backward,
                                        (torch.tensor(0.5, device=device), feat.detach(), teacher, weight,
                                         True, False, recorded)),
    }


OP_NAMES = PUBLIC_OPS + FORWARD_OPS + BACKWARD_OPS


@pytest.mark.parametrize("permuted", (False, True), ids=("contiguous", "permuted"))
def test_opcheck(backend_device, permuted):
    backend, device = backend_device
    calls = _op_calls(backend, device, permuted)
    failures = {}
    with frkd_kernels.use_backend(backend):
        for name in OP_NAMES:
            op, args = calls[name]
            result = torch.library.opcheck(op, args, raise_exception=False)
            bad = {test: outcome for test, outcome in result.items() if outcome != "SUCCESS"}
            if bad:
                failures[name] = bad
    assert not failures, f"opcheck failed on {backend}/{device}: {failures}"


def _all_ops(feat, teacher, labels, logits):
    """A scalar loss touching every op, the way the FRKD loss does."""
    entropy, pred = frkd_kernels.teacher_entropy(logits)
    protos, counts = frkd_kernels.prototype_pool(feat, labels, K)
    intra, inter = frkd_kernels.class_distance_maps(feat, labels, protos, counts)
    weight = entropy * (pred == labels.long())
    relation = frkd_kernels.relation_kl(feat.flatten(2).transpose(1, 2).reshape(-1, feat.shape[1]),
                                        teacher.flatten(2).transpose(1, 2).reshape(-1, teacher.shape[1]),
                                        groups=feat.shape[0], temperature=0.5)
    return frkd_kernels.masked_feature_mse(feat, teacher, weight) + (intra - inter).square().mean() + relation


def test_torch_compile_fullgraph_forward_and_backward(backend_device):
    backend, device = backend_device
    gen = torch.Generator().manual_seed(12)
    feat, teacher = (random_feat(gen, 2, 4, 3, 5).to(device) for _ in range(2))
    labels = random_labels(gen, 2, 3, 5, K).to(device)
    logits = random_feat(gen, 2, K, 3, 5).to(device)
    torch._dynamo.reset()
    compiled = torch.compile(_all_ops, fullgraph=True)
    results = []
    for fn in (_all_ops, compiled):
        x = feat.clone().requires_grad_()
        with frkd_kernels.use_backend(backend):
            loss = fn(x, teacher, labels, logits)
            loss.backward()
        results.append((loss.detach(), x.grad))
    (eager_loss, eager_grad), (compiled_loss, compiled_grad) = results
    torch.testing.assert_close(compiled_loss, eager_loss)
    torch.testing.assert_close(compiled_grad, eager_grad)
    assert torch.isfinite(compiled_grad).all() and compiled_grad.abs().sum() > 0


# --- the conftest's NaN poisoning ---------------------------------------------------------------

ALLOCATIONS = {
    "empty": "torch.empty(2, 3, dtype=dtype)",
    "empty_like": "torch.empty_like(torch.zeros(2, 3, dtype=dtype))",
    "empty_strided": "torch.empty_strided((2, 3), (1, 2), dtype=dtype)",
    "new_empty": "torch.zeros(1, dtype=dtype).new_empty(2, 3)",
}


@pytest.mark.parametrize("call", ALLOCATIONS)
def test_frkd_allocations_are_poisoned(call):
    namespace = {"__name__": "frkd_kernels.some_backend", "torch": torch}
    for dtype, check in ((torch.float32, torch.isnan), (torch.bfloat16, torch.isnan),
                         (torch.int32, lambda t: t == 0x5A5A), (torch.uint8, lambda t: t == 0xA5)):
        namespace["dtype"] = dtype
        out = eval(ALLOCATIONS[call], namespace)
        assert bool(check(out).all()), f"{call} from frkd_kernels was not poisoned for {dtype}: {out}"


def test_poisoning_does_not_break_torch_compile():
    """Code compiled with fullgraph=True may allocate through the patched functions."""
    compiled = torch.compile(lambda x: torch.empty_like(x).fill_(2) * x + x.new_empty(3).fill_(1).sum(),
                             fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(torch.ones(4)), torch.full((4,), 5.0))


def test_the_extension_loads_when_frkd_kernels_is_imported_first():
    """A fresh interpreter that imports frkd_kernels before torch still loads the C++ extension
    (it links against libc10, which only ``import torch`` puts in the process)."""
    import subprocess
    import sys

    import frkd_kernels

    if not frkd_kernels.backends()["cpu"]:
        pytest.skip("the C++ extension is not built here")
    code = "import frkd_kernels, sys; sys.exit(0 if frkd_kernels.backends()['cpu'] else 1)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
