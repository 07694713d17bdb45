"""Summarise experiments/results.jsonl: per (tag, method) the runs' mIoU, per-class IoU, mean ± std, CPU seconds."""
import json
import statistics
import sys
from collections import defaultdict

rows = defaultdict(list)
for line in open(sys.argv[1] if len(sys.argv) > 1 else "experiments/results.jsonl"):
    r = json.loads(line)
    rows[(r["tag"], r["phase"], r["method"])].append(r)
for (tag, phase, method), runs in rows.items():
    print(f"## {tag} {phase} {method}")
    for r in sorted(runs, key=lambda r: r["seed"]):
        pc = " / ".join(f"{100 * x:.1f}" for x in r["per_class_iou"])
        extra = f" cpu {r['cpu_s']:.1f}s wall {r['wall_total_s']:.0f}s" + (f" s/it {r['s_per_iter']:.2f}" if r.get("s_per_iter") else "")
        print(f"seed {r['seed']:>3}: {100 * r['miou']:.2f}  [{pc}]{extra}")
    for label, seeds in (("table 0-4", range(5)), ("tuning 100+", range(100, 200))):
        vals = [100 * r["miou"] for r in runs if r["seed"] in seeds]
        if len(vals) > 1:
            print(f"{label}: mean {statistics.mean(vals):.2f} std {statistics.stdev(vals):.2f} (n={len(vals)})")
