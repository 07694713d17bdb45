"""frkd.data.pretext: the synthetic benchmark's pretext backbones are deterministic, cached and load strictly."""
import os

import numpy as np
import pytest
import torch

from frkd.data.pretext import PRETEXT_OUTPUTS, pretext_backbone_path, pretext_batch, pretext_recipe, pretrain_backbone
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
