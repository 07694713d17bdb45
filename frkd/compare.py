"""``python -m frkd.compare``: the method table on the synthetic benchmark, and its tuning protocol.

One teacher (trained once into <out-dir>/teacher.pt, or --teacher-ckpt) is shared by every row; each
row (``none``, every recipe, FRKD's ablations; with ``--tune`` every method at every weight scale)
trains the student for the same iterations once per seed, from the same pretrained backbone. The
seeds are shared by all rows, so rows are compared pairwise over seeds (``frkd.stats``). The train and
val images are fixed. Each (row, seed) run is a child process (its peak memory is its own; ``--jobs``
run at once) that runs ``frkd.pipeline.run`` on the row's ``RunConfig`` (``frkd.benchmark``); its
result, with the loss weights it used and its per-class IoU, is appended to <out-dir>/results.jsonl.
A rerun skips finished (row, seed) pairs and resumes an interrupted run from its last.pt.
Each run evaluates at ``benchmark.EVAL_POINTS`` fixed points; its record keeps the curve (the
convergence columns and curves.png). ``--regime`` runs a robustness table (a weaker teacher, noisy
training labels) with the main tuning's weights. The command that makes (and resumes) a table is
printed and written into it.
Outputs: results.jsonl, table.md (or tuning.md + tuned.json), gains.png, curves.png, config.json,
runs/<row>-s<seed>/.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from . import benchmark
from .benchmark import REGIMES, TABLE_METHODS, TABLE_SEEDS, TUNING_RHOS, TUNING_SCALES, TUNING_SEEDS, Row
from .config import ConfigError, RunConfig, check_device


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help already says it, or it has none (None, a switch)."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or "") or action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from .losses import LOSSES

    p = argparse.ArgumentParser(prog="python -m frkd.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--out-dir", default=None, help="results, table, chart and per-run folders "
                                                   "(default: runs/compare, runs/tune with --tune, "
                                                   "runs/compare-<regime> with --regime)")
    p.add_argument("--tune", action="store_true",
                   help="the tuning protocol: every method's weights × each --scales factor, and calibrated at "
                        "each --rhos ratio (shared, and per term for several terms), on the tuning seeds; writes "
                        "tuning.md and tuned.json")
    p.add_argument("--regime", default="main", choices=list(REGIMES),
                   help="robustness table: " + "; ".join(f"{k}: {v}" for k, v in REGIMES.items() if k != "main") +
                        "; reduced rows, the main tuning's weights")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help=f"student seeds (default: table {' '.join(map(str, TABLE_SEEDS))}; --tune "
                        f"{' '.join(map(str, TUNING_SEEDS))}; --quick 0)")
    p.add_argument("--scales", type=float, nargs="+", default=list(TUNING_SCALES), help="--tune weight factors")
    p.add_argument("--rhos", type=float, nargs="+", default=list(TUNING_RHOS),
                   help="--tune gradient ratios of the calibration (--distill-grad-ratio)")
    p.add_argument("--methods", nargs="+", default=list(TABLE_METHODS), choices=list(LOSSES), help="recipes")
    p.add_argument("--no-ablations", action="store_true", help="leave out the FRKD ablation rows")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: short schedules ({benchmark.QUICK}), one seed, no ablations")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each a process with --threads threads")
    p.add_argument("--teacher-ckpt", default=None, help="use this teacher instead of training one")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    p.add_argument("--pretext-seed", type=int, default=0,
                   help="the draw of the pretext backbones that the teacher and every student start from (built once "
                        "and cached; 0, the headline draw, and 1, 2 have reference builds; docs/method.md 'Backbone draws')")
    return p


def rows_of(args) -> list[Row]:
    if args.tune:
        return benchmark.tuning_rows(args.methods, args.scales, args.rhos)
    return benchmark.table_rows(args.methods, ablations=not (args.no_ablations or args.quick), regime=args.regime)


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


def eval_curve(metrics_path: str, phase: str = "student") -> list[list]:
    """[[iteration, mIoU], ...] of ``phase``'s evaluations, in order (the last one the final evaluation)."""
    from .run_log import read_records

    return [[r["iteration"], r["miou"]] for r in read_records(metrics_path)
            if r.get("phase") == phase and r.get("miou") is not None]


def train_student(config: RunConfig) -> dict:
    """Trains one (row, seed) student with ``frkd.pipeline.run``; returns its result record: mIoU, per-class
    IoU, the loss weights and calibration scales it used, time and peak memory."""
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
    loss = summary["config"]["loss"]
    metrics = os.path.join(config.runtime.out_dir, "metrics.jsonl")
    return {"miou": summary["student_miou"], "curve": eval_curve(metrics), "pixel_acc": summary["student_pixel_acc"],
            "per_class_iou": summary["student_per_class_iou"], "best_miou": summary["student_best_miou"],
            "iterations": summary["iterations"], "weights": loss["resolved"], "grad_ratio": loss["grad_ratio"],
            "term_scales": summary["term_scales"],
            "s_per_iter": seconds_per_iteration(metrics),
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


_CHILDREN: set = set()  # live child processes, stopped together on Ctrl-C / SIGTERM


def stop_children() -> None:
    """SIGTERM to every live child (its trainer saves last.pt, then stops), and wait for them."""
    for process in list(_CHILDREN):
        if process.is_alive():
            process.terminate()
    for process in list(_CHILDREN):
        process.join()


def run_in_child(job: dict) -> dict | None:
    """Runs ``train_student`` in a fresh process; the record, or None when the run failed or stopped."""
    result_path = os.path.join(job["run_dir"], "result.json")
    if os.path.exists(result_path):
        os.remove(result_path)
    process = multiprocessing.get_context("spawn").Process(target=_child_main, args=(job, result_path))
    process.start()
    _CHILDREN.add(process)
    try:
        process.join()
    finally:
        _CHILDREN.discard(process)
    if process.exitcode != 0 or not os.path.exists(result_path):
        return None
    with open(result_path) as f:
        return json.load(f)


def benchmark_record(args, teacher_ckpt: str | None) -> dict:
    """What the results of one out dir share: the resolved benchmark (data, models, schedule) and mode."""
    config = benchmark.run_config(Row("none", "none"), seed=0, out_dir=".", quick=args.quick,
                                  regime=args.regime, pretext_seed=args.pretext_seed).to_dict()
    shared = {k: v for section in ("data", "model", "optim") for k, v in config[section].items()}
    return {**shared, "tune": args.tune, "regime": args.regime, "teacher_ckpt": teacher_ckpt}


def check_benchmark(out_dir: str, record: dict) -> None:
    """Writes <out-dir>/config.json, or refuses when the out dir holds results of another benchmark."""
    path = os.path.join(out_dir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        differs = sorted(k for k in set(previous) | set(record) if previous.get(k) != record.get(k))
        if differs:
            raise ConfigError(f"--out-dir {out_dir}: expected results of this benchmark, found another one (differs "
                              f"in {', '.join(differs)}); use another --out-dir or delete it")
        return
    with open(path, "w") as f:
        json.dump(record, f, indent=2)


def training_crop_error(model, config: RunConfig, env) -> float:
    """1 − pixel accuracy of ``model`` on the crops of the config's training set (all ``train_length`` images
    under the augmentation of epoch 0, clean labels)."""
    from .engine import evaluate_model
    from .pipeline import build_split

    crops = build_split(config.data, "train", True, config.runtime.seed)
    crops.set_epoch(0)
    return 1.0 - evaluate_model(model, crops, config, env)["pixel_acc"]


def obtain_teacher(args, out_dir: str, device: str) -> dict:
    """Trains (or reuses, or loads) the shared teacher of ``args.regime``; returns {"name", "path", "miou",
    "per_class_iou", "iterations", "train_error"} (train_error: its pixel error rate on the training crops)."""
    from .distributed import init_distributed
    from .engine import evaluate_model
    from .pipeline import build_datasets, load_given_teacher, prepare, train_teacher
    from .run_log import MetricsLog

    run = prepare(benchmark.teacher_config(out_dir=out_dir, quick=args.quick, device=device, threads=args.threads,
                                           teacher_ckpt=args.teacher_ckpt, regime=args.regime,
                                           pretext_seed=args.pretext_seed))
    env = init_distributed(run.runtime.device)
    train_set, val_set = build_datasets(run)
    teacher = load_given_teacher(run) or train_teacher(run, env, train_set, val_set, MetricsLog(out_dir))
    model = teacher.model.to(env.device)
    if teacher.miou is None:  # a foreign checkpoint: measure it on the fixed val set
        result = evaluate_model(model, val_set, run, env)
        teacher.miou, teacher.per_class_iou = result["miou"], result["per_class_iou"]
    path = args.teacher_ckpt or os.path.join(out_dir, "teacher.pt")
    mc = teacher.config
    crops = run.replace(train_length=min(run.data.train_length, benchmark.QUICK_ERROR_IMAGES)) if args.quick else run
    return {"name": f"{mc['arch']}-{mc['backbone']} (width {mc['width']})", "path": os.path.abspath(path),
            "miou": teacher.miou, "per_class_iou": teacher.per_class_iou, "device": device,
            "iterations": None if args.teacher_ckpt else run.optim.teacher_iterations,
            "train_error": training_crop_error(model, crops, env), "train_error_crops": crops.data.train_length,
            "class_names": list(getattr(val_set, "class_names", []))}


def regime_note(args, device: str) -> str:
    """What the table's regime changes, with the measured noise rate for noisy labels; "" for the main table."""
    from .data.synthetic import noisy_pixel_fraction
    from .pipeline import build_split

    if args.regime == "main":
        return ""
    note = f"Regime {args.regime}: {REGIMES[args.regime]}"
    if args.regime == "noisy-labels":
        config = benchmark.run_config(Row("none", "none"), seed=0, out_dir=".", quick=args.quick, device=device,
                                      regime=args.regime)
        train_set = build_split(config.data, "train", True, config.runtime.seed)
        note += (f" ({len(train_set.noisy)} of {len(train_set)} maps: boundaries eroded or dilated by 1–3 px, each "
                 f"object class swapped with its look-alike with probability ½; "
                 f"{100 * noisy_pixel_fraction(train_set):.2f}% of the labelled training pixels changed; "
                 f"`--label-noise {config.data.label_noise:g}`)")
    return note + ". Every row keeps the weights chosen by the main tuning (the synthetic defaults)."


def write_report(args, out_dir: str, rows: list[Row], teacher: dict) -> str:
    from .compare_report import (curves_chart, gains_chart, read_results, table_markdown, tuning_choice,
                                 tuning_markdown)

    results = [r for r in read_results(os.path.join(out_dir, "results.jsonl")) if r["row"] in {x.name for x in rows}]
    bench = benchmark.run_config(Row("none", "none"), seed=0, out_dir=".", quick=args.quick, regime=args.regime,
                                 pretext_seed=args.pretext_seed)
    if args.tune:
        choice = tuning_choice(results, rows, args.seeds)
        with open(os.path.join(out_dir, "tuned.json"), "w") as f:
            json.dump(choice, f, indent=2)
        text = tuning_markdown(results, rows, choice, teacher, bench)
        name = "tuning.md"
    else:
        text = table_markdown(results, rows, teacher, bench)
        if results:
            gains_chart(results, rows, teacher, os.path.join(out_dir, "gains.png"))
            curves_chart(results, rows, teacher, os.path.join(out_dir, "curves.png"))
        name = "table.md"
    with open(os.path.join(out_dir, name), "w") as f:
        f.write(text)
    return text


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    from .engine import TrainingStopped

    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() \
        else None
    out_dir = args.out_dir or os.path.join(
        "runs", "tune" if args.tune else "compare" if args.regime == "main" else f"compare-{args.regime}")
    args.command = "python -m frkd.compare " + shlex.join(argv + ([] if args.out_dir else ["--out-dir", out_dir]))
    try:
        return compare(args, out_dir)
    except ConfigError as error:
        print(f"frkd.compare: error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, TrainingStopped):
        print(f"frkd.compare: stopped; finished runs are kept in {os.path.join(out_dir, 'results.jsonl')}, "
              "an interrupted one in its last.pt: rerun the same command to continue", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def compare(args, out_dir: str) -> int:
    """Teacher, then every missing (row, seed) run, then the report; 1 when some run failed."""
    from .compare_report import append_result, read_results
    from .distributed import resolve_device

    seeds = args.seeds = args.seeds or ([0] if args.quick else list(TUNING_SEEDS if args.tune else TABLE_SEEDS))
    if args.tune and set(seeds) & set(TABLE_SEEDS):
        raise ConfigError(f"--seeds: tuning must not use the table's seeds {list(TABLE_SEEDS)}, got {seeds}")
    if args.tune and args.regime != "main":
        raise ConfigError(f"--regime {args.regime}: tuning runs on the main benchmark only (the robustness tables "
                          "keep its weights); leave out --tune or --regime")
    if args.regime == "weak-teacher" and args.teacher_ckpt:
        raise ConfigError("--teacher-ckpt: the weak-teacher regime trains its own shortened teacher; expected no "
                          f"--teacher-ckpt, got {args.teacher_ckpt}")
    if args.jobs < 1:
        raise ConfigError(f"--jobs: expected an integer >= 1, got {args.jobs}")
    if args.pretext_seed < 0:
        raise ConfigError(f"--pretext-seed: expected an integer >= 0, got {args.pretext_seed}")
    if args.teacher_ckpt and not os.path.isfile(args.teacher_ckpt):
        raise ConfigError(f"--teacher-ckpt {args.teacher_ckpt}: expected a readable file, found no such file")
    check_device(args.device)
    rows = rows_of(args)
    os.makedirs(out_dir, exist_ok=True)
    teacher_ckpt = os.path.abspath(args.teacher_ckpt) if args.teacher_ckpt else None
    check_benchmark(out_dir, benchmark_record(args, teacher_ckpt))
    set_threads(args.threads)
    device = str(resolve_device(args.device))
    # every row's config must be valid before any work
    for row in rows:
        benchmark.run_config(row, seed=seeds[0], out_dir=os.path.join(out_dir, "runs", "check"), quick=args.quick,
                             device=device, threads=args.threads, regime=args.regime,
                             pretext_seed=args.pretext_seed)
    print(f"frkd.compare: {len(rows)} rows × seeds {seeds} on {device}, {args.jobs} at once; out {out_dir}\n"
          f"this table's command (rerun it to resume): {args.command}", flush=True)
    teacher = obtain_teacher(args, out_dir, device)
    teacher.update(command=args.command, regime=regime_note(args, device))
    print(f"teacher {teacher['name']}: mIoU {100 * teacher['miou']:.2f}, pixel error on the training crops "
          f"{100 * teacher['train_error']:.2f}% ({teacher['path']})", flush=True)
    results_path = os.path.join(out_dir, "results.jsonl")
    done = {(r["row"], r["seed"]) for r in read_results(results_path)}
    todo = [(row, seed) for seed in seeds for row in rows if (row.name, seed) not in done]
    lock, failed = threading.Lock(), []

    def one(row: Row, seed: int) -> None:
        run_dir = os.path.join(out_dir, "runs", f"{row.name}-s{seed}")
        config = benchmark.run_config(row, seed=seed, out_dir=run_dir, quick=args.quick, device=device,
                                      threads=args.threads, regime=args.regime,
                                      teacher_ckpt=None if row.method == "none" else teacher["path"],
                                      pretext_seed=args.pretext_seed)
        record = run_in_child({"config": config.to_dict(), "run_dir": run_dir, "threads": args.threads})
        with lock:
            if record is None:
                failed.append(f"{row.name} seed {seed} (see {os.path.join(run_dir, 'train.log')})")
                print(f"  {row.name} seed {seed}: FAILED, see {os.path.join(run_dir, 'train.log')}", flush=True)
                return
            append_result(results_path, {"row": row.name, "method": row.method, "options": row.options,
                                         "seed": seed, **record})
            print(f"  {row.name} seed {seed}: mIoU {100 * record['miou']:.2f}, {record['s_per_iter']:.3f} s/iter, "
                  f"{record['wall_s']:.0f} s", flush=True)
            write_report(args, out_dir, rows, teacher)

    pool = ThreadPoolExecutor(max_workers=args.jobs)
    try:
        for future in [pool.submit(one, row, seed) for row, seed in todo]:
            future.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        stop_children()
        raise
    pool.shutdown()
    print(write_report(args, out_dir, rows, teacher))
    written = "tuning.md, tuned.json" if args.tune else "table.md, gains.png, curves.png"
    print(f"wrote {written}, results.jsonl in {out_dir}", flush=True)
    if failed:
        print("failed runs (rerun the same command to retry them): " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
