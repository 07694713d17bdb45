"""The model flags of frkd.train: CIRKD's student families by CIRKD's names, a family teacher, and a
package.module:callable model each train 2 iterations; their misuse fails in one line."""
import json
import os
import textwrap

import pytest

from test_train import run_train
from test_user_errors import one_line_error

# tiny crops and models; the synthetic defaults freeze ResNet stages and load ResNet pretext backbones
BASE = ["--crop-size", "32", "32", "--batch-size", "2", "--width", "4", "--teacher-width", "4",
        "--student-pretrained-base", "none", "--teacher-pretrained-base", "none", "--student-frozen-stages", "-1",
        "--teacher-backbone", "resnet18", "--teacher-iterations", "1", "--max-iterations", "2",
        "--val-per-iters", "2", "--log-per-iters", "1", "--save-per-iters", "2", "--val-batch-size", "50",
        "--workers", "0"]
FAMILIES = [("deeplabv3_mobilenet_ssseg", "mobilenetv3_small"), ("deeplabv3_mobilenet_ssseg", "mobilenetv3_large"),
            ("psp_mobile", "mobilenetv3_small"), ("psp_mobile", "mobilenetv3_large"),
            ("deeplab_mobile", "mobilevit_xx_small"), ("psp_mobile", "mobilevit_xx_small"),
            ("upernet_lite", "resnet18"), ("segformer", "MiT_B0"), ("psp", "resnet18")]
NEEDS_TRANSFORMERS = {"mobilevit_xx_small", "MiT_B0"}

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn


    class Tiny(nn.Module):
        """A model frkd never saw: stride 4, a feature 'neck.act', logits 'cls'; returns a dict."""

        def __init__(self, num_classes):
            super().__init__()
            self.neck = nn.Sequential()
            self.neck.add_module("conv", nn.Conv2d(3, 12, 4, 4))
            self.neck.add_module("act", nn.ReLU())
            self.cls = nn.Conv2d(12, num_classes, 1)

        def forward(self, x):
            return {"out": self.cls(self.neck(x))}


    def build(num_classes):
        return Tiny(num_classes)
''')


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("teacher"))
    code, _, stderr = run_train(BASE + ["--method", "kd", "--max-iterations", "1", "--out-dir", out])
    assert code == 0, stderr
    return os.path.join(out, "teacher.pt")


def summary(out_dir):
    with open(os.path.join(out_dir, "summary.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("arch, backbone", FAMILIES)
def test_each_family_trains_two_iterations_by_cirkds_names(tmp_path, teacher_file, arch, backbone):
    if backbone in NEEDS_TRANSFORMERS:
        pytest.importorskip("transformers")
    code, stdout, stderr = run_train(BASE + ["--student-model", arch, "--student-backbone", backbone, "--method",
                                             "frkd", "--teacher-ckpt", teacher_file, "--out-dir", str(tmp_path)])
    assert code == 0, stderr
    s = summary(tmp_path)
    assert s["iterations"] == 2 and s["student"]["arch"] == arch and s["student"]["backbone"] == backbone
    assert 0 <= s["student_miou"] <= 1


def test_a_family_teacher_is_trained_and_distilled(tmp_path):
    pytest.importorskip("transformers")
    code, _, stderr = run_train(BASE + ["--teacher-model", "segformer", "--teacher-backbone", "MiT_B0",
                                        "--student-model", "psp_mobile", "--student-backbone", "mobilenetv3_small",
                                        "--method", "cwd", "--d-width", "8", "--out-dir", str(tmp_path)])
    assert code == 0, stderr
    assert summary(tmp_path)["teacher"]["arch"] == "segformer"


def test_a_module_callable_student_and_teacher(tmp_path, monkeypatch, teacher_file):
    (tmp_path / "user_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    factory = ["--student-model", "user_models:build", "--student-feature", "neck.act", "--student-logits", "cls",
               "--head-lr-mult", "1"]
    code, _, stderr = run_train(BASE + factory + ["--method", "fitnet", "--teacher-ckpt", teacher_file,
                                                  "--out-dir", str(tmp_path / "student")])
    assert code == 0, stderr
    assert summary(tmp_path / "student")["student"]["feature"] == "neck.act"
    teacher = ["--teacher-model", "user_models:build", "--teacher-feature", "neck", "--teacher-logits", "cls"]
    code, _, stderr = run_train(BASE + factory + teacher + ["--method", "frkd", "--out-dir", str(tmp_path / "both")])
    assert code == 0, stderr


@pytest.mark.parametrize("flags, message", [
    (["--student-model", "unet"], "--student-model: expected one of deeplabv3, pspnet, psp, "),
    (["--student-model", "psp_mobile", "--student-backbone", "resnet18"],
     "--student-backbone: expected one of mobilenetv3_small, mobilenetv3_large, mobilevit_xx_small for "
     "--student-model psp_mobile, got 'resnet18'"),
    (["--student-model", "user_models:build"], "--student-model user_models:build: a package.module:callable model "
                                               "needs --student-feature and --student-logits"),
    (["--student-feature", "head.refine"], "--student-feature: apply to a package.module:callable --student-model only"),
    (["--student-model", "psp_mobile", "--student-backbone", "mobilenetv3_small", "--student-pretrained-base",
      "synthetic-pretext"], "--student-pretrained-base synthetic-pretext: the pretext backbones are ResNets"),
    (["--student-model", "psp_mobile", "--student-backbone", "mobilenetv3_small", "--student-frozen-stages", "3"],
     "--student-frozen-stages 3: only ResNet backbones have stages to freeze; expected -1"),
    (["--student-model", "no_such_module_here:build", "--student-feature", "a", "--student-logits", "b"],
     "--student-model no_such_module_here:build: expected an importable package.module:callable"),
])
def test_model_flag_errors_are_one_line(tmp_path, flags, message):
    line = one_line_error(BASE + ["--method", "none", "--out-dir", str(tmp_path)] + flags)
    assert message in line
    assert os.listdir(tmp_path) == []


def test_factory_path_errors_name_the_nearest_module(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    line = one_line_error(BASE + ["--method", "none", "--out-dir", str(out), "--head-lr-mult", "1",
                                  "--student-model", "user_models:build", "--student-feature", "nek.act",
                                  "--student-logits", "cls"])
    assert "no module 'nek.act' in Tiny (nearest: neck.act" in line
    line = one_line_error(BASE + ["--method", "none", "--out-dir", str(out), "--student-model", "user_models:build",
                                  "--student-feature", "neck.act", "--student-logits", "cls"])
    assert "--head-lr-mult 10: --student-model has no .backbone attribute" in line
