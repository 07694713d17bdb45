"""Run outputs written by rank 0: ``metrics.jsonl`` (one JSON object per line) and ``summary.json``."""
from __future__ import annotations

import json
import math
import os


def json_safe(value):
    """NaN/inf -> None, tuples -> lists, recursively, so the output is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class MetricsLog:
    """Appends records to ``<out_dir>/metrics.jsonl``; a no-op when ``enabled`` is False (ranks > 0)."""

    def __init__(self, out_dir: str, enabled: bool = True):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")

    def truncate_after(self, phase: str, iteration: int) -> None:
        """Drops records of ``phase`` past ``iteration`` (logged after the checkpoint a resume starts from)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = [r for r in read_records(self.path) if r.get("phase") != phase or r.get("iteration", 0) <= iteration]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)


def read_records(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(json_safe(obj), f, indent=2)
    os.replace(tmp, path)
