"""Write benchmark results: JSON, and a markdown table into a marked section of a file."""
from __future__ import annotations

import json
import re
from pathlib import Path

from . import step_share
from .providers import PEERS


def write_json(path: str, result: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1) + "\n")


def _num(value, fmt: str, missing: str = "—") -> str:
    return missing if value is None else format(value, fmt)


def _dims(d: dict) -> str:
    if "student_width" in d:  # a training step (bench/step_share.py)
        return (f"B={d['B']} crop {d['H']}×{d['W']} K={d['K']}, DeepLabV3-ResNet18 student width "
                f"{d['student_width']}, DeepLabV3-{d['teacher_backbone']} teacher width {d['teacher_width']}")
    return f"B={d['B']} C_t={d['C_t']} C_s={d['C_s']} {d['H']}×{d['W']} K={d['K']}"


MODE_ORDER = ("forward", "backward", "forward+backward")


def _ms(r: dict | None) -> str:
    if r is None:
        return "—"
    return f"error: {r['error'][:80]}" if r["error"] else f"{r['median_ms']:.3f}"


def _main_mode(by_mode: dict) -> dict:
    """The row the bandwidth and memory columns describe: forward+backward, else forward."""
    return by_mode.get("forward+backward") or by_mode.get("forward") or next(iter(by_mode.values()))


def _ratios(by_mode: dict, peer: str) -> str:
    cells = [_num(by_mode[m]["speedup_vs"].get(peer), ".2f") if m in by_mode else "" for m in MODE_ORDER]
    cells = [c for c in cells if c]
    return "—" if all(c == "—" for c in cells) else " / ".join(cells)


def _table(rows: list[dict], peers: list[str]) -> list[str]:
    """One line per (shape, provider) of one workload; ratios are forward / backward / both."""
    grouped: dict[tuple, dict] = {}
    for r in rows:
        grouped.setdefault((r["shape"], r["provider"]), {})[r["mode"]] = r
    head = ["shape", "provider", "fwd ms", "bwd ms", "fwd+bwd ms [p20, p80]", "GB/s (% copy BW)", "peak MiB"]
    head += [f"× vs {p}" for p in peers] + ["max abs diff vs eager"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (shape, provider), by_mode in grouped.items():
        main = _main_mode(by_mode)
        both = by_mode.get("forward+backward")
        spread = "" if both is None or both["error"] else f" [{both['p20_ms']:.3f}, {both['p80_ms']:.3f}]"
        bandwidth = "—" if main["error"] else f"{main['gb_per_s']:.2f} ({main['pct_copy_bw']:.1f} %)"
        cells = [shape, f"`{provider}`", _ms(by_mode.get("forward")), _ms(by_mode.get("backward")),
                 _ms(both) + spread, bandwidth, _num(main["peak_mem_mib"], ".1f", "n/a")]
        cells += [_ratios(by_mode, p) for p in peers]
        cells.append(_num(main["max_abs_diff_vs_eager"], ".1e"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict) -> str:
    """The section body: run metadata, then one table per workload (rows: shape × provider)."""
    m = result["meta"]
    rows = result["results"]
    off = [f"`{p}` ({why})" for p, why in m["providers"].items() if why]
    lines = [
        f"- Command: `{m['command']}`",
        f"- Device: {m['device_name']} ({m['device']}, {m['threads']} torch threads); "
        f"torch {m['torch']}, triton {m['triton']}; commit {m['commit']}; {m['utc']}",
        f"- Timer: {m['timer']}; dtype {m['dtype']}, labels {m['label_dtype']}",
        f"- Measured copy bandwidth: {m['copy_bandwidth_gb_per_s']:.1f} GB/s ({m['copy_bytes'] / 2**20:.0f} MiB tensor)",
        f"- Load average (1 min; sampled after each workload) at start / max / end: "
        f"{m['load_start']:.2f} / {m['load_max']:.2f} / {m['load_end']:.2f}",
        "- Shapes: " + "; ".join(f"`{n}` {_dims(d)}" for n, d in m["shapes"].items()),
    ]
    if rows:
        lines.append("- GB/s, % copy BW and peak MiB are for forward+backward (forward for `teacher_entropy`); "
                     "× vs peer = peer time / this time, for forward / backward / forward+backward.")
    if off:
        lines.append(f"- Providers not run: {'; '.join(off)}")
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    for name in workloads:
        mine = [r for r in rows if r["workload"] == name]
        peers = [p for p in PEERS if any(p in r["speedup_vs"] for r in mine)]
        lines += ["", f"**{name}**: {m['workloads'][name]}", ""] + _table(mine, peers)
    if result.get("step_share"):
        lines += ["", f"**{step_share.NAME}**: {m['workloads'][step_share.NAME]}; median [p20, p80] ms; "
                      "share = (step + FRKD − step) / step, and FRKD loss alone / step", ""]
        lines += step_share.markdown(result["step_share"])
    return "\n".join(lines) + "\n"


def write_markdown(path: str, key: str, body: str) -> None:
    """Replace the text between ``<!-- bench:KEY:begin -->`` and ``<!-- bench:KEY:end -->`` in
    ``path`` (appended at the end when the markers are absent); the rest of the file is kept."""
    begin, end = f"<!-- bench:{key}:begin -->", f"<!-- bench:{key}:end -->"
    block = f"{begin}\n{body}{end}"
    file = Path(path)
    text = file.read_text() if file.exists() else "# Performance\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
