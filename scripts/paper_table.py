"""Table of a paper-scale run (scripts/paper_protocol.sh) beside the literature's numbers.

Usage: python scripts/paper_table.py OUT_DIR cityscapes|voc
Reads OUT_DIR/<row>-s<seed>/summary.json (frkd.train) and prints, per row, the final val mIoU
(mean ± std over seeds), the gain over ``none`` and the reference mIoU where one exists.
"""
import glob
import json
import os
import re
import statistics
import sys

# DeepLabV3-ResNet101 teacher -> DeepLabV3-ResNet18 student, val mIoU % (docs/method.md, "Paper-scale
# protocol"; /work/shared/reference/frkd_method.md §7). CIRKD README (v1); FRKDNet: abstract only,
# gain over its own baseline (its baseline and teacher are not stated).
REFERENCE = {
    "cityscapes": {"teacher": 78.07, "none": 74.21, "cwd": 75.55, "ifvd": 75.59, "cirkd": 76.38,
                   "frkd": "+4.48 (FRKDNet abstract)"},
    "voc": {"teacher": 77.67, "none": 73.21, "cirkd": 74.50, "frkd": "+2.04 (FRKDNet abstract)"},
}


def read_rows(out_dir: str) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "*-s*", "summary.json"))):
        name = re.sub(r"-s\d+$", "", os.path.basename(os.path.dirname(path)))
        with open(path) as f:
            rows.setdefault(name, []).append(100 * json.load(f)["student_miou"])
    return rows


def main(out_dir: str, dataset: str) -> None:
    reference = REFERENCE[dataset]
    rows = read_rows(out_dir)
    if not rows:
        raise SystemExit(f"paper_table: no {out_dir}/<row>-s<seed>/summary.json yet")
    base = statistics.fmean(rows["none"]) if "none" in rows else None
    print(f"| row | val mIoU % (mean ± std) | seeds | gain over none | reference ({dataset}) |")
    print("| --- | --- | --- | --- | --- |")
    teacher_path = os.path.join(out_dir, "teacher", "summary.json")
    teacher = "a given --teacher-ckpt"
    if os.path.exists(teacher_path):
        with open(teacher_path) as f:
            teacher = f"{100 * json.load(f)['student_miou']:.2f}"
    print(f"| teacher | {teacher} | | | {reference['teacher']} |")
    for name, values in sorted(rows.items(), key=lambda item: item[0] != "none"):
        mean = statistics.fmean(values)
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        gain = "—" if base is None or name == "none" else f"{mean - base:+.2f}"
        print(f"| {name} | {mean:.2f}{spread} | {len(values)} | {gain} | {reference.get(name, '—')} |")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in REFERENCE:
        raise SystemExit("usage: python scripts/paper_table.py OUT_DIR cityscapes|voc")
    main(sys.argv[1], sys.argv[2])
