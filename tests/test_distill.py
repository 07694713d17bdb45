"""frkd.distill.Distiller on a pair of models frkd never defined: a CNN teacher at stride 4 and a
token-emitting student at stride 8 with other channels."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from frkd.distill import Distiller

K = 5


class ConvTeacher(nn.Module):
    """Stride-4 CNN: ``neck`` emits B×24×H/4×W/4, ``cls`` the logits; returns a dict."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.neck = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.drop = nn.Dropout(0.5)
        self.cls = nn.Conv2d(24, K, 1)

    def forward(self, x):
        return {"out": self.cls(self.drop(self.neck(self.stem(x))))}


class TokenStudent(nn.Module):
    """Stride-8 patch tokens: ``mixer.proj`` emits tokens B×N×12, ``head`` logits on the grid."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 12, 8, 8)
        self.mixer = nn.ModuleDict({"norm": nn.LayerNorm(12), "proj": nn.Linear(12, 12)})
        self.head = nn.Conv2d(12, K, 1)

    def forward(self, x):
        t = self.embed(x)
        B, C, h, w = t.shape
        tokens = self.mixer["proj"](self.mixer["norm"](t.flatten(2).transpose(1, 2)))
        return self.head(tokens.transpose(1, 2).reshape(B, C, h, w))


PATHS = dict(student_feature="mixer.proj", teacher_feature="neck", student_logits="head", teacher_logits="cls")


def pair(seed=0):
    torch.manual_seed(seed)
    teacher = ConvTeacher()
    teacher(torch.randn(4, 3, 32, 32))  # give the BatchNorms running statistics that a later step could move
    return TokenStudent(), teacher


def batch(seed=1, size=32):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, size, size, generator=g)
    labels = torch.randint(0, K, (2, size, size), generator=g)
    labels[:, :3] = 255
    return images, labels


def small_options(recipe):
    # small memory banks / discriminator keep CIRKD's and IFVD's terms cheap
    return {"cirkd": dict(pixel_memory_size=64, region_memory_size=8, pixel_contrast_size=32,
                          region_contrast_size=8),
            "ifvd": dict(d_width=8), "cwd": dict(d_width=8)}.get(recipe, {})


@pytest.mark.parametrize("recipe", ["frkd", "kd", "fitnet", "cwd", "ifvd", "cirkd"])
def test_foreign_pair_distils_student_only(recipe):
    student, teacher = pair()
    before = copy.deepcopy(teacher.state_dict())
    d = Distiller(student, teacher, recipe, num_classes=K, **PATHS, **small_options(recipe))
    assert not teacher.training
    images, labels = batch()
    out = d(images, labels)
    assert out.student.shape == (2, K, 4, 4)  # what the student returned, untouched
    assert set(out.terms) and torch.isfinite(out.loss)
    assert torch.allclose(out.loss, sum(t.float() for t in out.terms.values()))
    # every map on the teacher's 8×8 grid
    assert out.student_maps.feat.shape == (2, 12, 8, 8) and out.teacher_maps.feat.shape == (2, 24, 8, 8)
    ce = F.cross_entropy(F.interpolate(out.student, size=labels.shape[-2:], mode="bilinear"), labels,
                         ignore_index=255)
    optimizer = torch.optim.SGD([*student.parameters(), *d.parameters()], lr=0.1)
    optimizer.zero_grad()
    (ce + out.loss).backward()
    feature_weights = student.mixer["proj"].weight.grad
    assert feature_weights is not None and feature_weights.abs().sum() > 0
    optimizer.step()
    if d.discriminator_parameters():
        d_loss = d.discriminator_loss(out)
        d_loss.backward()
        assert all(p.grad is not None for p in d.discriminator_parameters())
    assert all(p.grad is None for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not student.mixer["proj"]._forward_hooks and not teacher.neck._forward_hooks


def test_student_gradient_flows_through_the_distillation_terms():
    student, teacher = pair()
    d = Distiller(student, teacher, "fitnet", num_classes=K, lambda_kd=0.0, **PATHS)
    out = d(*batch())
    out.loss.backward()
    assert student.embed.weight.grad.abs().sum() > 0


def test_teacher_put_back_in_eval_mode_and_batchnorm_frozen():
    student, teacher = pair()
    d = Distiller(student, teacher, "kd", num_classes=K, **PATHS)
    teacher.train()  # e.g. a parent module's .train()
    mean = teacher.neck[1].running_mean.clone()
    out = d(*batch())
    assert not teacher.training and torch.equal(teacher.neck[1].running_mean, mean)
    assert not out.teacher_maps.logits.requires_grad


def test_align_to_student_resizes_the_teacher():
    student, teacher = pair()
    d = Distiller(student, teacher, "fitnet", num_classes=K, align_to="student", **PATHS)
    out = d(*batch())
    assert out.teacher_maps.feat.shape[-2:] == (4, 4) and out.student_maps.feat.shape[-2:] == (4, 4)


def test_token_grid_given_by_the_user():
    student, teacher = pair()
    grids = []
    d = Distiller(student, teacher, "fitnet", num_classes=K, student_grid=lambda x: grids.append(1) or (2, 8), **PATHS)
    d(*batch())
    assert grids  # the callable was asked; a 2×8 grid of the 16 tokens
    d = Distiller(student, teacher, "fitnet", num_classes=K, student_grid=(3, 5), **PATHS)
    with pytest.raises(ValueError, match=r"student_feature 'mixer.proj': grid 3×5 does not hold the 16 tokens"):
        d(*batch())


def test_non_square_tokens_need_a_grid():
    student, teacher = pair()
    d = Distiller(student, teacher, "fitnet", num_classes=K, **PATHS)
    images, labels = batch()
    with pytest.raises(ValueError, match="do not form a square grid"):
        d(images[:, :, :, :16], labels[:, :, :16])


def test_unknown_path_names_the_nearest():
    student, teacher = pair()
    with pytest.raises(ValueError, match=r"student_feature: no module 'mixer.prj' in TokenStudent \(nearest: mixer.proj"):
        Distiller(student, teacher, "kd", num_classes=K, **{**PATHS, "student_feature": "mixer.prj"})


def test_logits_channels_checked_before_any_forward():
    student, teacher = pair()
    with pytest.raises(ValueError, match=r"student_logits 'head': expected logits of num_classes=7 channels, the module emits 5"):
        Distiller(student, teacher, "kd", num_classes=7, **PATHS)


def test_feature_of_other_rank_rejected():
    student, teacher = pair()
    student.embed.register_forward_hook(lambda m, i, o: None)
    d = Distiller(student, teacher, "fitnet", num_classes=K, **{**PATHS, "student_feature": "mixer"},
                  student_channels=12)
    with pytest.raises(ValueError, match=r"student_feature 'mixer': the module did not run"):
        d(*batch())
    d = Distiller(student, teacher, "fitnet", num_classes=K, teacher_channels=24,
                  **{**PATHS, "teacher_feature": "stem.0"})
    with pytest.raises(ValueError, match=r"teacher_feature 'stem.0': expected 24 channels"):
        d(*batch())


def test_feature_that_is_not_3d_or_4d():
    class Flat(TokenStudent):
        def __init__(self):
            super().__init__()
            self.pool = nn.Flatten()

        def forward(self, x):
            self.pool(x)
            return super().forward(x)

    _, teacher = pair()
    d = Distiller(Flat(), teacher, "fitnet", num_classes=K, student_channels=12,
                  **{**PATHS, "student_feature": "pool"})
    with pytest.raises(ValueError, match=r"student_feature 'pool': expected a B×C×H×W map or B×N×C tokens, "
                                         r"got shape \(2, 3072\)"):
        d(*batch())


def test_devices_must_match():
    student, teacher = pair()
    teacher.to("meta")
    with pytest.raises(ValueError, match="expected one device, got student on cpu and teacher on meta"):
        Distiller(student, teacher, "kd", num_classes=K, **PATHS)


def test_channels_that_cannot_be_read_must_be_given():
    student, teacher = pair()
    with pytest.raises(ValueError, match=r"teacher_feature 'drop': cannot tell its channels .* teacher_channels="):
        Distiller(student, teacher, "kd", num_classes=K, **{**PATHS, "teacher_feature": "drop"})


def test_amp_autocast():
    student, teacher = pair()
    d = Distiller(student, teacher, "frkd", num_classes=K, **PATHS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d(*batch())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert student.mixer["proj"].weight.grad is not None


def test_compiled_student():
    student, teacher = pair()
    compiled = torch.compile(student, backend="eager")
    d = Distiller(compiled, teacher, "fitnet", num_classes=K, **PATHS)
    reference = Distiller(student, teacher, "fitnet", num_classes=K, **PATHS)
    reference.load_state_dict(d.state_dict())
    images, labels = batch()
    for _ in range(2):  # the second call runs with new hooks
        out, expected = d(images, labels), reference(images, labels)
        assert torch.allclose(out.loss, expected.loss, atol=1e-6)


def distil_through_ddp() -> None:
    student, teacher = pair()
    wrapped = nn.parallel.DistributedDataParallel(student)
    d = Distiller(wrapped, teacher, "fitnet", num_classes=K, **PATHS)  # paths of the inner module
    out = d(*batch())
    ce = out.student.float().mean()
    (ce + out.loss).backward()
    assert student.embed.weight.grad is not None
    assert all(p.grad is not None for p in d.parameters())


def test_ddp_student(tmp_path):
    import gc

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        distil_through_ddp()
    finally:
        # DDP's reducer must go before the group: freed after it, it drops the group's last reference while
        # holding the GIL, and the group's destructor waits for gloo's thread, which waits for the GIL
        gc.collect()
        dist.destroy_process_group()


def test_the_example_distils_its_own_pair():
    """examples/distill_your_own_model.py, shortened (CI runs it)."""
    import runpy

    example = runpy.run_path("examples/distill_your_own_model.py")
    terms = example["main"](["--recipe", "frkd", "--steps", "3"])
    assert set(terms) == {"feat", "intra", "inter", "kd"} and all(map(torch.isfinite, map(torch.tensor, terms.values())))
