"""Benchmark every frkd op, the IFV term, the FRKD feature loss and the training-step share.

    python -m bench --device cpu --quick                 # writes runs/bench/cpu-quick.json
    python -m bench --device cuda --record               # bench/results/cuda.json + docs/performance.md
    python -m bench --device cpu --threads 1 --record    # bench/results/cpu-1t.json + its section

Committed results (``bench/results/``) and the docs tables are written only when asked: with
``--record``, or with an explicit ``--out``/``--markdown``; otherwise the JSON goes to
``runs/bench/`` (under the current folder). ``--record`` refuses ``--quick``, ``--shapes`` and
``--ops``: a record is the full default set.

Each op row is one (workload, shape, provider, mode) with: median_ms, p20_ms, p80_ms,
peak_mem_mib (GPU; null on CPU), bytes (the byte model, bench/byte_model.py), gb_per_s,
pct_copy_bw (of the copy bandwidth measured in the same run), speedup_vs {peer: peer time /
this time}, max_abs_diff_vs_eager (forward outputs), error (null, or why it failed). The
step-share rows (``step_share`` in the JSON, bench/step_share.py) are one per (part, backend).
A provider that fails is reported in its row and on stderr, and the exit status is 1.
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

import frkd_kernels  # noqa: E402

from bench import providers, report, shapes, step_share  # noqa: E402
from bench.measure import MODES, measure_workload  # noqa: E402
from bench.timing import copy_bandwidth_gbs  # noqa: E402
from bench.workloads import WORKLOADS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COPY_BYTES = {"cuda": 1 << 30, "cpu": 1 << 26}
ALL_WORKLOADS = list(WORKLOADS) + [step_share.NAME]
SCRATCH_DIR = Path("runs") / "bench"  # relative to the current folder, like frkd.train's runs/


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true",
                   help="the first shape of the device's set only (the headline case on GPU), 3 repeats on CPU")
    p.add_argument("--ops", nargs="+", choices=ALL_WORKLOADS, default=None, metavar="WORKLOAD",
                   help=f"workloads to run (default all): {', '.join(ALL_WORKLOADS)}")
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
    p.add_argument("--record", action="store_true",
                   help="write the committed results: bench/results/<key>.json and the bench:<key> section of "
                        "docs/performance.md (key: <device>, or <device>-<N>t with --threads N)")
    p.add_argument("--out", default=None,
                   help=f"JSON path (default: {SCRATCH_DIR}/<key>[-quick].json; bench/results/<key>.json with --record)")
    p.add_argument("--markdown", default=None,
                   help="markdown file whose bench:<key> section is rewritten (docs/performance.md with --record)")
    p.add_argument("--section", default=None,
                   help="the markdown section's key, for a partial run kept beside the full one "
                        "(default: <device>, or <device>-<N>t with --threads N)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False (use --device cpu)")
    if args.record:
        partial = [flag for flag, given in (("--quick", args.quick), ("--shapes", args.shapes), ("--ops", args.ops),
                                            ("--section", args.section)) if given]
        if partial:
            p.error(f"--record: a record is the full default set; drop {', '.join(partial)} "
                    "(or write elsewhere with --out/--markdown)")
    args.ops = args.ops or ALL_WORKLOADS
    return args


def result_key(args) -> str:
    """``cpu``, ``cuda``, or ``cpu-<N>t`` with --threads N: names the results file and docs section."""
    return args.device + (f"-{args.threads}t" if args.threads else "")


def section_key(args) -> str:
    return args.section or result_key(args)


def output_paths(args) -> tuple[Path, Path | None]:
    """(JSON path, markdown path or None): committed files only with --record or when named."""
    key = result_key(args)
    if args.record:
        default_out, default_md = REPO / "bench" / "results" / f"{key}.json", REPO / "docs" / "performance.md"
    else:
        default_out, default_md = SCRATCH_DIR / f"{key}{'-quick' if args.quick else ''}.json", None
    out = Path(args.out) if args.out else default_out
    markdown = Path(args.markdown) if args.markdown else default_md
    return out, markdown


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


def _print_row(r: dict, label: str) -> None:
    if r["error"] is None:
        print(f"{label}: {r['median_ms']:.3f} ms", flush=True)
    else:
        print(f"{label}: FAILED {r['error']}", file=sys.stderr, flush=True)


def run(args, argv: list[str]) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    shape_list = shapes.resolve(args.shapes or ["gpu" if device.type == "cuda" else "cpu"])
    op_shapes = [s for s in shape_list if isinstance(s, shapes.Shape)]
    step_shapes = [s for s in shape_list if isinstance(s, shapes.StepShape)]
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    if args.quick:
        op_shapes, step_shapes = op_shapes[:1], step_shapes[:1]
    op_names = [name for name in args.ops if name in WORKLOADS]
    if step_share.NAME not in args.ops:
        step_shapes = []
    live = providers.availability(device, args.providers)
    loads = [os.getloadavg()[0]]  # 1-minute load average, sampled after every workload
    copy_gbs = copy_bandwidth_gbs(device, COPY_BYTES[device.type], warmup=args.warmup, repeats=max(repeats, 5))
    feature_size = torch.empty(0, dtype=dtype).element_size()
    rows = []
    for shape in op_shapes:
        for name in op_names:
            workload = WORKLOADS[name]
            x = workload.make_inputs(shape, device, dtype)
            label_size = x["labels"].element_size() if "labels" in x else 0
            expected = [o.detach() for o in providers.forward_fn("eager", workload)(x)]
            runs = {p: fn for p, why in live.items() if not why and (fn := providers.forward_fn(p, workload))}
            new = measure_workload(workload, shape, runs, x, expected, device=device, modes=args.modes,
                                   feature_size=feature_size, label_size=label_size, copy_gbs=copy_gbs,
                                   warmup=args.warmup, repeats=repeats)
            for r in new:
                _print_row(r, f"{shape.name:>14} {name:>20} {r['provider']:>10} {r['mode']:>16}")
            rows.extend(new)
            loads.append(os.getloadavg()[0])
            del x, expected
    step_rows = []
    step_backends = [p for p, why in live.items() if not why and p in frkd_kernels.BACKENDS]
    for shape in step_shapes:
        new = step_share.measure(shape, device, step_backends, warmup=args.warmup, repeats=repeats)
        for r in new:
            _print_row(r, f"{shape.name:>14} {r['part']:>20} {r['provider'] or '':>10}")
        step_rows.extend(new)
        loads.append(os.getloadavg()[0])
        if device.type == "cuda":
            torch.cuda.empty_cache()
    timer = ("triton.testing.do_bench, quantiles 0.5/0.2/0.8, L2 flushed between calls" if device.type == "cuda"
             else f"time.perf_counter, {args.warmup} warm-up + {repeats} timed rounds interleaving the providers, "
                  "median and 20/80 % quantiles")
    workloads = {name: WORKLOADS[name].description for name in op_names}
    if step_shapes:
        workloads[step_share.NAME] = step_share.DESCRIPTION
    meta = {
        "command": " ".join(["python -m bench", *argv]),
        "device": device.type, "device_name": _device_name(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "triton": _triton_version(), "commit": _commit(),
        "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "dtype": args.dtype, "label_dtype": "int64", "timer": timer,
        "copy_bandwidth_gb_per_s": copy_gbs, "copy_bytes": COPY_BYTES[device.type],
        "load_start": loads[0], "load_max": max(loads), "load_end": loads[-1],
        "providers": live,
        "shapes": {s.name: s.dims() for s in op_shapes + step_shapes},
        "workloads": workloads,
    }
    return {"meta": meta, "results": rows, "step_share": step_rows}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    out, markdown = output_paths(args)
    result = run(args, argv)
    report.write_json(out, result)
    print(f"wrote {out}")
    if markdown:
        report.write_markdown(markdown, section_key(args), report.markdown(result))
        print(f"updated the bench:{section_key(args)} section of {markdown}")
    failed = [r for r in result["results"] + result["step_share"] if r["error"]]
    if failed:
        print(f"bench: {len(failed)} row(s) failed (their error is in the JSON and the table)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
