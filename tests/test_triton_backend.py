"""Triton-backend specifics the shared op suite does not reach.

The tiling paths (several pixel runs, channel blocks, class chunks) are forced on tiny shapes by
shrinking the module's block constants; the atomic and the deterministic reductions must agree;
labels that only wrap into range in a narrower integer type are ignored; layouts whose H and W do
not fold into one stride; the float64 refusal and the serves() contract. Runs under the
interpreter (TRITON_INTERPRET=1, set by conftest) without a GPU, plus a compile of every kernel
for sm_90 in a subprocess (tests/triton_compile_check.py). Oracle: tests/naive.py.
"""
from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import frkd_kernels
import naive
from naive import assert_close, random_feat, random_labels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if not frkd_kernels.can_serve("triton", DEVICE)[0]:
    pytest.skip(f"triton cannot serve {DEVICE}: {frkd_kernels.can_serve('triton', DEVICE)[1]}",
                allow_module_level=True)

triton_ops = importlib.import_module("frkd_kernels.triton_ops")
class_sum = importlib.import_module("frkd_kernels.triton_ops.class_sum")
cdm_module = importlib.import_module("frkd_kernels.triton_ops.class_distance_maps")
entropy_module = importlib.import_module("frkd_kernels.triton_ops.teacher_entropy")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def small_tiles(monkeypatch):
    """Blocks of 16 and many programs, so a 2×24×6×10 input spans several pixel runs, channel
    blocks and (for K > 16) class chunks."""
    monkeypatch.setattr(class_sum, "BLOCK_P", 16)
    monkeypatch.setattr(class_sum, "MAX_BLOCK_C", 16)
    monkeypatch.setattr(class_sum, "MAX_BLOCK_K", 16)
    monkeypatch.setattr(class_sum, "target_programs", lambda device: 1024)
    monkeypatch.setattr(cdm_module, "FORWARD_BLOCK_P", 16)
    monkeypatch.setattr(cdm_module, "FORWARD_MAX_BLOCK_C", 16)
    monkeypatch.setattr(cdm_module, "FORWARD_MAX_BLOCK_K", 16)
    monkeypatch.setattr(cdm_module, "BACKWARD_BLOCK_P", 16)
    monkeypatch.setattr(cdm_module, "BACKWARD_MAX_BLOCK_C", 16)
    monkeypatch.setattr(cdm_module, "FINALIZE_MAX_BLOCK_C", 16)
    monkeypatch.setattr(entropy_module, "MAX_BLOCK_K", 4)


def _pool_inputs(K: int, seed: int, shape=(2, 24, 6, 10)):
    gen = _gen(seed)
    B, C, H, W = shape
    return random_feat(gen, B, C, H, W).to(DEVICE), random_labels(gen, B, H, W, K).to(DEVICE)


@pytest.mark.parametrize("K", [3, 20])
def test_prototype_pool_over_several_runs_and_blocks(small_tiles, K):
    feat, labels = _pool_inputs(K, seed=K)
    protos, counts = triton_ops.prototype_pool(feat, labels, K, 255)
    expected_protos, expected_counts = naive.prototype_pool(feat, labels, K)
    assert_close(counts, expected_counts, what="counts")
    assert_close(protos, expected_protos, what="protos")


def test_class_distance_maps_over_several_chunks(small_tiles):
    K = 20
    feat, labels = _pool_inputs(K, seed=7)
    protos, counts = naive.prototype_pool(feat, labels, K)
    protos, counts = protos.float().to(DEVICE), counts.float().to(DEVICE)
    intra, inter, inter_class = triton_ops.class_distance_maps(feat, labels, protos, counts, 255, 1e-8)
    expected = naive.class_distance_maps(feat, labels, protos, counts)
    assert_close(intra, expected[0], what="intra")
    assert_close(inter, expected[1], what="inter")
    assert torch.equal(inter_class.long().cpu(), expected[2])

    gen = _gen(8)
    grad_intra, grad_inter = torch.randn(intra.shape, generator=gen), torch.randn(inter.shape, generator=gen)
    grad_feat, grad_protos = triton_ops.class_distance_maps_backward(
        grad_intra.to(DEVICE), grad_inter.to(DEVICE), feat, labels, protos, counts, inter_class, 255, 1e-8,
        True, True)
    expected_feat, expected_protos = naive.class_distance_maps_grad(grad_intra, grad_inter, feat, labels, protos, counts)
    assert_close(grad_feat, expected_feat, what="grad feat")
    assert_close(grad_protos, expected_protos, what="grad protos")


def test_teacher_entropy_online_softmax_over_chunks(small_tiles):
    gen = _gen(3)
    logits = (4 * torch.randn(2, 11, 3, 5, generator=gen)).to(DEVICE)
    logits[0, 5, 0, 0] = logits[0, 9, 0, 0] = logits[0, :, 0, 0].max() + 1  # a tie across chunks
    entropy, pred = triton_ops.teacher_entropy(logits, 1.5)
    expected_entropy, expected_pred = naive.teacher_entropy(logits, 1.5)
    assert_close(entropy, expected_entropy, what="entropy")
    assert torch.equal(pred.cpu(), expected_pred)
    assert pred[0, 0, 0] == 5


@pytest.mark.parametrize("op", ["prototype_pool", "class_distance_maps_backward"])
def test_atomic_and_deterministic_reductions_agree(small_tiles, monkeypatch, op):
    K = 5
    feat, labels = _pool_inputs(K, seed=11)

    def run():
        if op == "prototype_pool":
            return triton_ops.prototype_pool(feat, labels, K, 255)
        protos, counts = triton_ops.prototype_pool(feat, labels, K, 255)
        intra, inter, inter_class = triton_ops.class_distance_maps(feat, labels, protos, counts, 255, 1e-8)
        return triton_ops.class_distance_maps_backward(
            torch.ones_like(intra), torch.ones_like(inter), feat, labels, protos, counts, inter_class, 255, 1e-8,
            False, True)

    monkeypatch.setattr(class_sum, "use_atomics_on", lambda device: False)
    deterministic = run()
    monkeypatch.setattr(class_sum, "use_atomics_on", lambda device: True)
    atomic = run()
    for d, a in zip(deterministic, atomic):
        torch.testing.assert_close(a, d, rtol=1e-5, atol=1e-6)


def test_deterministic_mode_turns_atomics_off():
    cuda = torch.device("cuda")
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert not class_sum.use_atomics_on(cuda)
        torch.use_deterministic_algorithms(False)
        assert class_sum.use_atomics_on(cuda)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert not class_sum.use_atomics_on(torch.device("cpu"))


def test_labels_that_wrap_into_range_are_ignored():
    """2**32 + 1 is class 1 once truncated to int32: the kernels must compare in int64."""
    K = 3
    feat, _ = _pool_inputs(K, seed=5, shape=(1, 4, 2, 3))
    labels = torch.tensor([[[0, 2**32 + 1, 1], [-(2**32) + 2, 2, 255]]], device=DEVICE)
    protos, counts = triton_ops.prototype_pool(feat, labels, K, 255)
    assert counts.tolist() == [[1.0, 1.0, 1.0]]
    assert_close(protos, naive.prototype_pool(feat, labels, K)[0], what="protos")
    intra, inter, _ = triton_ops.class_distance_maps(feat, labels, protos, counts, 255, 1e-8)
    assert intra[0, 0, 1] == 1 and inter[0, 0, 1] == -1
    assert intra[0, 1, 0] == 1 and inter[0, 1, 0] == -1


def test_outputs_keep_a_layout_whose_pixels_do_not_fold():
    """H and W swapped in memory: read through a copy, gradients written back in that layout."""
    K = 3
    gen = _gen(9)
    feat = random_feat(gen, 2, 5, 7, 4).transpose(2, 3).to(DEVICE)  # 2×5×4×7, W-major
    labels = random_labels(gen, 2, 4, 7, K).to(DEVICE)
    grad_protos = torch.randn(2, K, 5, generator=gen).to(DEVICE)
    protos, counts = triton_ops.prototype_pool(feat, labels, K, 255)
    grad_feat = triton_ops.prototype_pool_backward(grad_protos, labels, counts, feat, 255)
    assert grad_feat.stride() == feat.stride()
    assert_close(grad_feat, naive.prototype_pool_grad(grad_protos, feat, labels, K), what="grad feat")
    teacher = torch.zeros_like(feat)
    weight = torch.rand(2, 4, 7, generator=gen).to(DEVICE)
    grad_student, grad_teacher = triton_ops.masked_feature_mse_backward(
        torch.tensor(1.0, device=DEVICE), feat, teacher, weight, True, True)
    expected_student, expected_teacher = naive.masked_feature_mse_grad(1.0, feat, teacher, weight)
    assert grad_student.stride() == feat.stride() and grad_teacher.stride() == teacher.stride()
    assert_close(grad_student, expected_student, what="grad student")
    assert_close(grad_teacher, expected_teacher, what="grad teacher")


def test_float64_is_refused_with_a_clear_error():
    feat = torch.randn(1, 3, 2, 2, dtype=torch.float64, device=DEVICE)
    labels = torch.zeros(1, 2, 2, dtype=torch.int64, device=DEVICE)
    with pytest.raises(TypeError, match=r"prototype_pool: .*float64.*'cpu' or 'torch'"):
        triton_ops.prototype_pool(feat, labels, 2, 255)
    with frkd_kernels.use_backend("triton"), pytest.raises(TypeError, match="float64"):
        frkd_kernels.teacher_entropy(feat)


def test_serves_contract():
    backend = triton_ops.BACKEND
    live, reason = backend.status()
    assert live and "triton" in reason
    ok, why = backend.serves(torch.device("cpu"))
    assert ok == (triton_ops.INTERPRET) and (ok or "TRITON_INTERPRET=1" in why)
    ok, why = backend.serves(torch.device("cuda"))
    assert ok == (torch.cuda.is_available() and not triton_ops.INTERPRET) and (ok or why)
    assert not backend.serves(torch.device("meta"))[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the op suite runs the compiled kernels themselves")
def test_kernels_compile_for_hopper():
    """The interpreter accepts code the compiler rejects: lower every kernel to an sm_90 cubin."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = pathlib.Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(root / "tests" / "triton_compile_check.py")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
