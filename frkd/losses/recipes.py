"""Recipes (named sets of distillation terms and weights, after the rows of CIRKD's README), the
options every term reads, and the per-dataset weight overrides: the one place for loss defaults.

``resolved_loss_options(method, options, dataset)`` = option defaults ← recipe ← dataset overrides
← ``options`` (the flags the user set). A recipe names only what differs from the defaults, where
every λ is 0 (term off). docs/method.md "Recipes" gives the table with the CIRKD script of each.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One loss option: ``dest`` (build_loss keyword), its flags, type, default, and the CIRKD flag it
    mirrors (None when CIRKD has none)."""

    dest: str
    flags: tuple[str, ...]
    kind: type
    default: Any
    cirkd: str | None
    help: str
    choices: tuple[str, ...] | None = None


OPTIONS = (
    Option("lambda_kd", ("--lambda-kd",), float, 0.0, "--lambda-kd", "pixel KD (KL of the class softmax) weight"),
    Option("kd_temperature", ("--kd-temperature",), float, 1.0, "--kd-temperature", "pixel KD temperature"),
    Option("kd_pixels", ("--kd-pixels",), str, "all", None,
           "pixels of the KD term: all (CIRKD) or fg (FRKD's filter foreground)", ("all", "fg")),
    Option("lambda_cwd_logit", ("--lambda-cwd-logit", "--lambda-cwd"), float, 0.0, "--lambda-cwd-logit",
           "channel-wise distillation on the logits"),
    Option("lambda_cwd_fea", ("--lambda-cwd-fea",), float, 0.0, "--lambda-cwd-fea",
           "channel-wise distillation on the features (1×1 conv C_s→C_t)"),
    Option("cwd_temperature", ("--cwd-temperature",), float, 4.0, None, "CWD temperature (CIRKD fixes 4)"),
    Option("lambda_fitnet", ("--lambda-fitnet",), float, 0.0, "--lambda-fitnet", "FitNet feature MSE (1×1 conv)"),
    Option("lambda_ifv", ("--lambda-ifv",), float, 0.0, "--lambda-ifv",
           "IFV: intra-class cosine maps of the raw features, CIRKD's mean"),
    Option("lambda_idd", ("--lambda-idd",), float, 0.0, None, "IDD: inter-class prototype distances, raw features"),
    Option("lambda_adv", ("--lambda-adv",), float, 0.0, "--lambda-adv", "adversarial term of the student (−D(Z_S))"),
    Option("lambda_d", ("--lambda-d",), float, 0.0, "--lambda-d", "discriminator loss weight"),
    Option("adv_type", ("--adv-type",), str, "hinge", None,
           "discriminator loss: hinge (CIRKD's train_kd.py) or wgan-gp (IFVD)", ("hinge", "wgan-gp")),
    Option("lambda_gp", ("--lambda-gp",), float, 10.0, None, "gradient-penalty weight of wgan-gp"),
    Option("d_width", ("--d-width",), int, 64, None,
           "channels of the discriminator's first conv, doubled at each of its four (CIRKD's sagan.py: 64)"),
    Option("lambda_minibatch_pixel", ("--lambda-minibatch-pixel",), float, 0.0, "--lambda-minibatch-pixel",
           "CIRKD mini-batch pixel-to-pixel relation"),
    Option("lambda_memory_pixel", ("--lambda-memory-pixel",), float, 0.0, "--lambda-memory-pixel",
           "CIRKD memory-bank pixel-to-pixel relation"),
    Option("lambda_memory_region", ("--lambda-memory-region",), float, 0.0, "--lambda-memory-region",
           "CIRKD memory-bank pixel-to-region relation"),
    Option("contrast_temperature", ("--contrast-temperature",), float, 0.1, "--contrast-temperature",
           "similarity temperature τ of the CIRKD relations"),
    Option("contrast_kd_temperature", ("--contrast-kd-temperature",), float, 1.0, "--contrast-kd-temperature",
           "KD temperature of the memory relations"),
    Option("pixel_memory_size", ("--pixel-memory-size",), int, 20000, "--pixel-memory-size", "pixel bank slots per class"),
    Option("region_memory_size", ("--region-memory-size",), int, 2000, "--region-memory-size",
           "region bank slots per class"),
    Option("pixel_contrast_size", ("--pixel-contrast-size",), int, 4096, "--pixel-contrast-size",
           "pixel negatives per anchor (// K + 1 per class)"),
    Option("region_contrast_size", ("--region-contrast-size",), int, 1024, "--region-contrast-size",
           "region negatives per anchor (// K + 1 per class)"),
    Option("pixel_memory_cirkd_enqueue", ("--pixel-memory-cirkd-enqueue",), bool, False, None,
           "fill a class's pixel bank from random raster positions below its pixel count, whatever their class, "
           "as CIRKD's losses/cirkd_memory.py does (default: that class's own pixels)"),
    Option("lambda_skd", ("--lambda-skd",), float, 0.0, "--lambda-skd",
           "SKD pairwise term: pixel similarities of the 2×2 max-pooled features"),
    Option("lambda_at", ("--lambda-at",), float, 0.0, "--lambda-at", "attention transfer on the features"),
    Option("lambda_psd", ("--lambda-psd",), float, 0.0, "--lambda-psd",
           "DSD pixel similarity over [aux logits, feature, logits] (needs --lambda-csd too, as train_kd.py)"),
    Option("lambda_csd", ("--lambda-csd",), float, 0.0, "--lambda-csd",
           "DSD category similarity of the logits (needs --lambda-psd too, as train_kd.py)"),
    Option("lambda_minibatch_channel", ("--lambda-minibatch-channel",), float, 0.0, "--lambda-minibatch-channel",
           "CIRKDv2 mini-batch channel-to-channel relation"),
    Option("lambda_memory_channel", ("--lambda-memory-channel",), float, 0.0, "--lambda-memory-channel",
           "CIRKDv2 memory-bank channel-to-channel relation"),
    Option("lambda_channel_kd", ("--lambda-channel-kd",), float, 0.0, "--lambda-channel-kd",
           "CIRKDv2 channel MSE of the pooled, normalised channel embeddings"),
    Option("channel_memory_size", ("--channel-memory-size",), int, 10000, "--channel-memory-size",
           "CIRKDv2 channel bank rows"),
    Option("channel_contrast_size", ("--channel-contrast-size",), int, 2048, "--channel-contrast-size",
           "CIRKDv2 channel negatives per anchor"),
    Option("fitnet_gcn", ("--fitnet-gcn",), bool, False, None,
           "pass the student feature through CIRKDv2's GCN (losses/gcn.py) before every feature term when "
           "--lambda-fitnet is set, as train_cirkdv2.py does"),
    Option("lambda_feat", ("--lambda-feat",), float, 0.0, None, "FRKD masked feature MSE"),
    Option("lambda_intra", ("--lambda-intra",), float, 0.0, None, "FRKD intra-class term (φ(F_S), / #valid)"),
    Option("lambda_inter", ("--lambda-inter",), float, 0.0, None, "FRKD inter-class term (φ(F_S))"),
    Option("frkd_alpha", ("--frkd-alpha",), float, 1.0, None, "FRKD foreground feature weight α"),
    Option("frkd_beta", ("--frkd-beta",), float, 0.25, None, "FRKD background feature weight β"),
    Option("frkd_gamma", ("--frkd-gamma",), float, 1.0, None, "FRKD coordinate-mask feature weight γ"),
    Option("frkd_delta", ("--frkd-delta",), float, 0.0, None, "FRKD coordinate-mask margin δ"),
    Option("tau", ("--tau",), float, None, None, "FRKD fixed entropy threshold in [0, 1]"),
    Option("ifv_cirkd_mean", ("--ifv-cirkd-mean",), bool, False, None, "FRKD: intra term / B·H·W as CIRKD"),
    Option("no_pseudo_filter", ("--no-pseudo-filter",), bool, False, None,
           "FRKD ablation: keep pixels where the teacher is wrong"),
    Option("no_fgbg", ("--no-fgbg",), bool, False, None, "FRKD ablation: no fg/bg split"),
    Option("no_coord_mask", ("--no-coord-mask",), bool, False, None, "FRKD ablation: no coordinate margin test"),
)
OPTION_DEFAULTS = {o.dest: o.default for o in OPTIONS}
ADVERSARIAL = {"lambda_adv": 0.001, "lambda_d": 0.1}

# name -> (the options that differ from OPTION_DEFAULTS, the CIRKD script it follows)
RECIPES: dict[str, tuple[dict[str, Any], str]] = {
    "none": ({}, "train_scripts/train_baseline/citys/deeplabv3_res18.sh (CE only, no teacher)"),
    "kd": ({"lambda_kd": 1.0}, "train_kd.py --lambda-kd 1 (the KD part of every train_scripts/train_kd script)"),
    "ifvd": ({"lambda_kd": 1.0, "lambda_ifv": 20.0, **ADVERSARIAL}, "train_scripts/train_kd/train_ifvd.sh"),
    "cwd": ({"lambda_kd": 1.0, "lambda_cwd_fea": 50.0, "lambda_cwd_logit": 3.0, **ADVERSARIAL},
            "train_scripts/train_kd/train_cwd.sh"),
    "fitnet": ({"lambda_kd": 1.0, "lambda_fitnet": 10.0}, "train_scripts/train_kd/train_fitnet.sh"),
    "cirkd": ({"lambda_kd": 1.0, "lambda_minibatch_pixel": 1.0, "lambda_memory_pixel": 0.1,
               "lambda_memory_region": 0.1}, "train_scripts/train_cirkd/citys/deeplabv3_res18.sh (train_cirkd.py)"),
    "idd": ({"lambda_idd": 20.0}, "none (IDD alone; no CIRKD row)"),
    "skd": ({"lambda_kd": 1.0, "lambda_skd": 10.0, **ADVERSARIAL}, "scripts/train_kd/train_skd.sh"),
    "at": ({"lambda_kd": 1.0, "lambda_at": 10000.0}, "scripts/train_kd/train_at.sh"),
    "dsd": ({"lambda_psd": 1000.0, "lambda_csd": 10.0}, "scripts/train_kd/train_dsd.sh"),
    "cirkdv2": ({"lambda_kd": 1.0, "lambda_minibatch_pixel": 1.0, "lambda_memory_pixel": 0.1,
                 "lambda_memory_region": 0.1, "lambda_minibatch_channel": 1.0, "lambda_memory_channel": 0.1,
                 "fitnet_gcn": True},
                "train_cirkdv2.py's argparse defaults; per dataset the weights of "
                "scripts/train_cirkdv2/<dataset>/deeplabv3_resnet18.sh (DATASET_DEFAULTS)"),
    "frkd": ({"lambda_feat": 1.0, "lambda_intra": 20.0, "lambda_inter": 20.0, "lambda_kd": 1.0, "kd_pixels": "fg"},
             "none (FRKD; KD as train_kd.py --lambda-kd 1, on the filter's foreground)"),
}

# dataset -> recipe -> overrides: the only per-dataset loss defaults. voc: CIRKD's
# train_scripts/train_cirkd/voc/*.sh; cirkdv2: scripts/train_cirkdv2/<dataset>/deeplabv3_resnet18.sh (voc, which
# has no ResNet-18 row: its four MobileNetV3 scripts, all --lambda-fitnet 10); synthetic: chosen by the tuning
# protocol (python -m frkd.compare --tune: every recipe's weights × {0.03, 0.1, 0.3, 1, 3}, or calibrated at
# ρ ∈ {0.3, 1, 3} shared or per term, on seeds 100-102; benchmark v8; docs/method.md "Tuning protocol").
CIRKDV2_SCRIPT = {"lambda_minibatch_channel": 1.0, "lambda_memory_channel": 0.1, "lambda_channel_kd": 100.0}
DATASET_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "voc": {"cirkd": {"lambda_memory_pixel": 0.01, "lambda_memory_region": 0.01},
            "cirkdv2": {**CIRKDV2_SCRIPT, "lambda_fitnet": 10.0}},
    "cityscapes": {"cirkdv2": {**CIRKDV2_SCRIPT, "lambda_fitnet": 1.0}},
    "ade20k": {"cirkdv2": {**CIRKDV2_SCRIPT, "lambda_fitnet": 1.0}},
    "coco_stuff_164k": {"cirkdv2": {**CIRKDV2_SCRIPT, "lambda_fitnet": 10.0}},
    "synthetic": {
        "kd": {"lambda_kd": 0.03},                                                                 # × 0.03
        "cwd": {"lambda_kd": 0.1, "lambda_cwd_fea": 5.0, "lambda_cwd_logit": 0.3, "lambda_adv": 1e-04,
                "d_width": 8},                                                                     # × 0.1
        "ifvd": {"lambda_kd": 0.03, "lambda_ifv": 0.6, "lambda_adv": 3e-05, "d_width": 8},         # × 0.03
        "cirkd": {"lambda_kd": 0.03, "lambda_minibatch_pixel": 0.03, "lambda_memory_pixel": 0.003,
                  "lambda_memory_region": 0.003,                                                   # × 0.03
                  # CIRKD's banks (20 000 / 2 000 per class) would still hold mostly their random initial
                  # vectors when a run ends (≈ 75 pixels and 5 regions per object class and
                  # iteration here); these fill in its first 13-21 iterations. Negatives ÷ 8 (16×16 pixels per image)
                  "pixel_memory_size": 1000, "region_memory_size": 100, "pixel_contrast_size": 512,
                  "region_contrast_size": 128},
    },
}

# dataset -> recipe -> gradient ratio ρ of the engine's calibration (frkd.engine, --distill-grad-ratio):
# each distillation term is scaled once so that its gradient on the student feature starts at ρ/n of
# the task loss's. Off (0) unless listed. Synthetic: chosen by the tuning protocol (docs/method.md).
GRAD_RATIO_DEFAULTS: dict[str, dict[str, float]] = {"synthetic": {"fitnet": 3.0, "frkd": 0.3}}  # CIRKD's weights
# dataset -> recipe -> the best setting the tuning found with calibration the other way round from the
# default ({"options": loss options, "grad_ratio": ρ, 0 = off}), for the benchmark's ablation row that
# switches calibration (frkd.benchmark: "frkd-no-calibration" or "frkd-calibrated").
TUNED_OTHER_CALIBRATION: dict[str, dict[str, dict[str, Any]]] = {
    "synthetic": {"frkd": {"options": {"lambda_feat": 0.03, "lambda_intra": 0.6, "lambda_inter": 0.6, "lambda_kd": 0.03},
                           "grad_ratio": 0.0}},  # × 0.03, no calibration
}


def check_method(method: str) -> None:
    if method not in RECIPES:
        raise ValueError(f"unknown loss recipe {method!r}; expected one of {', '.join(RECIPES)}")


def recipe_options(method: str, dataset: str | None = None) -> dict[str, Any]:
    """The recipe's own options over its dataset overrides (only what differs from OPTION_DEFAULTS)."""
    check_method(method)
    return {**RECIPES[method][0], **DATASET_DEFAULTS.get(dataset, {}).get(method, {})}


def resolved_loss_options(method: str, options: dict[str, Any], dataset: str | None = None) -> dict[str, Any]:
    """Every option (term weights included) with its effective value for ``method`` on ``dataset``
    given the ``options`` the user set; raises ValueError naming an unknown option."""
    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown loss option(s) {', '.join(unknown)}; expected some of {', '.join(OPTION_DEFAULTS)}")
    return {**OPTION_DEFAULTS, **recipe_options(method, dataset), **options}
