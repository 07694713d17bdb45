"""frkd.pretext: the synthetic benchmark's pretext backbones are deterministic, shipped or cached, and load strictly."""
import json
import os

import numpy as np
import pytest
import torch

from frkd import pretext
from frkd.pretext import PRETEXT_OUTPUTS, pretext_backbone_path, pretext_batch, pretext_recipe, pretrain_backbone
from frkd.provenance import file_state_hash, machine, state_hash
from frkd.data.synthetic import CLASSES, PRETEXT_CLASSES, PRETEXT_SHAPES, generate_scene, scene_rng
from frkd.models.pretrained import load_backbone_weights
from frkd.models.resnet import DilatedResNet

TINY = dict(iterations=3, batch_size=2, image_size=[32, 32], lr=0.05)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_pretext_targets_are_the_scene_attributes():
    recipe = pretext_recipe("resnet18", 2, **TINY)
    image, target = pretext_batch(recipe, step=1)
    assert image.shape == (2, 3, 32, 32) and target.shape == (2, 3, 32, 32)
    scene = generate_scene(scene_rng(recipe["seed"], "pretext", 3), 32, 32, 1 + len(PRETEXT_CLASSES), PRETEXT_CLASSES)
    for channel, expected in enumerate((scene.label, scene.colour, scene.texture)):  # step 1, item 1
        assert np.array_equal(target[1, channel].numpy(), expected)
    valid = target != 255
    assert (target[valid] >= 0).all()
    for channel, classes in enumerate(PRETEXT_OUTPUTS):
        assert (target[:, channel][valid[:, channel]] < classes).all()


def test_pretrained_backbone_is_bit_for_bit_reproducible_and_trained(one_thread):
    recipe = pretext_recipe("resnet18", 2, **TINY)
    first, second = pretrain_backbone(recipe), pretrain_backbone(recipe)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    torch.manual_seed(recipe["seed"])
    initial = DilatedResNet("resnet18", 2).state_dict()
    assert not torch.equal(first["layer4.1.conv2.weight"], initial["layer4.1.conv2.weight"])
    other = pretrain_backbone(pretext_recipe("resnet18", 2, **TINY | {"seed": 1}))
    assert not torch.equal(first["conv1.weight"], other["conv1.weight"])


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_cached_backbone_loads_with_the_strict_loader(tmp_path, one_thread, backbone):
    path = pretext_backbone_path(backbone, 2, str(tmp_path), **TINY)
    assert os.path.basename(path).startswith(f"synthetic-pretext-{backbone}-w2-") and path.endswith(".pth")
    model = DilatedResNet(backbone, 2)
    load_backbone_weights(model, path)
    saved = torch.load(path, weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    built_at = os.path.getmtime(path)
    assert pretext_backbone_path(backbone, 2, str(tmp_path), **TINY) == path  # cached: not rebuilt
    assert os.path.getmtime(path) == built_at
    assert pretext_backbone_path(backbone, 2, str(tmp_path), **TINY | {"iterations": 2}) != path
    with pytest.raises(ValueError, match="does not match|other shapes"):
        load_backbone_weights(DilatedResNet(backbone, 4), path)


def test_building_the_cache_leaves_the_callers_random_stream_alone(tmp_path, one_thread):
    # a run that builds the backbone (cold cache) must draw the same dropout masks as one that loads it
    torch.manual_seed(5)
    pretext_backbone_path("resnet18", 2, str(tmp_path), **TINY)
    cold = torch.rand(4)
    torch.manual_seed(5)
    pretext_backbone_path("resnet18", 2, str(tmp_path), **TINY)
    warm = torch.rand(4)
    assert torch.equal(cold, warm)


def test_unknown_recipe_keys_are_named():
    with pytest.raises(ValueError, match="unknown recipe keys \\['iters'\\]"):
        pretext_recipe("resnet18", 8, iters=3)


def test_pretext_shapes_are_not_benchmark_shapes():
    benchmark_shapes = {shape for outlines, _ in CLASSES for shape in outlines}
    assert not set(PRETEXT_SHAPES) & benchmark_shapes


def test_reference_builds_match_todays_recipes():
    manifest = pretext.read_manifest()
    expected = {pretext.backbone_file_name(pretext_recipe(b, w, seed=s)): (b, w, s) for b, w, s in pretext.SHIPPED}
    # every reference recipe of today's code is recorded, and nothing else: a changed recipe (PRETEXT,
    # PRETEXT_ITERATIONS, GENERATOR_VERSION) changes the name and fails here until the reference is rebuilt
    assert set(manifest) == set(expected)
    assert sorted(os.listdir(pretext.REFERENCE_DIR)) == ["MANIFEST.json"]  # no weights in the repository
    for name, (backbone, width, seed) in expected.items():
        assert manifest[name]["recipe"] == pretext_recipe(backbone, width, seed=seed)


def test_a_first_build_says_what_why_and_how_long(tmp_path, capsys, one_thread):
    path = pretext_backbone_path("resnet18", 2, str(tmp_path), **TINY)
    err = capsys.readouterr().err
    assert os.path.dirname(path) == str(tmp_path)
    assert "building the synthetic pretext backbone resnet18 (width 2, pretext seed 0, 3 iterations)" in err
    assert "built once, on first use" in err and "about" in err and "3/3 iterations" in err
    pretext_backbone_path("resnet18", 2, str(tmp_path), **TINY)
    assert capsys.readouterr().err == ""  # cached: silent


def test_a_build_says_whether_it_has_the_reference_bits(tmp_path, monkeypatch, capsys, one_thread):
    # stand-in reference: the tiny recipe built here, once as is and once with one tensor nudged, as another
    # machine's bits would be
    recipe = pretext_recipe("resnet18", 2, **TINY)
    name = pretext.backbone_file_name(recipe)
    monkeypatch.setattr(pretext, "MANIFEST", str(tmp_path / "MANIFEST.json"))

    def reference(state):
        (tmp_path / "MANIFEST.json").write_text(json.dumps(
            {name: {"recipe": recipe, "state_hash": state_hash(state), "built_on": machine()}}))

    built = pretrain_backbone(recipe)
    reference(built)
    assert pretext.compare_with_reference(pretrain_backbone(recipe), name).startswith(
        f"{name} has the reference bits")
    pretext_backbone_path("resnet18", 2, str(tmp_path / "cache"), **TINY)
    assert f"{name} has the reference bits" in capsys.readouterr().err  # said by the first build
    reference({**built, "conv1.weight": built["conv1.weight"] + 1e-3})
    report = pretext.compare_with_reference(pretrain_backbone(recipe), name)
    assert report.startswith(f"{name} differs from the reference build")
    assert machine()["cpu"] in report and "torch CPU capability" in report
