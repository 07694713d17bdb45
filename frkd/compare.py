"""``python -m frkd.compare``: the method table on the synthetic benchmark.

One teacher (trained once into <out-dir>/teacher.pt, or --teacher-ckpt) is shared by every row; each
row (``none``, every distillation method, FRKD ablations) trains the student for the same number of
iterations once per seed. The seed sets the student's init and data order; the train and val images
are fixed (``data_seed``). Each (row, seed) run is a child process (so its peak memory is its own)
that runs ``frkd.pipeline.run`` on the row's ``RunConfig`` (``frkd.benchmark.run_config``, sent as a
dict); its result is appended to <out-dir>/results.jsonl, and a rerun skips the finished (row, seed)
pairs and resumes an interrupted run from its last.pt.
Outputs: results.jsonl, table.md, miou.png, config.json, runs/<row>-s<seed>/ (checkpoints, logs).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import signal
import sys
import time

from .benchmark import ABLATIONS, BENCHMARK, QUICK, TUNED_FRKD_FLAGS, options_from_flags, run_config, teacher_config
from .config import ConfigError, RunConfig, check_device

SIZE_FLAGS = ("num_classes", "iterations", "teacher_iterations", "width", "teacher_width", "teacher_backbone",
              "batch_size")


def build_parser() -> argparse.ArgumentParser:
    from .losses import LOSSES

    p = argparse.ArgumentParser(prog="python -m frkd.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out-dir", default="runs/compare", help="results, table, chart and per-run folders")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="student seeds (default: 0 1 2; --quick: 0). Tune on other seeds than the table's")
    p.add_argument("--methods", nargs="+", default=list(LOSSES), choices=list(LOSSES), help="rows of the registry")
    p.add_argument("--no-ablations", action="store_true", help="leave out the FRKD ablation rows")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: short teacher and student schedules, one seed, no ablations")
    p.add_argument("--frkd-flags", default=TUNED_FRKD_FLAGS,
                   help="loss flags for every frkd row ('' for frkd.train's defaults on synthetic)")
    p.add_argument("--baseline-flags", action="append", default=[], metavar="METHOD=FLAGS",
                   help="loss flags for one baseline's row, e.g. ifvd='--lambda-intra 2' (repeatable)")
    p.add_argument("--teacher-ckpt", default=None, help="use this teacher instead of training one")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: torch's; 1 is faster on a busy machine)")
    for name in SIZE_FLAGS:
        kind = str if name == "teacher_backbone" else int
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None,
                       help=f"benchmark size override (default {BENCHMARK[name]}, --quick {QUICK[name]})")
    return p


def benchmark_config(args) -> dict:
    """The benchmark (data, models, schedule) of this invocation; results in one out dir share it."""
    config = dict(QUICK if args.quick else BENCHMARK)
    for name in SIZE_FLAGS:
        if getattr(args, name) is not None:
            config[name] = getattr(args, name)
    config["frkd_flags"] = shlex.split(args.frkd_flags)
    if args.baseline_flags:  # absent otherwise, so out dirs of earlier versions stay resumable
        config["baseline_flags"] = parse_baseline_flags(args.baseline_flags)
    config["teacher_ckpt"] = os.path.abspath(args.teacher_ckpt) if args.teacher_ckpt else None
    return config


def parse_baseline_flags(items: list[str]) -> dict[str, list[str]]:
    """["ifvd=--lambda-intra 2", ...] -> {"ifvd": ["--lambda-intra", "2"]}; frkd has --frkd-flags."""
    from .losses import LOSSES

    flags = {}
    for item in items:
        method, sep, text = item.partition("=")
        if not sep or method not in LOSSES or method in ("none", "frkd"):
            raise SystemExit(f"--baseline-flags: expected METHOD=FLAGS with METHOD one of "
                             f"{', '.join(m for m in LOSSES if m not in ('none', 'frkd'))}, got {item!r}")
        flags[method] = shlex.split(text)
    return flags


def table_rows(methods: list[str], ablations: bool, frkd_flags: list[str],
               baseline_flags: dict[str, list[str]] | None = None) -> list[tuple[str, str, list[str]]]:
    """(row name, method, loss flags) in table order: ``none`` first (when asked for), ablations after ``frkd``."""
    ordered = sorted(dict.fromkeys(methods), key=lambda m: m != "none")
    own = {**(baseline_flags or {}), "frkd": frkd_flags}
    rows = [(m, m, list(own.get(m, []))) for m in ordered]
    if ablations and "frkd" in methods:
        rows += [(name, "frkd", list(frkd_flags) + flags) for name, flags in ABLATIONS.items()]
    return rows


def check_row_flags(rows) -> None:
    """Every row's loss flags parse for its method (before any work); SystemExit naming the row otherwise."""
    for name, method, flags in rows:
        try:
            options_from_flags(method, flags)
        except ValueError as error:
            raise SystemExit(f"frkd.compare: error: row {name} ({' '.join(flags)}): {error}") from None


def set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB; None where /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def seconds_per_iteration(metrics_path: str, phase: str = "student") -> float | None:
    """1 / the trainer's last logged it/s of ``phase`` (training steps only, evaluation excluded)."""
    from .run_log import read_records

    rates = [r["it_per_s"] for r in read_records(metrics_path) if r.get("phase") == phase and r.get("it_per_s")]
    return 1.0 / rates[-1] if rates else None


def train_student(config: RunConfig) -> dict:
    """Trains one (row, seed) student with ``frkd.pipeline.run``; returns its result record."""
    import torch

    from .pipeline import run

    cuda = torch.cuda.is_available() and config.runtime.device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_before = proc_status_mb("VmRSS")
    started = time.time()
    summary = run(config)
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    else:
        hwm = proc_status_mb("VmHWM")
        peak = hwm - rss_before if hwm is not None and rss_before is not None else None
        kind = "cpu_rss_delta"
    return {"miou": summary["student_miou"], "pixel_acc": summary["student_pixel_acc"],
            "per_class_iou": summary["student_per_class_iou"], "best_miou": summary["student_best_miou"],
            "iterations": summary["iterations"],
            "s_per_iter": seconds_per_iteration(os.path.join(config.runtime.out_dir, "metrics.jsonl")),
            "peak_mem_mb": peak, "peak_mem_kind": kind, "wall_s": time.time() - started,
            "device": config.runtime.device}


def _child_main(job: dict, result_path: str) -> None:
    """Child process entry: logs to <run dir>/train.log, writes the record to ``result_path``."""
    os.makedirs(job["run_dir"], exist_ok=True)
    log = open(os.path.join(job["run_dir"], "train.log"), "a", buffering=1)
    sys.stdout = sys.stderr = log
    set_threads(job["threads"])
    record = train_student(RunConfig.from_dict(job["config"]))
    with open(result_path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(result_path + ".tmp", result_path)


def run_in_child(job: dict) -> dict | None:
    """Runs ``train_student`` in a fresh process; the record, or None when the run failed or stopped."""
    result_path = os.path.join(job["run_dir"], "result.json")
    if os.path.exists(result_path):
        os.remove(result_path)
    process = multiprocessing.get_context("spawn").Process(target=_child_main, args=(job, result_path))
    process.start()
    try:
        process.join()
    except BaseException:  # Ctrl-C or SIGTERM: the child's trainer saves last.pt on SIGTERM, then stops
        if process.is_alive():
            process.terminate()
        process.join()
        raise
    if process.exitcode != 0 or not os.path.exists(result_path):
        return None
    with open(result_path) as f:
        return json.load(f)


def check_config(out_dir: str, config: dict) -> None:
    """Writes <out-dir>/config.json, or refuses when the out dir holds results of another benchmark."""
    path = os.path.join(out_dir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        differs = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
        if differs:
            raise SystemExit(f"frkd.compare: --out-dir {out_dir} holds results of another benchmark (differs in "
                             f"{', '.join(differs)}); use another --out-dir or delete it")
        return
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def obtain_teacher(config: dict, out_dir: str, device: str, threads: int | None) -> dict:
    """Trains (or reuses, or loads) the shared teacher; returns {"name", "path", "miou"}."""
    from .distributed import init_distributed
    from .engine import evaluate_model
    from .pipeline import build_datasets, load_given_teacher, prepare, train_teacher
    from .run_log import MetricsLog

    run = prepare(teacher_config(config, out_dir=out_dir, device=device, teacher_ckpt=config["teacher_ckpt"],
                                 threads=threads))
    env = init_distributed(run.runtime.device)
    train_set, val_set = build_datasets(run)
    teacher = load_given_teacher(run) or train_teacher(run, env, train_set, val_set, MetricsLog(out_dir))
    if teacher.miou is None:  # a foreign checkpoint: measure it on the fixed val set
        teacher.miou = evaluate_model(teacher.model.to(env.device), val_set, run, env)["miou"]
    path = config["teacher_ckpt"] or os.path.join(out_dir, "teacher.pt")
    mc = teacher.config
    return {"name": f"{mc['arch']}-{mc['backbone']} (width {mc['width']})", "path": path, "miou": teacher.miou}


def write_report(out_dir: str, results_path: str, rows, teacher: dict, config: dict) -> str:
    from .compare_report import bar_chart, markdown_table, read_results, summarise

    order = [name for name, _, _ in rows]
    summary = summarise([r for r in read_results(results_path) if r["row"] in order], order)
    student = f"{config['student_backbone']} (width {config['width']})"
    table = markdown_table(summary, teacher, {**config, "student": student, "device": teacher["device"]})
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table)
    if summary:
        bar_chart(summary, teacher, os.path.join(out_dir, "miou.png"))
    return table


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .engine import TrainingStopped

    previous = signal.signal(signal.SIGTERM, _interrupt) if _in_main_thread() else None
    try:
        return compare(args)
    except ConfigError as error:
        print(f"frkd.compare: error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, TrainingStopped):
        print(f"frkd.compare: stopped; finished runs are kept in {os.path.join(args.out_dir, 'results.jsonl')}, "
              "an interrupted one in its last.pt: rerun the same command to continue", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def compare(args) -> int:
    """Teacher, then every missing (row, seed) run, then the table; 1 when some run failed."""
    from .compare_report import append_result, read_results
    from .distributed import resolve_device

    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    config = benchmark_config(args)
    rows = table_rows(args.methods, not (args.no_ablations or args.quick), config["frkd_flags"],
                      config.get("baseline_flags"))
    os.makedirs(args.out_dir, exist_ok=True)
    check_config(args.out_dir, config)
    check_row_flags(rows)
    check_device(args.device)
    set_threads(args.threads)
    device = str(resolve_device(args.device))
    print(f"frkd.compare: {len(rows)} rows × seeds {seeds} on {device}; out {args.out_dir}", flush=True)
    teacher = {**obtain_teacher(config, args.out_dir, device, args.threads), "device": device}
    print(f"teacher {teacher['name']}: mIoU {100 * teacher['miou']:.2f} ({teacher['path']})", flush=True)
    results_path = os.path.join(args.out_dir, "results.jsonl")
    done = {(r["row"], r["seed"]) for r in read_results(results_path)}
    failed = []
    for seed in seeds:
        for name, method, flags in rows:
            if (name, seed) in done:
                continue
            run_dir = os.path.join(args.out_dir, "runs", f"{name}-s{seed}")
            run = run_config(config, method=method, options=options_from_flags(method, flags), seed=seed,
                             out_dir=run_dir, device=device, threads=args.threads,
                             teacher_ckpt=None if method == "none" else teacher["path"])
            job = {"config": run.to_dict(), "run_dir": run_dir, "threads": args.threads}
            record = run_in_child(job)
            if record is None:
                failed.append(f"{name} seed {seed} (see {os.path.join(run_dir, 'train.log')})")
                print(f"  {name} seed {seed}: FAILED, see {os.path.join(run_dir, 'train.log')}", flush=True)
                continue
            append_result(results_path, {"row": name, "method": method, "flags": flags, "seed": seed, **record})
            print(f"  {name} seed {seed}: mIoU {100 * record['miou']:.2f}, {record['s_per_iter']:.3f} s/iter, "
                  f"{record['wall_s']:.0f} s", flush=True)
            write_report(args.out_dir, results_path, rows, teacher, config)
    print(write_report(args.out_dir, results_path, rows, teacher, config))
    print(f"wrote {os.path.join(args.out_dir, 'table.md')}, miou.png, results.jsonl", flush=True)
    if failed:
        print("failed runs (rerun the same command to retry them): " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
