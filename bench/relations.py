"""Cost of the recipe terms added for CIRKD's rows, on the CPU or a GPU: time of one forward +
backward (median of repeats) and the peak memory it adds, per term and feature size.

``python -m bench.relations [--sizes 16x32 32x64 --batch 2 --repeats 3 --device cpu]``
``python -m bench.relations --shapes synthetic [--term-sizes synthetic]``: the synthetic benchmark's
shapes (K 7, C_s 16, C_t 32, batch 16, 16×16) with CIRKD's term sizes or the benchmark's own
(discriminator width, memory banks and negatives: ``DATASET_DEFAULTS["synthetic"]`` of the recipes).
``--chunk-elements N``: the mini-batch relation's block of similarities (default
``frkd.losses.cross_image.CHUNK_ELEMENTS`` of the device).

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


def _measure(term: str, shapes: str, sizes: dict, B: int, H: int, W: int, repeats: int, device: str,
             threads: int | None, chunk_elements: int | None, queue) -> None:
    if threads:
        torch.set_num_threads(threads)  # a spawned process starts with torch's default
    torch.manual_seed(0)
    dev = torch.device(device)
    if chunk_elements:  # every device's block: cross_image picks the key
        cross_image.CHUNK_ELEMENTS.update(dict.fromkeys(cross_image.CHUNK_ELEMENTS, chunk_elements))
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
    queue.put({"term": term, "B": B, "H": H, "W": W, "first_s": first,
               "median_s": statistics.median(times) if times else first, "peak_mb": peak / 2 ** 20,
               "state_mb": state / 2 ** 20})


def measure(term: str, B: int, H: int, W: int, repeats: int, device: str, shapes: str = "cirkd",
            sizes: dict | None = None, threads: int | None = None, chunk_elements: int | None = None) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(term, shapes, sizes or {}, B, H, W, repeats, device, threads,
                                              chunk_elements, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return {"term": term, "B": B, "H": H, "W": W, "error": f"exit code {proc.exitcode}"}
    return queue.get()


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
    p.add_argument("--chunk-elements", type=int, default=None,
                   help="similarities per block of the mini-batch relation (default: CHUNK_ELEMENTS of the "
                        "device, 2^20 on CPU, 2^24 on GPU)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    if args.chunk_elements is not None and args.chunk_elements < 1:
        p.error(f"--chunk-elements: expected a positive number of similarities, got {args.chunk_elements}")
    shapes = SHAPES[args.shapes]
    batch, sizes = args.batch or shapes["batch"], args.sizes or shapes["sizes"]
    extra = term_sizes(args.term_sizes)
    rows = []
    print(f"device {args.device}, batch {batch}, K {shapes['K']}, C_s {shapes['C_s']}, C_t {shapes['C_t']}, "
          f"term sizes {args.term_sizes} {extra or ''}, relation blocks "
          f"{args.chunk_elements or 'default'}; one forward + backward")
    print(f"{'term':24} {'H×W':>8} {'median s':>9} {'first s':>8} {'peak MB':>8} {'state MB':>9}")
    for H, W in sizes:
        for term in args.terms:
            row = measure(term, batch, H, W, args.repeats, args.device, args.shapes, extra, args.threads,
                          args.chunk_elements)
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
