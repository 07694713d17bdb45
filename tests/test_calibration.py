"""The engine's gradient calibration (--distill-grad-ratio) and warm-up (--distill-warmup) of the
distillation terms: the calibrated gradients, the schedule, and an exact resume."""
import json
import os

import pytest
import torch

from frkd import pipeline
from frkd.config import build_config
from frkd.distributed import init_distributed
from frkd.run_log import MetricsLog
from test_discriminator import teacher_file  # noqa: F401  (module fixture: a tiny trained teacher)
from test_train import TINY, run_train


def tiny_trainer(out_dir, teacher, method="frkd", **fields):
    config = pipeline.prepare(build_config(
        method=method, crop_size=(32, 32), batch_size=2, student_pretrained_base="none",
        teacher_pretrained_base="none", train_length=64, width=4, teacher_width=4, teacher_backbone="resnet18",
        student_model="pspnet", max_iterations=4, val_per_iters=4, log_per_iters=1, save_per_iters=4,
        val_batch_size=50, workers=0, device="cpu", teacher_ckpt=teacher, out_dir=str(out_dir), **fields))
    env = init_distributed("cpu")
    train_set, val_set = pipeline.build_datasets(config)
    teacher_model = pipeline.load_given_teacher(config).model
    return pipeline.student_trainer(config, env, train_set, val_set, teacher_model, MetricsLog(str(out_dir), False))


def feature_grad_norm(term, feat):
    if not term.requires_grad:
        return 0.0
    grad, = torch.autograd.grad(term, feat, retain_graph=True, allow_unused=True)
    return 0.0 if grad is None else grad.norm().item()


@pytest.mark.parametrize("ratio", [0.3, 2.0])
def test_each_calibrated_term_starts_at_its_share_of_the_task_gradient(tmp_path, teacher_file, ratio):  # noqa: F811
    trainer = tiny_trainer(tmp_path, teacher_file, grad_ratio=ratio, options={"lambda_feat": 3.0})
    images, labels = next(iter(trainer._train_loader()))
    task, distilled, out = trainer.step(images, labels)
    distill = distilled.terms
    scales = trainer._calibrate(task, distill, out.feat)
    assert set(scales) == set(distill) == {"feat", "intra", "inter", "kd"}
    task_norm = feature_grad_norm(sum(task.values()), out.feat)
    for name, term in distill.items():
        # s_t · ‖∂L_t/∂F_S‖ = ratio / n · ‖∂L_task/∂F_S‖ for each of the n terms
        assert scales[name] * feature_grad_norm(term, out.feat) == pytest.approx(ratio / 4 * task_norm, rel=1e-4)


def test_a_term_without_gradient_keeps_scale_one_and_the_others_share_the_ratio(tmp_path, teacher_file):  # noqa: F811
    trainer = tiny_trainer(tmp_path, teacher_file, grad_ratio=1.0)
    images, labels = next(iter(trainer._train_loader()))
    task, distilled, out = trainer.step(images, labels)
    distill = distilled.terms
    distill["intra"] = distill["intra"].detach()  # a term that sends no gradient to the student feature
    scales = trainer._calibrate(task, distill, out.feat)
    task_norm = feature_grad_norm(sum(task.values()), out.feat)
    live = [n for n in distill if feature_grad_norm(distill[n], out.feat) > 0]
    assert len(live) == 3 and "intra" not in live and scales["intra"] == 1.0
    for name in live:
        assert scales[name] * feature_grad_norm(distill[name], out.feat) == pytest.approx(
            task_norm / len(live), rel=1e-4)


def test_warmup_ramps_the_distillation_terms_and_calibration_runs_once(tmp_path, teacher_file):  # noqa: F811
    trainer = tiny_trainer(tmp_path, teacher_file, grad_ratio=1.0, warmup_iters=4)
    one = {"kd": torch.tensor(1.0)}
    assert trainer._scaled(one)["kd"].item() == pytest.approx(0.25)  # iteration 0: 1/4, before calibration
    images, labels = next(iter(trainer._train_loader()))
    trainer._train_step(images, labels)
    scales = dict(trainer.term_scales)
    trainer.iteration = 2
    assert trainer._scaled(one)["kd"].item() == pytest.approx(0.75 * scales["kd"])
    trainer._train_step(images, labels)
    assert trainer.term_scales == scales  # measured on the first batch only
    trainer.iteration = 10
    assert trainer._scaled(one)["kd"].item() == pytest.approx(scales["kd"])


def test_off_by_default_outside_the_calibrated_recipes(tmp_path, teacher_file):  # noqa: F811
    from frkd.losses.recipes import GRAD_RATIO_DEFAULTS

    trainer = tiny_trainer(tmp_path, teacher_file, method="kd")
    assert trainer.config.loss.grad_ratio == GRAD_RATIO_DEFAULTS.get("synthetic", {}).get("kd", 0.0) == 0.0
    images, labels = next(iter(trainer._train_loader()))
    trainer._train_step(images, labels)
    assert trainer.term_scales is None


def test_calibrated_run_resumes_bit_exactly_and_records_its_scales(tmp_path, teacher_file):  # noqa: F811
    common = TINY + ["--method", "frkd", "--teacher-ckpt", teacher_file, "--distill-grad-ratio", "0.5",
                     "--distill-warmup", "2"]
    whole, pieces = str(tmp_path / "whole"), str(tmp_path / "pieces")
    assert run_train(common + ["--out-dir", whole])[0] == 0
    assert run_train(common + ["--out-dir", pieces, "--stop-at-iteration", "2"])[0] == 0
    assert run_train(common + ["--out-dir", pieces, "--resume", "auto"])[0] == 0
    a = torch.load(os.path.join(whole, "last.pt"), weights_only=False)
    b = torch.load(os.path.join(pieces, "last.pt"), weights_only=False)
    assert a["term_scales"] == b["term_scales"] and set(a["term_scales"]) == {"feat", "intra", "inter", "kd"}
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    summary = json.load(open(os.path.join(whole, "summary.json")))
    assert summary["term_scales"] == a["term_scales"] and summary["config"]["loss"]["grad_ratio"] == 0.5
    with open(os.path.join(pieces, "metrics.jsonl")) as f:
        calibrations = [json.loads(line) for line in f if '"calibration"' in line]
    assert len(calibrations) == 1 and calibrations[0]["calibration"]["term_scales"] == a["term_scales"]
