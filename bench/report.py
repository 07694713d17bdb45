"""Write benchmark results: JSON, and a markdown table into a marked section of a file."""
from __future__ import annotations

import json
import re
from pathlib import Path

from .providers import PEERS


def write_json(path: str, result: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1) + "\n")


def _num(value, fmt: str, missing: str = "—") -> str:
    return missing if value is None else format(value, fmt)


def _dims(d: dict) -> str:
    return f"B={d['B']} C_t={d['C_t']} C_s={d['C_s']} {d['H']}×{d['W']} K={d['K']}"


def _row(r: dict, peers: list[str]) -> str:
    if r["error"]:
        timing = f"error: {r['error'][:120]}"
    else:
        timing = f"{r['median_ms']:.3f} [{r['p20_ms']:.3f}, {r['p80_ms']:.3f}]"
    cells = [r["workload"], r["shape"], r["mode"], r["provider"], timing,
             _num(r["peak_mem_mib"], ".1f", "n/a"), _num(r["gb_per_s"], ".2f"), _num(r["pct_copy_bw"], ".1f")]
    cells += [_num(r["speedup_vs"].get(p), ".2f") for p in peers]
    cells.append(_num(r["max_abs_diff_vs_eager"], ".1e"))
    return "| " + " | ".join(cells) + " |"


def markdown(result: dict) -> str:
    """The section body: run metadata, then one table row per (workload, shape, mode, provider)."""
    m = result["meta"]
    rows = result["results"]
    peers = [p for p in PEERS if any(p in r["speedup_vs"] for r in rows)]
    off = [f"`{p}` ({why})" for p, why in m["providers"].items() if why]
    lines = [
        f"- Command: `{m['command']}`",
        f"- Device: {m['device_name']} ({m['device']}, {m['threads']} torch threads); "
        f"torch {m['torch']}, triton {m['triton']}; commit {m['commit']}; {m['utc']}",
        f"- Timer: {m['timer']}; dtype {m['dtype']}, labels {m['label_dtype']}",
        f"- Measured copy bandwidth: {m['copy_bandwidth_gb_per_s']:.1f} GB/s ({m['copy_bytes'] / 2**20:.0f} MiB tensor)",
        f"- Load average (1 min) before / after: {m['load_before']:.2f} / {m['load_after']:.2f}",
    ]
    if off:
        lines.append(f"- Providers not run: {'; '.join(off)}")
    for name, why in m["skipped_workloads"].items():
        lines.append(f"- Workload `{name}` skipped: {why}")
    head = ["workload", "shape", "mode", "provider", "median ms [p20, p80]", "peak MiB", "GB/s", "% copy BW"]
    head += [f"× vs {p}" for p in peers] + ["max abs diff vs eager"]
    lines += ["", "Shapes: " + "; ".join(f"`{n}` {_dims(d)}" for n, d in m["shapes"].items()), "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [_row(r, peers) for r in rows]
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
