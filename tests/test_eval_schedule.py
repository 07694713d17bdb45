"""Evaluating during training changes nothing of the training: two runs that differ only in the
evaluation schedule (--val-per-iters) end with the same teacher, the same student weights, loss
state, optimizer state and final mIoU (the convergence columns of frkd.compare rest on this)."""
import json
import os

import numpy as np
import torch

from frkd import pipeline
from frkd.config import build_config
from test_train import one_thread  # noqa: F401  (module fixture: one intra-op thread)

ITERATIONS = 4


def run_with_schedule(out_dir, val_per_iters):
    config = build_config(method="frkd", crop_size=(32, 32), batch_size=2, student_pretrained_base="none",
                          teacher_pretrained_base="none", train_length=16, val_length=4, width=4, teacher_width=4,
                          teacher_backbone="resnet18", student_model="pspnet", teacher_iterations=3,
                          max_iterations=ITERATIONS, val_per_iters=val_per_iters, log_per_iters=1,
                          save_per_iters=ITERATIONS, val_batch_size=4, workers=0, device="cpu", out_dir=str(out_dir),
                          grad_ratio=1.0)
    summary = pipeline.run(config)
    evaluations = [r for r in map(json.loads, open(os.path.join(out_dir, "metrics.jsonl")))
                   if r.get("phase") == "student" and "miou" in r]
    return summary, torch.load(os.path.join(out_dir, "last.pt"), weights_only=False), \
        torch.load(os.path.join(out_dir, "teacher.pt"), weights_only=False), evaluations


def assert_same_tensors(a, b, what):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            assert_same_tensors(a[key], b[key], f"{what}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), what
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), what
    else:
        assert a == b, what


def test_the_evaluation_schedule_leaves_the_training_bits_alone(tmp_path):
    summary_once, state_once, teacher_once, evals_once = run_with_schedule(tmp_path / "once", ITERATIONS)
    summary_often, state_often, teacher_often, evals_often = run_with_schedule(tmp_path / "often", 1)
    assert len(evals_once) == 1 and len(evals_often) == ITERATIONS
    assert_same_tensors(teacher_once["model"], teacher_often["model"], "teacher")
    for part in ("model", "loss", "optimizer", "term_scales", "rng"):
        assert_same_tensors(state_once[part], state_often[part], part)
    assert summary_once["student_miou"] == summary_often["student_miou"]
    assert summary_once["student_per_class_iou"] == summary_often["student_per_class_iou"]
    assert evals_once[-1] == evals_often[-1]  # the final evaluation, record for record
