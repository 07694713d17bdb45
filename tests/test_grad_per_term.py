"""--distill-grad-per-term: the gradient calibration with a ρ per term (each distillation term's gradient
on the student feature starts at ρ times the task loss's) instead of one ρ shared by the n terms."""
import pytest
from test_calibration import feature_grad_norm, tiny_trainer
from test_discriminator import teacher_file  # noqa: F401  (module fixture: a tiny trained teacher)


@pytest.mark.parametrize("per_term", [False, True])
def test_each_term_starts_at_rho_or_its_share_of_rho(tmp_path, teacher_file, per_term):  # noqa: F811
    ratio = 0.5
    trainer = tiny_trainer(tmp_path, teacher_file, grad_ratio=ratio, grad_per_term=per_term)
    images, labels = next(iter(trainer._train_loader()))
    task, distilled, out = trainer.step(images, labels)
    distill = distilled.terms
    scales = trainer._calibrate(task, distill, out.feat)
    task_norm = feature_grad_norm(sum(task.values()), out.feat)
    share = 1 if per_term else len(distill)
    for name, term in distill.items():
        assert scales[name] * feature_grad_norm(term, out.feat) == pytest.approx(ratio / share * task_norm, rel=1e-4)


def test_the_flag_sets_the_config_field():
    from frkd.cli import parse_config

    assert parse_config(["--distill-grad-ratio", "1", "--distill-grad-per-term"])[0].loss.grad_per_term
    assert not parse_config(["--distill-grad-ratio", "1"])[0].loss.grad_per_term
