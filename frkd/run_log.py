"""Run outputs written by rank 0: ``metrics.jsonl`` (one JSON object per line) and ``summary.json``.

Every record is appended with one ``write`` of a whole line (O_APPEND); the file is rewritten only to
drop the records past a resumed checkpoint, through a temp file and ``os.replace``, so a crash never
leaves half a file.
"""
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
        line = (json.dumps(json_safe(record)) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def truncate_after(self, phase: str, iteration: int) -> None:
        """Drops records of ``phase`` past ``iteration`` (logged after the checkpoint a resume starts from);
        leaves the file untouched when there are none."""
        if not self.enabled or not os.path.exists(self.path):
            return
        records = read_records(self.path)
        kept = [r for r in records if r.get("phase") != phase or r.get("iteration", 0) <= iteration]
        if len(kept) == len(records):
            return
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def read_records(path: str) -> list[dict]:
    """The records of a metrics file; a torn last line (a crash mid-write) is skipped."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def write_atomic(path: str, text: str) -> None:
    """Writes ``text`` to a temp file next to ``path``, then os.replace()s it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, obj: dict) -> None:
    write_atomic(path, json.dumps(json_safe(obj), indent=2))
