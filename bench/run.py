"""Benchmark every frkd op, the IFV term and the FRKD feature loss against their peers.

    python -m bench --device cuda --out bench/results/cuda.json --markdown docs/performance.md
    python -m bench --device cpu --out bench/results/cpu.json --markdown docs/performance.md

Each result row is one (workload, shape, provider, mode) with: median_ms, p20_ms, p80_ms,
peak_mem_mib (GPU; null on CPU), bytes (the byte model, bench/byte_model.py), gb_per_s,
pct_copy_bw (of the copy bandwidth measured in the same run), speedup_vs {peer: peer time /
this time}, max_abs_diff_vs_eager (forward outputs), error (null, or why it failed).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as ``python bench/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench import providers, report, shapes  # noqa: E402
from bench.measure import MODES, measure_workload  # noqa: E402
from bench.timing import copy_bandwidth_gbs  # noqa: E402
from bench.workloads import WORKLOADS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COPY_BYTES = {"cuda": 1 << 30, "cpu": 1 << 26}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true",
                   help="the first shape of the device's set only (the headline case on GPU), 3 repeats on CPU")
    p.add_argument("--ops", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS), metavar="WORKLOAD",
                   help=f"workloads to run (default all): {', '.join(WORKLOADS)}")
    p.add_argument("--providers", nargs="+", metavar="PROVIDER",
                   help=f"providers to run (default: every live one): {', '.join(providers.ALL)}")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--shapes", nargs="+", metavar="NAME",
                   help=f"shape sets or shape names (default: gpu on cuda, cpu on cpu): {', '.join(shapes.SETS)}")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="feature and logit dtype")
    p.add_argument("--warmup", type=int, default=2, help="CPU: untimed calls before timing")
    p.add_argument("--repeats", type=int, default=10, help="CPU: timed calls (median reported)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU: torch.set_num_threads (also OpenMP's) for the run; default: torch's choice")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<device>.json)")
    p.add_argument("--markdown", default=None,
                   help="markdown file whose bench:<device> section (bench:<device>-<N>t with --threads N) is rewritten")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False (use --device cpu)")
    return args


def _commit() -> str:
    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True)
    head = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    dirty = bool(git("status", "--porcelain", "--", "frkd_kernels", "csrc", "frkd", "bench").stdout.strip())
    return head + ("+uncommitted changes" if dirty else "")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def run(args, argv: list[str]) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    shape_list = shapes.resolve(args.shapes or ["gpu" if device.type == "cuda" else "cpu"])
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    if args.quick:
        shape_list = shape_list[:1]
    live = providers.availability(device, args.providers)
    skipped = {name: why for name in args.ops if (why := WORKLOADS[name].unavailable())}
    loads = [os.getloadavg()[0]]  # 1-minute load average, sampled after every workload
    copy_gbs = copy_bandwidth_gbs(device, COPY_BYTES[device.type], warmup=args.warmup, repeats=max(repeats, 5))
    feature_size = torch.empty(0, dtype=dtype).element_size()
    rows = []
    for shape in shape_list:
        for name in args.ops:
            if name in skipped:
                continue
            workload = WORKLOADS[name]
            x = workload.make_inputs(shape, device, dtype)
            label_size = x["labels"].element_size() if "labels" in x else 0
            expected = [o.detach() for o in providers.forward_fn("eager", workload)(x)]
            runs = {p: fn for p, why in live.items() if not why and (fn := providers.forward_fn(p, workload))}
            new = measure_workload(workload, shape, runs, x, expected, device=device, modes=args.modes,
                                   feature_size=feature_size, label_size=label_size, copy_gbs=copy_gbs,
                                   warmup=args.warmup, repeats=repeats)
            for r in new:
                timing = f"{r['median_ms']:.3f} ms" if r["error"] is None else r["error"]
                print(f"{shape.name:>14} {name:>20} {r['provider']:>10} {r['mode']:>16}: {timing}", flush=True)
            rows.extend(new)
            loads.append(os.getloadavg()[0])
            del x, expected
    timer = ("triton.testing.do_bench, quantiles 0.5/0.2/0.8, L2 flushed between calls" if device.type == "cuda"
             else f"time.perf_counter, {args.warmup} warm-up + {repeats} timed rounds interleaving the providers, "
                  "median and 20/80 % quantiles")
    meta = {
        "command": " ".join(["python -m bench", *argv]),
        "device": device.type, "device_name": _device_name(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "triton": _triton_version(), "commit": _commit(),
        "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "dtype": args.dtype, "label_dtype": "int64", "timer": timer,
        "copy_bandwidth_gb_per_s": copy_gbs, "copy_bytes": COPY_BYTES[device.type],
        "load_start": loads[0], "load_max": max(loads), "load_end": loads[-1],
        "providers": live, "skipped_workloads": skipped,
        "shapes": {s.name: s.dims() for s in shape_list},
        "workloads": {name: WORKLOADS[name].description for name in args.ops if name not in skipped},
    }
    return {"meta": meta, "results": rows}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    result = run(args, argv)
    out = args.out or str(REPO / "bench" / "results" / f"{args.device}.json")
    report.write_json(out, result)
    print(f"wrote {out}")
    if args.markdown:
        section = args.device + (f"-{args.threads}t" if args.threads else "")
        report.write_markdown(args.markdown, section, report.markdown(result))
        print(f"updated the bench:{section} section of {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
