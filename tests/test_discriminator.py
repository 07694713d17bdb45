"""The engine side of an adversarial distillation term: a loss with a discriminator gets its own Adam
(never the student's SGD), one step after each student step, saved and resumed bit-exactly."""
import os

import pytest
import torch
from torch import nn

from frkd import pipeline
from frkd.config import build_config
from test_train import TINY, run_train


# the adversarial term alone: a student term −λ_adv·D(Z_S) and the discriminator's own loss λ_d·(...)
ADVERSARIAL = {"lambda_kd": 0.0, "lambda_adv": 0.1, "lambda_d": 1.0}
ADVERSARIAL_FLAGS = ["--method", "kd", "--lambda-kd", "0", "--lambda-adv", "0.1", "--lambda-d", "1"]


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("teacher"))
    code, _, stderr = run_train(TINY + ["--method", "kd", "--teacher-iterations", "1", "--max-iterations", "1",
                                        "--out-dir", out])
    assert code == 0, stderr
    return os.path.join(out, "teacher.pt")


def tiny_config(out_dir, teacher_file, **fields):
    return build_config(method="kd", options=dict(ADVERSARIAL), crop_size=(32, 32), batch_size=2, student_pretrained_base="none",
        teacher_pretrained_base="none", train_length=64, width=4, teacher_width=4,
                        teacher_backbone="resnet18", student_model="pspnet", max_iterations=4, val_per_iters=2,
                        log_per_iters=1, save_per_iters=2, val_batch_size=50, workers=0, device="cpu",
                        teacher_ckpt=teacher_file, out_dir=str(out_dir), **fields)


def test_the_discriminator_has_its_own_adam_and_one_step_per_student_step(tmp_path, teacher_file):
    config = pipeline.prepare(tiny_config(tmp_path, teacher_file))
    from frkd.distributed import init_distributed
    from frkd.run_log import MetricsLog

    env = init_distributed("cpu")
    train_set, val_set = pipeline.build_datasets(config)
    teacher = pipeline.load_given_teacher(config).model
    trainer = pipeline.student_trainer(config, env, train_set, val_set, teacher, MetricsLog(str(tmp_path), False))
    critic = trainer.distill.discriminator_parameters()
    sgd_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not sgd_params & {id(p) for p in critic}
    assert {id(p) for p in trainer.model.parameters() if p.requires_grad} <= sgd_params
    adam = trainer.d_optimizer
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["lr"] == 4e-4
    assert adam.defaults["betas"] == (0.9, 0.99)
    assert [id(p) for p in adam.param_groups[0]["params"]] == [id(p) for p in critic]

    before = [p.detach().clone() for p in critic]
    images, labels = next(iter(trainer._train_loader()))
    values = trainer._train_step(images, labels)
    assert "discriminator" in values and "adv" in values
    # Adam's first step moves every weight with a non-negligible gradient by lr (bias-corrected m/√v = ±1);
    # had the student's SGD (lr 0.02, momentum, weight decay) also stepped them, the moves would differ.
    steps = torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(critic, before)])
    moved = steps[steps > 0]
    assert moved.numel() > 0.5 * steps.numel() and moved.max() <= 4e-4 * (1 + 1e-3)
    assert (torch.isclose(moved, torch.full_like(moved, 4e-4), rtol=1e-2)).float().mean() > 0.9


def test_discriminator_state_is_checkpointed_and_resumed_bit_exactly(tmp_path, teacher_file):
    common = ADVERSARIAL_FLAGS + ["--teacher-ckpt", teacher_file, "--lr-d", "0.001"] + TINY
    whole, pieces = str(tmp_path / "whole"), str(tmp_path / "pieces")
    assert run_train(common + ["--out-dir", whole])[0] == 0
    code, stdout, _ = run_train(common + ["--out-dir", pieces, "--stop-at-iteration", "3"])
    assert code == 0 and "stopped after iteration 3" in stdout
    assert run_train(common + ["--out-dir", pieces, "--resume", "auto"])[0] == 0
    a = torch.load(os.path.join(whole, "last.pt"), weights_only=False)
    b = torch.load(os.path.join(pieces, "last.pt"), weights_only=False)
    resolved = a["config"]["loss"]["resolved"]
    assert a["config"]["optim"]["lr_d"] == 0.001 and (resolved["lambda_adv"], resolved["lambda_d"]) == (0.1, 1.0)
    assert a["loss"] and all(k.startswith("components.adversarial.") for k in a["loss"])
    for key in a["loss"]:
        assert torch.equal(a["loss"][key], b["loss"][key]), key
    for sa, sb in zip(a["d_optimizer"]["state"].values(), b["d_optimizer"]["state"].values()):
        assert sa["step"] == sb["step"] == 4
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
