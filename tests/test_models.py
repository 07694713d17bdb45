"""frkd.models: shapes and strides, aux/width options, torchvision-named weight loading."""
import math

import pytest
import torch
from torch import nn

from frkd.models import SegOutput, build_model
from frkd.models.heads import AtrousConv2d
from frkd.models.resnet import DilatedResNet

# torchvision's ResNet layout, written independently of frkd.models.resnet
TORCHVISION_DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
# parameter counts of torchvision's resnet18/50/101 minus their fc layer (512·1000+1000, 2048·1000+1000)
TORCHVISION_PARAMS_WITHOUT_FC = {
    "resnet18": 11_689_512 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
    "resnet101": 44_549_160 - 2_049_000,
}


def torchvision_keys(backbone: str) -> set[str]:
    """State-dict keys of torchvision's ResNet (without fc and num_batches_tracked)."""
    bn = ("weight", "bias", "running_mean", "running_var")
    keys = {"conv1.weight"} | {f"bn1.{p}" for p in bn}
    convs = 2 if backbone == "resnet18" else 3
    for stage, depth in enumerate(TORCHVISION_DEPTHS[backbone], start=1):
        for block in range(depth):
            prefix = f"layer{stage}.{block}."
            for i in range(1, convs + 1):
                keys |= {prefix + f"conv{i}.weight"} | {prefix + f"bn{i}.{p}" for p in bn}
            if block == 0 and (stage > 1 or convs == 3):
                keys |= {prefix + "downsample.0.weight"} | {prefix + f"downsample.1.{p}" for p in bn}
    return keys


@pytest.mark.parametrize("arch", ["deeplabv3", "pspnet"])
@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "resnet101"])
def test_output_shapes_at_stride_8(arch, backbone):
    torch.manual_seed(0)
    model = build_model(arch, backbone, 5, width=4)
    out = model(torch.randn(2, 3, 17, 28))
    assert isinstance(out, SegOutput)
    h, w = math.ceil(17 / 8), math.ceil(28 / 8)
    assert out.logits.shape == (2, 5, h, w)
    assert out.aux.shape == (2, 5, h, w)
    assert out.feat.shape == (2, model.feat_channels, h, w)
    assert model.feat_channels == (8 if backbone == "resnet18" else 16)
    assert torch.isfinite(out.logits).all()


def test_aux_off_returns_none_and_drops_the_head():
    with_aux = build_model("pspnet", "resnet18", 3, width=8)
    without = build_model("pspnet", "resnet18", 3, width=8, aux=False)
    out = without.eval()(torch.randn(1, 3, 16, 16))
    assert out.aux is None
    assert not any(name.startswith("aux_head") for name, _ in without.named_parameters())
    assert sum(p.numel() for p in without.parameters()) < sum(p.numel() for p in with_aux.parameters())


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "resnet101"])
def test_backbone_names_and_sizes_match_torchvision(backbone):
    resnet = DilatedResNet(backbone, width=64)
    keys = {k for k in resnet.state_dict() if not k.endswith("num_batches_tracked")}
    assert keys == torchvision_keys(backbone)
    assert sum(p.numel() for p in resnet.parameters()) == TORCHVISION_PARAMS_WITHOUT_FC[backbone]


def test_feat_channels_follow_cirkd_at_width_64():
    assert build_model("deeplabv3", "resnet18", 19).feat_channels == 128
    assert build_model("pspnet", "resnet50", 19, aux=False).feat_channels == 256


def test_width_scales_every_stage():
    for width in (8, 16):
        resnet = DilatedResNet("resnet50", width=width)
        assert resnet.conv1.out_channels == width
        assert resnet.layer1[0].conv1.out_channels == width
        assert resnet.layer4[-1].conv3.out_channels == 8 * width * 4
        assert resnet.layer4_channels == 32 * width and resnet.layer3_channels == 16 * width


def test_layer3_and_layer4_are_dilated_not_strided():
    resnet = DilatedResNet("resnet18", width=8)
    for layer, dilation in ((resnet.layer3, 2), (resnet.layer4, 4)):
        assert all(m.stride == (1, 1) for m in layer.modules() if isinstance(m, nn.Conv2d))
        assert layer[-1].conv2.dilation == (dilation, dilation)
    c3, c4 = resnet(torch.randn(1, 3, 40, 24))
    assert c3.shape[-2:] == c4.shape[-2:] == (5, 3)


def test_only_batchnorm_normalisation_and_syncbn_conversion():
    model = build_model("deeplabv3", "resnet18", 4, width=8)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert norms and all(type(m) is nn.BatchNorm2d for m in norms)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = build_model("deeplabv3", "resnet18", 4, width=4)
    out = model(torch.randn(2, 3, 16, 16))
    (out.logits.sum() + out.aux.sum() + out.feat.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("size", [(5, 7), (8, 30), (30, 30)])
def test_atrous_conv_equals_the_plain_dilated_conv(size):
    torch.manual_seed(0)
    fast = AtrousConv2d(3, 4, dilation=12).double()
    plain = nn.Conv2d(3, 4, 3, padding=12, dilation=12, bias=False).double()
    plain.weight.data.copy_(fast.weight.data)
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 4, *size, dtype=torch.float64)
    gx_fast, gw_fast = torch.autograd.grad(fast(x), (x, fast.weight), grad)
    gx_plain, gw_plain = torch.autograd.grad(plain(x), (x, plain.weight), grad)
    torch.testing.assert_close(fast(x), plain(x))
    torch.testing.assert_close(gx_fast, gx_plain)
    torch.testing.assert_close(gw_fast, gw_plain)


def _torchvision_style_file(tmp_path, backbone="resnet18", width=8, drop=None, extra=None):
    """Save a state dict keyed like a torchvision checkpoint (fc.*, no num_batches_tracked)."""
    source = DilatedResNet(backbone, width)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = torch.randn(1000, source.layer4_channels)
    state["fc.bias"] = torch.randn(1000)
    if drop:
        del state[drop]
    if extra:
        state[extra] = torch.zeros(1)
    path = tmp_path / f"{backbone}-fake.pth"
    torch.save(state, path)
    return str(path), state


def test_pretrained_loads_torchvision_named_weights(tmp_path):
    path, state = _torchvision_style_file(tmp_path)
    model = build_model("deeplabv3", "resnet18", 4, width=8, pretrained=path)
    loaded = model.backbone.state_dict()
    for key in ("conv1.weight", "layer1.1.bn2.running_var", "layer3.0.downsample.0.weight", "layer4.1.conv2.weight"):
        torch.testing.assert_close(loaded[key], state[key])


def test_pretrained_missing_key_is_named(tmp_path):
    path, _ = _torchvision_style_file(tmp_path, drop="layer2.0.downsample.1.weight")
    with pytest.raises(ValueError, match=r"missing keys: layer2\.0\.downsample\.1\.weight") as info:
        build_model("deeplabv3", "resnet18", 4, width=8, pretrained=path)
    assert "resnet18-fake.pth" in str(info.value)


def test_pretrained_unexpected_key_is_named(tmp_path):
    path, _ = _torchvision_style_file(tmp_path, extra="layer5.0.conv1.weight")
    with pytest.raises(ValueError, match=r"unexpected keys: layer5\.0\.conv1\.weight") as info:
        build_model("pspnet", "resnet18", 4, width=8, pretrained=path)
    assert "resnet18-fake.pth" in str(info.value)


def test_pretrained_shape_mismatch_mentions_width(tmp_path):
    path, _ = _torchvision_style_file(tmp_path, width=8)
    with pytest.raises(ValueError, match=r"width=64.*conv1\.weight: file \(8, 3, 7, 7\) vs model \(16, 3, 7, 7\)"):
        build_model("deeplabv3", "resnet18", 4, width=16, pretrained=path)


def test_pretrained_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_model("deeplabv3", "resnet18", 4, width=8, pretrained=str(tmp_path / "nowhere.pth"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(arch="unet", backbone="resnet18", num_classes=4), "arch: expected one of"),
    (dict(arch="pspnet", backbone="resnet34", num_classes=4), "backbone: expected one of"),
    (dict(arch="pspnet", backbone="resnet18", num_classes=0), "num_classes: expected a positive int"),
    (dict(arch="pspnet", backbone="resnet18", num_classes=4, width=0), "width: expected a positive int"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)


@pytest.mark.parametrize("arch", ["deeplabv3", "pspnet"])
def test_feature_tap_after_dropout_is_the_classifier_input(arch):
    """post-dropout: feat is what the classifier sees (dropped in train mode); pre-dropout: the refined map.
    Same weights, same dropout draw: identical logits, feat differs by the dropout mask only."""
    x = torch.randn(2, 3, 40, 40)
    torch.manual_seed(0)
    pre = build_model(arch, "resnet18", 5, width=4, feature_tap="pre-dropout")
    post = build_model(arch, "resnet18", 5, width=4, feature_tap="post-dropout")
    post.load_state_dict(pre.state_dict())
    torch.manual_seed(1)
    a = pre(x)
    torch.manual_seed(1)
    b = post(x)
    assert torch.equal(a.logits, b.logits)
    alive, kept = a.feat != 0, b.feat != 0  # ReLU zeros, then the dropout's
    dropped = (alive & ~kept).sum() / alive.sum()
    assert 0.03 < dropped < 0.2  # Dropout(0.1) zeroed about a tenth
    assert torch.allclose(b.feat, a.feat * kept / 0.9, rtol=1e-5, atol=1e-7)
    assert torch.equal(post.head.classifier(b.feat), b.logits)
    pre.eval(), post.eval()
    assert torch.equal(pre(x).feat, post(x).feat)
    with pytest.raises(ValueError, match="feature_tap"):
        build_model(arch, "resnet18", 5, width=4, feature_tap="middle")


# ---------------------------------------------------------------- CIRKD's student families (frkd.models.families)
from frkd.models import build_segmentation_model  # noqa: E402
from frkd.models.mobilenetv3 import MobileNetV3  # noqa: E402

# torchvision's MobileNetV3 tables, written independently of frkd.models.mobilenetv3:
# (in, kernel, expanded, out, squeeze-excitation) per inverted-residual block
TORCHVISION_MOBILENETV3 = {
    "mobilenetv3_small": [(16, 3, 16, 16, True), (16, 3, 72, 24, False), (24, 3, 88, 24, False),
                          (24, 5, 96, 40, True), (40, 5, 240, 40, True), (40, 5, 240, 40, True),
                          (40, 5, 120, 48, True), (48, 5, 144, 48, True), (48, 5, 288, 96, True),
                          (96, 5, 576, 96, True), (96, 5, 576, 96, True)],
    "mobilenetv3_large": [(16, 3, 16, 16, False), (16, 3, 64, 24, False), (24, 3, 72, 24, False),
                          (24, 5, 72, 40, True), (40, 5, 120, 40, True), (40, 5, 120, 40, True),
                          (40, 3, 240, 80, False), (80, 3, 200, 80, False), (80, 3, 184, 80, False),
                          (80, 3, 184, 80, False), (80, 3, 480, 112, True), (112, 3, 672, 112, True),
                          (112, 5, 672, 160, True), (160, 5, 960, 160, True), (160, 5, 960, 160, True)],
}
# torchvision's parameter counts (mobilenet_v3_small 2 542 856, _large 5 483 032) minus the classifier
# (576·1024+1024 + 1024·1000+1000, 960·1280+1280 + 1280·1000+1000)
TORCHVISION_MOBILENETV3_PARAMS = {"mobilenetv3_small": 2_542_856 - 1_615_848,
                                  "mobilenetv3_large": 5_483_032 - 2_511_080}


def mobilenetv3_file_keys(name: str) -> list[str]:
    """The keys of torchvision's mobilenet_v3_* ImageNet state dict, classifier included."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def conv_bn(prefix):
        return [f"{prefix}.0.weight"] + [f"{prefix}.1.{p}" for p in bn]

    keys = conv_bn("features.0")
    blocks = TORCHVISION_MOBILENETV3[name]
    for i, (cin, _, expanded, _, se) in enumerate(blocks, start=1):
        j = 0
        if expanded != cin:
            keys += conv_bn(f"features.{i}.block.{j}")
            j += 1
        keys += conv_bn(f"features.{i}.block.{j}")
        j += 1
        if se:
            keys += [f"features.{i}.block.{j}.fc{k}.{p}" for k in (1, 2) for p in ("weight", "bias")]
            j += 1
        keys += conv_bn(f"features.{i}.block.{j}")
    keys += conv_bn(f"features.{len(blocks) + 1}")
    return keys + ["classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"]


@pytest.mark.parametrize("name", ["mobilenetv3_small", "mobilenetv3_large"])
def test_mobilenetv3_has_torchvision_names_sizes_and_stride_8(name):
    net = MobileNetV3(name)
    expected = [k for k in mobilenetv3_file_keys(name) if not k.startswith("classifier.")]
    assert list(net.state_dict()) == expected
    assert sum(p.numel() for p in net.parameters()) == TORCHVISION_MOBILENETV3_PARAMS[name]
    assert net(torch.randn(1, 3, 65, 48)).shape == (1, net.out_channels, 9, 6)
    assert net.out_channels == {"mobilenetv3_small": 576, "mobilenetv3_large": 960}[name]


def test_mobilenetv3_loads_a_torchvision_file_strictly(tmp_path):
    torch.manual_seed(0)
    reference = MobileNetV3("mobilenetv3_small").state_dict()
    state = {k: torch.randn(reference[k].shape) if k in reference and reference[k].is_floating_point()
             else reference.get(k, torch.randn(3)) for k in mobilenetv3_file_keys("mobilenetv3_small")}
    path = str(tmp_path / "mobilenet_v3_small-047dcff4.pth")
    torch.save(state, path)
    model = build_segmentation_model("psp_mobile", "mobilenetv3_small", 5, pretrained=path)
    loaded = model.backbone.state_dict()
    for key in ("features.0.0.weight", "features.4.block.2.fc1.bias", "features.12.1.running_var"):
        torch.testing.assert_close(loaded[key], state[key])
    del state["features.4.block.2.fc2.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"torchvision MobileNetV3 names.*missing keys: features\.4\.block\.2\.fc2"):
        build_segmentation_model("psp_mobile", "mobilenetv3_small", 5, pretrained=path)


FAMILIES = [("deeplabv3_mobilenet_ssseg", "mobilenetv3_small"), ("deeplabv3_mobilenet_ssseg", "mobilenetv3_large"),
            ("psp_mobile", "mobilenetv3_small"), ("psp_mobile", "mobilenetv3_large"),
            ("deeplab_mobile", "mobilevit_xx_small"), ("psp_mobile", "mobilevit_xx_small"),
            ("upernet_lite", "resnet18"), ("segformer", "MiT_B0"), ("psp", "resnet18")]
NEEDS_TRANSFORMERS = {"mobilevit_xx_small", "MiT_B0"}


@pytest.mark.parametrize("arch, backbone", FAMILIES)
def test_family_outputs_and_distillation_paths(arch, backbone):
    if backbone in NEEDS_TRANSFORMERS:
        pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = build_segmentation_model(arch, backbone, 5, width=8)
    out = model(torch.randn(2, 3, 64, 64))
    stride = 4 if arch in ("upernet_lite", "segformer") else 8
    assert out.logits.shape == (2, 5, 64 // stride, 64 // stride)
    modules = dict(model.named_modules())
    assert model.feature_path in modules and model.logits_path in modules
    assert model.backbone is not None


def test_psp_is_pspnet():
    torch.manual_seed(0)
    a = build_segmentation_model("psp", "resnet18", 5, width=4)
    torch.manual_seed(0)
    b = build_segmentation_model("pspnet", "resnet18", 5, width=4)
    assert type(a.head) is type(b.head) and all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_registry_errors_name_the_model():
    with pytest.raises(ValueError, match=r"model psp_mobile: expected a backbone among .*mobilevit_xx_small, got 'MiT_B0'"):
        build_segmentation_model("psp_mobile", "MiT_B0", 5)
    with pytest.raises(ValueError, match=r"model: expected one of .* or package.module:callable, got 'unet'"):
        build_segmentation_model("unet", "resnet18", 5)


def legacy_segformer_name(key: str) -> str:
    """nvidia/mit-b0's name of a transformers-5 SegFormer key (the Hub files predate the rename)."""
    for new, old in (("stages.{}.patch_embeddings.", "encoder.patch_embeddings.{}."), ("stages.{}.blocks.", "encoder.block.{}."),
                     ("stages.{}.layer_norm", "encoder.layer_norm.{}")):
        for i in range(4):
            key = key.replace(new.format(i), old.format(i))
    for new, old in (("attention.q_proj", "attention.self.query"), ("attention.k_proj", "attention.self.key"),
                     ("attention.v_proj", "attention.self.value"), ("attention.o_proj", "attention.output.dense"),
                     ("attention.sequence_reduction.sequence_reduction", "attention.self.sr"),
                     ("attention.sequence_reduction.layer_norm", "attention.self.layer_norm"),
                     ("mlp.fc1", "mlp.dense1"), ("mlp.fc2", "mlp.dense2"), ("layernorm_before", "layer_norm_1"),
                     ("layernorm_after", "layer_norm_2")):
        key = key.replace(new, old)
    return key


def test_mobilevit_and_mit_load_their_public_checkpoint_names(tmp_path):
    transformers = pytest.importorskip("transformers")
    from frkd.models.families import MIT_CONFIGS, MOBILEVIT_XX_SMALL

    torch.manual_seed(0)
    # what apple/mobilevit-xx-small and nvidia/mit-b0 hold: the ImageNet classification models' state dicts,
    # MiT's under the names its Hub file has
    vit = transformers.MobileViTForImageClassification(transformers.MobileViTConfig(**MOBILEVIT_XX_SMALL)).state_dict()
    hidden, depths, _ = MIT_CONFIGS["MiT_B0"]
    mit = transformers.SegformerForImageClassification(
        transformers.SegformerConfig(hidden_sizes=list(hidden), depths=list(depths))).state_dict()
    mit = {legacy_segformer_name(k): v for k, v in mit.items()}
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in mit
    for name, state, arch, backbone, key, own in (
            ("mobilevit.bin", vit, "deeplab_mobile", "mobilevit_xx_small", "mobilevit.conv_stem.convolution.weight",
             "backbone.mobilevit.conv_stem.convolution.weight"),
            ("mit.bin", mit, "segformer", "MiT_B0", "segformer.encoder.block.1.0.attention.self.query.weight",
             "net.segformer.stages.1.blocks.0.attention.q_proj.weight")):
        path = str(tmp_path / name)
        torch.save(state, path)
        model = build_segmentation_model(arch, backbone, 5, pretrained=path)
        torch.testing.assert_close(dict(model.named_parameters())[own], state[key])
        del state[key]
        torch.save(state, path)
        with pytest.raises(ValueError, match="missing keys"):
            build_segmentation_model(arch, backbone, 5, pretrained=path)
