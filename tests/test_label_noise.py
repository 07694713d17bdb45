"""Noisy training labels of the synthetic dataset (--label-noise): a fixed fraction of the maps, made
from the data seed alone, only eroded/dilated boundaries and look-alike swaps; images and the clean
generator unchanged; validation refuses noise."""
import hashlib

import numpy as np
import pytest

from frkd.data.synthetic import IGNORE, SyntheticSegmentation, look_alike, noisy_label, noisy_pixel_fraction

SIZE = (48, 48)


def dataset(noise, seed=0, length=20):
    return SyntheticSegmentation(None, "train", num_classes=7, length=length, crop_size=SIZE, train=True, seed=seed,
                                 label_noise=noise)


def test_the_clean_generator_is_unchanged():
    """The clean maps and images of data seed 0 hash as before the noise option existed (benchmark v8: the red,
    blue, green pairs of 70c73ac; the generator before v8 hashed 361ca3947ece828b)."""
    digest = hashlib.sha256()
    for i in range(20):
        image, label = dataset(0.0).load_pair(i)
        digest.update(np.asarray(image).tobytes() + label.tobytes())
    assert digest.hexdigest()[:16] == "e228415eecfa0a9b"


def test_a_fixed_fraction_of_maps_is_noisy_and_the_rest_is_clean():
    clean, noisy = dataset(0.0), dataset(0.25)
    assert len(noisy.noisy) == 5
    changed = []
    for i in range(len(clean)):
        image_c, label_c = clean.load_pair(i)
        image_n, label_n = noisy.load_pair(i)
        assert np.array_equal(np.asarray(image_c), np.asarray(image_n))
        assert np.array_equal(label_n == IGNORE, label_c == IGNORE)  # ignore pixels stay ignored, none added
        if not np.array_equal(label_c, label_n):
            changed.append(i)
    assert set(changed) <= noisy.noisy and len(changed) >= 4
    assert 0 < noisy_pixel_fraction(noisy) < 0.5 and noisy_pixel_fraction(clean) == 0


def test_the_noise_is_a_function_of_the_data_seed():
    a, b, other = dataset(0.5), dataset(0.5), dataset(0.5, seed=1)
    assert a.noisy == b.noisy and a.noisy != other.noisy
    for i in a.noisy:
        assert np.array_equal(a.load_pair(i)[1], b.load_pair(i)[1])


def test_noisy_labels_only_erode_dilate_or_swap_with_the_look_alike():
    label = np.zeros((20, 20), np.uint8)
    label[5:15, 5:15] = 3
    label[4, 4:16] = label[15, 4:16] = label[4:16, 4] = label[4:16, 15] = IGNORE
    for seed in range(20):
        noisy = noisy_label(label, np.random.default_rng(seed), 7)
        values = set(np.unique(noisy).tolist())
        assert values <= {0, 3, look_alike(3), IGNORE}
        objects, was = (noisy != 0) & (noisy != IGNORE), label == 3
        assert (objects.sum() < was.sum()) != (objects.sum() > was.sum())  # eroded or dilated, never unchanged
    assert look_alike(1) == 2 and look_alike(2) == 1 and look_alike(6) == 5


def test_validation_labels_cannot_be_noisy():
    with pytest.raises(ValueError, match="label_noise"):
        SyntheticSegmentation(None, "val", num_classes=7, crop_size=SIZE, train=False, label_noise=0.1)


def test_the_flag_reaches_the_training_set_only(tmp_path):
    from frkd.cli import parse_config
    from frkd.config import ConfigError, validate
    from frkd.pipeline import build_datasets

    config = parse_config(["--label-noise", "0.5", "--out-dir", str(tmp_path)])[0].replace(
        train_length=8, val_length=4, crop_size=SIZE)
    train, val = build_datasets(config)
    assert len(train.noisy) == 4 and val.label_noise == 0 and not val.noisy
    with pytest.raises(ConfigError, match="^--label-noise: expected a finite number >= 0 and <= 1, got 1.5$"):
        validate(config.replace(label_noise=1.5))
