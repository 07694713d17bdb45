"""Cost of the recipe terms added for CIRKD's rows, on the CPU or a GPU: time of one forward +
backward (median of repeats) and the peak memory it adds, per term and feature size.

``python -m bench.relations [--sizes 16x32 32x64 --batch 2 --repeats 3 --device cpu]``
``python -m bench.relations --shapes synthetic [--term-sizes synthetic]``: the synthetic benchmark's
shapes (K 7, C_s 16, C_t 32, batch 16, 16×16) with CIRKD's term sizes or the benchmark's own
(discriminator width, memory banks and negatives: ``DATASET_DEFAULTS["synthetic"]`` of the recipes).
``python -m bench.relations --providers [--sizes 32x64 64x128 --channels 128]``: the relation
computations themselves, forward + backward, each provider in its own process: CIRKD's dense
formula (``losses/cirkd_mini_batch.py``: one N×N similarity pair per image pair, softmax, KL;
``losses/cirkd_memory.py``: anchors × negatives logits), the chunked PyTorch term frkd had before
``frkd::relation_kl`` (mini-batch only; its memory relation was the dense formula), and the op on
every backend live for the device. Memory relation at CIRKD's sizes: all B·N pixels anchor,
``pixel_contrast_size // K + 1`` = 216 negatives per class of K = 19 (4 104 keys; the 20 000-slot
bank only sets which rows are drawn). ``--chunk-elements N``: the chunked provider's block of
similarities (default ``CHUNK_ELEMENTS`` below).

Each (term, size) runs in a fresh process so that its peak is its own: on the CPU the peak is the
growth of the process's peak RSS (VmHWM, reset first) over one forward + backward after the inputs
and the loss (its "state": parameters, memory banks) exist, on a GPU
``torch.cuda.max_memory_allocated`` over the same call. Shapes follow CIRKD's DeepLabV3 R101 → R18
run: per-GPU batch 2, C_s 128 / C_t 512 feature channels, K = 19, CIRKD's bank sizes; the feature
H×W is the crop / 8 (64×128 for a 512×1024 Cityscapes crop).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time

import torch
import torch.nn.functional as F

import frkd_kernels
from frkd.losses import DATASET_DEFAULTS, build_loss, cross_image
from frkd.models import SegOutput

TERMS = {  # term -> the build_loss options that switch on that term alone
    "kd (reference)": {"lambda_kd": 1.0},
    "minibatch_pixel": {"lambda_minibatch_pixel": 1.0},
    "memory_pixel+region": {"lambda_memory_pixel": 0.1, "lambda_memory_region": 0.1},
    "cwd_fea": {"lambda_cwd_fea": 50.0},
    "cwd_logit": {"lambda_cwd_logit": 3.0},
    "ifv": {"lambda_ifv": 20.0},
    "adv (G term + D loss)": {"lambda_adv": 0.001, "lambda_d": 0.1},
}
# --shapes -> classes, student / teacher feature channels, images per device, feature H×W
SHAPES = {"cirkd": dict(K=19, C_s=128, C_t=512, batch=2, sizes=[(16, 32), (32, 64)]),
          "synthetic": dict(K=7, C_s=16, C_t=32, batch=16, sizes=[(16, 16)])}
SIZE_OPTIONS = ("d_width", "pixel_memory_size", "region_memory_size", "pixel_contrast_size", "region_contrast_size")


def term_sizes(which: str) -> dict:
    """The size options of the terms: {} for CIRKD's, else the synthetic benchmark's overrides."""
    if which == "cirkd":
        return {}
    recipes = DATASET_DEFAULTS["synthetic"]
    return {k: v for recipe in ("cwd", "cirkd") for k, v in recipes[recipe].items() if k in SIZE_OPTIONS}


def _rss_field(name: str) -> int:
    """VmRSS / VmHWM (peak RSS) of this process in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {name}")


def _reset_peak(device: torch.device) -> int:
    """Reset the peak to what is live now and return that baseline (bytes)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as f:  # "5": VmHWM := VmRSS (Linux ≥ 4.0)
        f.write("5")
    return _rss_field("VmRSS")


def _peak_bytes(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss_field("VmHWM")


def _time_step(step, dev: torch.device, repeats: int) -> dict:
    """{"first_s", "median_s", "peak_mb"} of ``step``: its first call (with the peak memory it adds), then the
    median of ``repeats`` more."""
    before = _reset_peak(dev)
    started = time.perf_counter()
    step()
    first = time.perf_counter() - started
    peak = _peak_bytes(dev) - before
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return {"first_s": first, "median_s": statistics.median(times) if times else first, "peak_mb": peak / 2 ** 20}


def _measure(term: str, shapes: str, sizes: dict, B: int, H: int, W: int, repeats: int, device: str,
             threads: int | None, queue) -> None:
    if threads:
        torch.set_num_threads(threads)  # a spawned process starts with torch's default
    torch.manual_seed(0)
    dev = torch.device(device)
    K, C_S, C_T = (SHAPES[shapes][k] for k in ("K", "C_s", "C_t"))
    options = {"lambda_kd": 0.0, **TERMS[term], **sizes}
    loss = build_loss("kd", num_classes=K, student_channels=C_S, teacher_channels=C_T, **options).to(dev)
    z_s = torch.randn(B, K, H, W, device=dev, requires_grad=True)
    f_s = torch.randn(B, C_S, H, W, device=dev, requires_grad=True)
    teacher = SegOutput(torch.randn(B, K, H, W, device=dev), None, torch.randn(B, C_T, H, W, device=dev))
    labels = torch.randint(0, K, (B, 8 * H, 8 * W), device=dev)

    def step():
        student = SegOutput(z_s, None, f_s)
        total = sum(loss(student, teacher, labels).values())
        if loss.discriminator_parameters():
            total = total + loss.discriminator_loss(student, teacher)
        total.backward()
        z_s.grad = f_s.grad = None
        loss.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    state = sum(t.numel() * t.element_size() for t in list(loss.parameters()) + list(loss.buffers()))
    queue.put({"term": term, "B": B, "H": H, "W": W, **_time_step(step, dev, repeats), "state_mb": state / 2 ** 20})


def _in_process(target, args: tuple, failed: dict) -> dict:
    """Run ``target(*args, queue)`` in a fresh spawned process; its row, or ``failed`` + the exit code."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return {**failed, "error": f"exit code {proc.exitcode}"}
    return queue.get()


def measure(term: str, B: int, H: int, W: int, repeats: int, device: str, shapes: str = "cirkd",
            sizes: dict | None = None, threads: int | None = None) -> dict:
    return _in_process(_measure, (term, shapes, sizes or {}, B, H, W, repeats, device, threads),
                       {"term": term, "B": B, "H": H, "W": W})


# --- --providers: the relation computations themselves ------------------------------------------

RELATIONS = ("minibatch_pixel", "memory_pixel")
CIRKD_NEGATIVES = (4096 // 19 + 1) * 19  # pixel_contrast_size // K + 1 slots of each of K = 19 classes
CONTRAST_TEMPERATURE, CONTRAST_KD_TEMPERATURE = 0.1, 1.0  # CIRKD's defaults
# the chunked provider's similarities per block and network (frkd's CHUNK_ELEMENTS before the op)
CHUNK_ELEMENTS = {"cuda": 1 << 24, "cpu": 1 << 20}


def cirkd_minibatch(f_s, f_t, tau: float):
    """CIRKD's mini-batch formula: per ordered image pair an N×N similarity per network, row
    softmax, KL with ``batchmean``, mean over the B² pairs."""
    B = f_s.shape[0]
    s = F.normalize(f_s, p=2, dim=1).flatten(2)
    t = F.normalize(f_t.detach(), p=2, dim=1).flatten(2)
    total = f_s.new_zeros(())
    for i in range(B):
        for j in range(B):
            log_p_s = F.log_softmax(s[i].T @ s[j] / tau, dim=1)
            p_t = F.softmax(t[i].T @ t[j] / tau, dim=1)
            total = total + F.kl_div(log_p_s, p_t, reduction="batchmean")
    return total / (B * B)


def cirkd_memory(s, t, negatives, tau: float, kd: float):
    """CIRKD's memory relation: anchors × negatives logits of both networks, KL at ``kd``, ``batchmean``·kd²."""
    log_p_s = F.log_softmax(s @ negatives.T / tau / kd, dim=1)
    p_t = F.softmax(t.detach() @ negatives.T / tau / kd, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * kd ** 2


class ChunkedPairRelationKL(torch.autograd.Function):
    """frkd's mini-batch relation before ``frkd::relation_kl``: Σ over the B·N rows of the B blocks of
    KL(softmax(T) ‖ softmax(S)), S = s·sᵀ/τ, T = t·tᵀ/τ, / (N·B²), ``chunk`` rows at a time in both
    passes (the backward recomputes each chunk; with one chunk it keeps p_S − p_T instead).
    s B·N×C_s unit rows (grad), t B·N×C_t unit rows."""

    @staticmethod
    def _log_softmax(e, rows: slice, tau: float, B: int):
        sim = e[rows] @ e.T / tau
        return F.log_softmax(sim.view(sim.shape[0], B, -1), dim=-1)

    @staticmethod
    def forward(ctx, s, t, tau: float, B: int, chunk: int):
        total = s.new_zeros((), dtype=torch.float64)
        for start in range(0, s.shape[0], chunk):
            rows = slice(start, start + chunk)
            log_s = ChunkedPairRelationKL._log_softmax(s, rows, tau, B)
            log_t = ChunkedPairRelationKL._log_softmax(t, rows, tau, B)
            total += (log_t.exp() * (log_t - log_s)).sum(dtype=torch.float64)
        if chunk >= s.shape[0]:
            ctx.save_for_backward(s, (log_s.exp() - log_t.exp()).flatten(1))
        else:
            ctx.save_for_backward(s, t)
        ctx.meta = (tau, B, chunk)
        return (total / (s.shape[0] * B)).to(s.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        s, kept = ctx.saved_tensors
        tau, B, chunk = ctx.meta
        scale = grad / (s.shape[0] * B * tau)
        grad_s = torch.zeros_like(s)
        for start in range(0, s.shape[0], chunk):
            rows = slice(start, start + chunk)
            if chunk >= s.shape[0]:
                g = kept * scale
            else:
                g = (ChunkedPairRelationKL._log_softmax(s, rows, tau, B).exp()
                     - ChunkedPairRelationKL._log_softmax(kept, rows, tau, B).exp()).flatten(1) * scale
            grad_s[rows] += g @ s
            grad_s += g.T @ s[rows]
        return grad_s, None, None, None, None


def chunked_minibatch(f_s, f_t, tau: float, chunk_elements: int):
    B, N = f_s.shape[0], f_s.shape[2] * f_s.shape[3]
    s = F.normalize(f_s, p=2, dim=1).flatten(2).transpose(1, 2).reshape(B * N, -1)
    t = F.normalize(f_t.detach(), p=2, dim=1).flatten(2).transpose(1, 2).reshape(B * N, -1)
    return ChunkedPairRelationKL.apply(s, t, tau, B, max(1, chunk_elements // (B * N)))


def providers(relation: str, device: str) -> list[str]:
    """The providers of ``relation`` ("minibatch_pixel" or "memory_pixel") on ``device``."""
    ops = [f"op:{b}" for b in frkd_kernels.BACKENDS if frkd_kernels.can_serve(b, torch.device(device))[0]]
    before = ["frkd chunked (before the op)"] if relation == "minibatch_pixel" else []
    return ["cirkd dense", *before, *ops]


def _measure_provider(relation: str, provider: str, B: int, C: int, H: int, W: int, repeats: int, device: str,
                      threads: int | None, chunk_elements: int | None, queue) -> None:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    tau, kd = CONTRAST_TEMPERATURE, CONTRAST_KD_TEMPERATURE
    if relation == "minibatch_pixel":
        inputs = (torch.randn(B, C, H, W, device=dev, requires_grad=True), torch.randn(B, C, H, W, device=dev))
        if provider == "cirkd dense":
            def loss_of(f_s, f_t):
                return cirkd_minibatch(f_s, f_t, tau)
        elif provider.startswith("frkd chunked"):
            chunk = chunk_elements or CHUNK_ELEMENTS["cpu" if dev.type == "cpu" else "cuda"]

            def loss_of(f_s, f_t):
                return chunked_minibatch(f_s, f_t, tau, chunk)
        else:
            def loss_of(f_s, f_t):
                with frkd_kernels.use_backend(provider.split(":")[1]):
                    return cross_image.minibatch_pixel_relation(f_s, f_t, tau)
    else:
        anchors = B * H * W
        inputs = (F.normalize(torch.randn(anchors, C, device=dev), dim=1).requires_grad_(),
                  F.normalize(torch.randn(anchors, C, device=dev), dim=1),
                  F.normalize(torch.randn(CIRKD_NEGATIVES, C, device=dev), dim=1))
        if provider == "cirkd dense":
            def loss_of(s, t, negatives):
                return cirkd_memory(s, t, negatives, tau, kd)
        else:
            def loss_of(s, t, negatives):
                with frkd_kernels.use_backend(provider.split(":")[1]):
                    return frkd_kernels.relation_kl(s, t, negatives, negatives, temperature=tau * kd) * kd ** 2

    def step():
        loss_of(*inputs).backward()
        inputs[0].grad = None
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    queue.put({"relation": relation, "provider": provider, "B": B, "C": C, "H": H, "W": W,
               **_time_step(step, dev, repeats)})


def measure_provider(relation: str, provider: str, B: int, C: int, H: int, W: int, repeats: int, device: str,
                     threads: int | None = None, chunk_elements: int | None = None) -> dict:
    return _in_process(_measure_provider, (relation, provider, B, C, H, W, repeats, device, threads, chunk_elements),
                       {"relation": relation, "provider": provider, "B": B, "C": C, "H": H, "W": W})


def compare_providers(args, sizes) -> list[dict]:
    """The --providers table, with each provider's time and peak as a ratio to CIRKD's dense formula."""
    rows = []
    print(f"device {args.device}, batch {args.batch or 2}, C {args.channels}, threads {args.threads or 'default'}; "
          f"one forward + backward; x cirkd: the provider's time or peak over CIRKD's dense formula")
    print(f"{'relation':16} {'H×W':>8} {'provider':30} {'median s':>9} {'first s':>8} {'peak MB':>8} "
          f"{'time x cirkd':>12} {'peak x cirkd':>12}")
    for H, W in sizes:
        for relation in args.relations:
            dense = None
            for provider in providers(relation, args.device):
                if args.only and provider not in args.only and provider != "cirkd dense":
                    continue
                row = measure_provider(relation, provider, args.batch or 2, args.channels, H, W, args.repeats,
                                       args.device, args.threads, args.chunk_elements)
                rows.append(row)
                if "error" in row:
                    print(f"{relation:16} {H}x{W:<5} {provider:30} {row['error']}", flush=True)
                    continue
                dense = dense or row
                row["time_vs_cirkd"] = row["median_s"] / dense["median_s"]
                row["peak_vs_cirkd"] = row["peak_mb"] / dense["peak_mb"] if dense["peak_mb"] > 0 else float("nan")
                print(f"{relation:16} {H}x{W:<5} {provider:30} {row['median_s']:9.3f} {row['first_s']:8.3f} "
                      f"{row['peak_mb']:8.0f} {row['time_vs_cirkd']:12.2f} {row['peak_vs_cirkd']:12.3f}", flush=True)
    return rows


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes: expected HxW such as 32x64, got {text!r}") from None
    return h, w


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.relations", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="cirkd", choices=tuple(SHAPES),
                   help="CIRKD's per-GPU shapes or the synthetic benchmark's (default: cirkd)")
    p.add_argument("--term-sizes", default="cirkd", choices=("cirkd", "synthetic"),
                   help="discriminator width, memory banks and negatives: CIRKD's or the synthetic benchmark's")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=None,
                   help="feature H×W (crop / 8); CIRKD's Cityscapes crop is 64x128 (default: 16x32 32x64; "
                        "synthetic shapes 16x16)")
    p.add_argument("--batch", type=int, default=None,
                   help="images per device (CIRKD: 16 over 8 GPUs; default 2, synthetic shapes 16)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--terms", nargs="+", default=list(TERMS), choices=list(TERMS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads per measuring process")
    p.add_argument("--providers", action="store_true",
                   help="time the relation computations (CIRKD's dense formula, frkd's chunked term before the "
                        "op, frkd::relation_kl per live backend) instead of the loss terms; sizes default to "
                        "32x64 64x128")
    p.add_argument("--channels", type=int, default=128, help="--providers: feature channels of both networks")
    p.add_argument("--relations", nargs="+", default=list(RELATIONS), choices=RELATIONS,
                   help="--providers: the relations to time (default: both)")
    p.add_argument("--only", nargs="+", default=None, metavar="PROVIDER",
                   help="--providers: time only these providers besides CIRKD's dense formula, e.g. 'op:cpu'")
    p.add_argument("--chunk-elements", type=int, default=None,
                   help="--providers: similarities per block of the chunked provider (default: CHUNK_ELEMENTS "
                        "of the device, 2^20 on CPU, 2^24 on GPU)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    if args.chunk_elements is not None and args.chunk_elements < 1:
        p.error(f"--chunk-elements: expected a positive number of similarities, got {args.chunk_elements}")
    if args.providers:
        rows = compare_providers(args, args.sizes or [(32, 64), (64, 128)])
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return 0
    shapes = SHAPES[args.shapes]
    batch, sizes = args.batch or shapes["batch"], args.sizes or shapes["sizes"]
    extra = term_sizes(args.term_sizes)
    rows = []
    print(f"device {args.device}, batch {batch}, K {shapes['K']}, C_s {shapes['C_s']}, C_t {shapes['C_t']}, "
          f"term sizes {args.term_sizes} {extra or ''}; one forward + backward")
    print(f"{'term':24} {'H×W':>8} {'median s':>9} {'first s':>8} {'peak MB':>8} {'state MB':>9}")
    for H, W in sizes:
        for term in args.terms:
            row = measure(term, batch, H, W, args.repeats, args.device, args.shapes, extra, args.threads)
            rows.append(row)
            if "error" in row:
                print(f"{term:24} {H}x{W:<5} {row['error']}")
            else:
                print(f"{term:24} {H}x{W:<5} {row['median_s']:9.3f} {row['first_s']:8.3f} {row['peak_mb']:8.0f} {row['state_mb']:9.1f}",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
