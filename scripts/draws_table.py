"""The method table over backbone draws (docs/method.md "Backbone draws"): per draw, and pooled.

Reads the out dirs of ``python -m frkd.compare --pretext-seed D --out-dir DIR`` (one per draw) and prints
markdown: per draw the teacher, `none` and each row's paired gain over `none` (95% t-interval over the
seeds); pooled over draws, the gain paired within draw and seed with the draw as a block
(``frkd.stats.blocked_paired_difference``), and on how many draws each gain's interval lies above 0.

    python scripts/draws_table.py runs/draw-0 runs/draw-1 runs/draw-2
"""
import argparse
import json
import os
import statistics

import torch

from frkd.compare_report import by_row, class_range, miou_by_seed, read_results
from frkd.stats import blocked_paired_difference, paired_difference


def load_draw(out_dir: str) -> dict:
    """{"draw", "teacher", "rows": {row: {seed: mIoU %}} (miou_by_seed), "spread": {row: largest class IoU range}}."""
    with open(os.path.join(out_dir, "config.json")) as f:
        draw = json.load(f).get("pretext_seed", 0)
    teacher = torch.load(os.path.join(out_dir, "teacher.pt"), map_location="cpu", weights_only=False)["miou"]
    runs = by_row(read_results(os.path.join(out_dir, "results.jsonl")))
    return {"draw": draw, "teacher": 100 * teacher,
            "rows": {row: miou_by_seed(r) for row, r in runs.items()},
            "spread": {row: class_range(r) for row, r in runs.items()}}


def markdown(draws: list[dict]) -> str:
    rows = [r for r in draws[0]["rows"] if r != "none"]
    lines = ["| draw | teacher | `none` | teacher − `none` | " + " | ".join(f"`{r}` − `none`" for r in rows) + " |",
             "| --- " * (4 + len(rows)) + "|"]
    for d in draws:
        none = d["rows"]["none"]
        level = statistics.fmean(none.values())
        cells = [paired_difference(d["rows"][r], none).format() if r in d["rows"] else "n/a" for r in rows]
        std = f" ± {statistics.stdev(none.values()):.2f}" if len(none) > 1 else ""
        lines.append(f"| {d['draw']} | {d['teacher']:.2f} | {level:.2f}{std} | {d['teacher'] - level:.2f} | "
                     + " | ".join(cells) + " |")
    pooled, above = [], []
    for r in rows:
        a = {(d["draw"], s): v for d in draws for s, v in d["rows"].get(r, {}).items()}
        b = {(d["draw"], s): v for d in draws for s, v in d["rows"]["none"].items()}
        pooled.append(blocked_paired_difference(a, b).format())
        above.append(sum(paired_difference(d["rows"][r], d["rows"]["none"]).low is not None
                         and paired_difference(d["rows"][r], d["rows"]["none"]).low > 0
                         for d in draws if r in d["rows"]))
    lines.append("| pooled (draw as block) | | | | " + " | ".join(pooled) + " |")
    lines.append(f"| draws with the interval above 0 (of {len(draws)}) | | | | " + " | ".join(map(str, above)) + " |")
    spread = max((v for d in draws for v in d["spread"].values() if v is not None), default=None)
    lines.append("")
    lines.append(f"Largest per-class IoU spread over seeds in any row and draw: {spread:.1f}." if spread is not None
                 else "")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dirs", nargs="+", help="frkd.compare out dirs, one per draw")
    args = p.parse_args(argv)
    print(markdown([load_draw(d) for d in args.out_dirs]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
