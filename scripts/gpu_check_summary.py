"""Write OUTDIR/summary.md for scripts/gpu_check.sh: one table line per step (PASS/FAIL/SKIP,
seconds, limit, the step's key result), then the markdown tables the steps wrote.

    python scripts/gpu_check_summary.py OUTDIR --gpu 1 --budget 420 --started EPOCH_SECONDS

Reads OUTDIR/steps.tsv (name, status, seconds, limit, note per line) and only the files this run
wrote (modified at or after --started): OUTDIR may hold an earlier run's files.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

# step -> the JSON files its benchmark may have written (GPU run, dry run)
RESULT_FILES = {"bench-cs": ("bench-cs-b8-c256.json", "bench-tiny.json"), "bench-voc": ("bench-voc-b8-c256.json",),
                "step-share": ("step-share.json",)}
# step -> (log, pattern of the lines that give its result; the last match is shown)
LOG_LINES = {
    "tests": ("tests.log", r"\d+ (passed|failed)|error"),
    "memcheck": ("memcheck.log", r"ERROR SUMMARY|gpu_sanitize_ops:"),
    "racecheck": ("racecheck.log", r"RACECHECK SUMMARY|ERROR SUMMARY|gpu_sanitize_ops:"),
    "ops": ("ops.log", r"gpu_sanitize_ops:"),
    "backends": ("backends.log", r"not live"),
    "main-job": ("main-job.log", r"student mIoU|Error"),
}


class Run:
    def __init__(self, out: Path, started: float):
        self.out, self.started = out, started

    def fresh(self, name: str) -> bool:
        """Whether OUTDIR/name was written by this run."""
        path = self.out / name
        return path.exists() and path.stat().st_mtime >= self.started

    def last_line(self, name: str, pattern: str) -> str:
        """The last line of OUTDIR/name matching ``pattern``, or ''."""
        if not self.fresh(name):
            return ""
        lines = [line for line in (self.out / name).read_text(errors="replace").splitlines()
                 if re.search(pattern, line)]
        return lines[-1].strip() if lines else ""


def bench_result(run: Run, files: tuple[str, ...]) -> str:
    """Rows and failures of a bench JSON, with the FRKD shares of a step-share run."""
    found = []
    for name in files:
        if not run.fresh(name):
            continue
        result = json.loads((run.out / name).read_text())
        rows = result["results"] + result["step_share"]
        failed = sum(r["error"] is not None for r in rows)
        shares = [f"`{r['provider']}` {100 * r['share_step']:.1f} % (loss alone {100 * r['share_loss']:.1f} %)"
                  for r in result["step_share"] if r.get("share_step") is not None and r.get("share_loss") is not None]
        found.append(f"{name}: {len(rows)} rows, {failed} failed"
                     + (f"; FRKD share of a student step: {', '.join(shares)}" if shares else ""))
    return "; ".join(found)


def step_results(run: Run) -> dict[str, str]:
    """{step: its key result} from what this run wrote."""
    found = {step: run.last_line(log, pattern) for step, (log, pattern) in LOG_LINES.items()}
    if not found["backends"] and run.fresh("backends.json"):
        found["backends"] = "see backends.json"
    found["torchrun"] = "; ".join(x for x in (run.last_line("torchrun.log", r"ddp probe:"),
                                              run.last_line("torchrun.log", r"resumed from|Error")) if x)
    for step, files in RESULT_FILES.items():
        found[step] = bench_result(run, files)
    if run.fresh("main-job/summary.json"):
        s = json.loads((run.out / "main-job" / "summary.json").read_text())

        def miou(v):
            return "—" if v is None else f"{100 * v:.2f}"

        found["main-job"] = (f"wall {s['wall_time_s']:.0f} s; teacher mIoU {miou(s.get('teacher_miou'))}, "
                             f"student mIoU {miou(s.get('student_miou'))}")
    return found


def summary(out: Path, *, gpu: bool, budget: int, started: float) -> str:
    run = Run(out, started)
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
    found = step_results(run)
    total = round(time.time() - started)
    lines = [f"# gpu_check summary ({'GPU run' if gpu else 'dry run, no GPU'})", "",
             f"Total {total} s of a {budget} s budget. Logs: `<step>.log`; environment: `env.md`.", "",
             "| step | status | seconds | limit s | note / result |", "|---|---|---|---|---|"]
    for name, status, seconds, limit, note in steps:
        detail = "; ".join(x for x in (note, found.get(name, "")) if x).replace("|", "\\|")
        lines.append(f"| {name} | {status} | {seconds} | {limit} | {detail} |")
    for md in sorted(out.glob("*.md")):
        if md.name not in ("summary.md", "env.md") and run.fresh(md.name):
            body = [line for line in md.read_text().splitlines()
                    if not line.startswith(("# ", "<!-- bench:"))]  # the file's title and section markers
            lines += ["", f"## {md.stem}", ""] + body
    counts = {s: sum(step[1] == s for step in steps) for s in ("PASS", "FAIL", "SKIP")}
    lines += ["", f"gpu_check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--gpu", choices=("0", "1"), required=True)
    p.add_argument("--budget", type=int, required=True)
    p.add_argument("--started", type=float, required=True, help="the run's start, seconds since the epoch")
    args = p.parse_args(argv)
    text = summary(args.outdir, gpu=args.gpu == "1", budget=args.budget, started=args.started)
    (args.outdir / "summary.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
