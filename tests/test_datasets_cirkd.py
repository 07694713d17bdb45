"""CIRKD's other datasets (ADE20K, COCO-Stuff-164k, CamVid) and the folder dataset: each real layout
built tiny on disk, read with its label rule, its layout errors, and 2 iterations + evaluation of
``python -m frkd.train`` with the dataset's class count."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from frkd.config import DATASET_DEFAULTS, ConfigError, build_config, validate
from frkd.data import build_dataset
from test_train import TINY, run_train
from test_user_errors import one_line_error

H, W = 24, 32


def _rgb(seed):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _labels(seed, values):
    """H×W uint8 map cycling through ``values`` in a seeded order (every value occurs)."""
    values = np.asarray(values, dtype=np.uint8)
    return np.resize(np.random.default_rng(seed).permutation(np.resize(values, H * W)), (H, W))


def _write_pairs(image_dir, label_dir, stems, label_values, image_ext=".jpg"):
    """One image and one label per stem; returns {stem: raw label}."""
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    written = {}
    for i, stem in enumerate(stems):
        Image.fromarray(_rgb(i)).save(os.path.join(image_dir, stem + image_ext))
        written[stem] = _labels(i, label_values)
        Image.fromarray(written[stem]).save(os.path.join(label_dir, stem + ".png"))
    return written


def write_ade20k(base, values=range(151)):
    root = base / "ADEChallengeData2016"
    raw = {}
    for split, folder in (("train", "training"), ("val", "validation")):
        raw[split] = _write_pairs(root / "images" / folder, root / "annotations" / folder,
                                  [f"ADE_{split}_{i:08d}" for i in (1, 2)], values)
    return root, raw


def write_coco_stuff(base, values=tuple(range(182)) + (255,)):
    raw = {}
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        raw[split] = _write_pairs(base / "images" / folder, base / "annotations" / folder,
                                  [f"{i:012d}" for i in (9, 25)], values)
    return base, raw


def write_camvid(base, values=range(12)):
    raw = {}
    for split in ("train", "val", "test"):
        raw[split] = _write_pairs(base / split, base / f"{split}annot", [f"0001TP_{i:06d}" for i in (30, 60)],
                                  values, image_ext=".png")
    return base, raw


def write_folder(base, num_classes=4, ignore=255, names=None):
    raw = {}
    for split in ("train", "val"):
        raw[split] = _write_pairs(base / "images" / split, base / "masks" / split, ["a", "b"],
                                  tuple(range(num_classes)) + (ignore,))
    if names is not None:
        (base / "classes.txt").write_text("\n".join(names) + "\n")
    return base, raw


def _label(name, root, split="train", **kw):
    return build_dataset(name, str(root), split, crop_size=8, train=False, **kw)


def test_ade20k_shifts_labels_by_one_and_ignores_zero(tmp_path):
    _, raw = write_ade20k(tmp_path)
    ds = _label("ade20k", tmp_path, "val")  # the folder holding ADEChallengeData2016/ is accepted
    assert ds.num_classes == 150 and len(ds) == 2 and len(ds.class_names) == 150
    stem = sorted(raw["val"])[0]
    expected = raw["val"][stem].astype(np.int64) - 1
    expected[expected < 0] = 255
    assert np.array_equal(ds[0][1].numpy(), expected)
    assert {0, 149, 255} <= set(np.unique(ds[0][1].numpy()).tolist())


def test_coco_stuff_keeps_182_ids_and_255_ignore(tmp_path):
    _, raw = write_coco_stuff(tmp_path)
    ds = _label("coco_stuff_164k", tmp_path)
    assert ds.num_classes == 182 and len(ds.class_names) == 182
    assert np.array_equal(ds[0][1].numpy(), raw["train"][sorted(raw["train"])[0]])


def test_camvid_maps_void_to_ignore(tmp_path):
    _, raw = write_camvid(tmp_path)
    for split in ("train", "val", "test"):
        ds = _label("camvid", tmp_path, split)
        expected = raw[split][sorted(raw[split])[0]].astype(np.int64)
        expected[expected == 11] = 255
        assert ds.num_classes == 11 and np.array_equal(ds[0][1].numpy(), expected)


def test_folder_reads_class_names_and_its_own_ignore_label(tmp_path):
    write_folder(tmp_path, ignore=200, names=["sky", "road", "car", "tree"])
    ds = _label("folder", tmp_path, num_classes=4, ignore_label=200)
    assert ds.class_names == ("sky", "road", "car", "tree") and ds.num_classes == 4
    assert set(np.unique(ds[0][1].numpy()).tolist()) == {0, 1, 2, 3, 200}
    crops = build_dataset("folder", str(tmp_path), "train", crop_size=64, train=True, num_classes=4, ignore_label=200)
    assert crops[0][1].shape == (64, 64) and (crops[0][1] == 200).any() and not (crops[0][1] == 255).any()
    assert _label("folder", write_folder(tmp_path / "plain")[0], num_classes=4).class_names == ("0", "1", "2", "3")


@pytest.mark.parametrize("name, writer, bad, kw", [
    ("ade20k", write_ade20k, 151, {}),
    ("coco_stuff_164k", write_coco_stuff, 182, {}),
    ("camvid", write_camvid, 12, {}),
    ("folder", write_folder, 4, {"num_classes": 4}),
])
def test_a_label_value_outside_the_classes_and_ignore_names_the_file(tmp_path, name, writer, bad, kw):
    root, raw = writer(tmp_path)
    ds = _label(name, tmp_path, **kw)
    label_path = ds.samples[0][1]
    array = np.array(Image.open(label_path))
    array[0, 0] = bad
    Image.fromarray(array).save(label_path)
    with pytest.raises(ValueError, match=rf"label {label_path}: values \[\d+\] are outside"):
        ds[0]


@pytest.mark.parametrize("name, writer, remove, message, kw", [
    ("ade20k", write_ade20k, "ADEChallengeData2016/annotations/validation",
     "ade20k: no label folder {root}/ADEChallengeData2016/annotations/validation", {}),
    ("ade20k", write_ade20k, "ADEChallengeData2016", "ade20k: no images/ folder in {root}", {}),
    ("coco_stuff_164k", write_coco_stuff, "images/val2017", "coco_stuff_164k: no image folder {root}/images/val2017",
     {}),
    ("camvid", write_camvid, "valannot", "camvid: no label folder {root}/valannot", {}),
    ("folder", write_folder, "masks/val/b.png", "label {root}/masks/val/b.png: no such file for image "
     "{root}/images/val/b.jpg", {"num_classes": 4}),
])
def test_a_wrong_layout_names_what_is_missing_and_where(tmp_path, name, writer, remove, message, kw):
    writer(tmp_path)
    target = tmp_path / remove
    if target.is_dir():
        import shutil
        shutil.rmtree(target)
    else:
        target.unlink()
    with pytest.raises((FileNotFoundError, ValueError)) as error:
        _label(name, tmp_path, "val", **kw)
    assert str(error.value) == message.format(root=tmp_path) or message.format(root=tmp_path) in str(error.value)
    assert "\n" not in str(error.value)


def test_folder_classes_file_with_the_wrong_count_is_named(tmp_path):
    write_folder(tmp_path, names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"classes file .*classes.txt: expected 4 names .* found 3"):
        _label("folder", tmp_path, num_classes=4)


def test_folder_needs_num_classes_and_an_ignore_label_of_the_masks(tmp_path):
    write_folder(tmp_path)
    argv = ["--dataset", "folder", "--data", str(tmp_path), "--out-dir", str(tmp_path / "run")]
    assert "--num-classes: expected the number of classes of the folder dataset" in one_line_error(argv)
    line = one_line_error(argv + ["--num-classes", "4", "--ignore-label", "300"])
    assert "--ignore-label: expected a value in 4..255" in line
    line = one_line_error(["--dataset", "ade20k", "--data", str(tmp_path), "--num-classes", "4",
                           "--out-dir", str(tmp_path / "run")])
    assert "--num-classes: applies to --dataset synthetic and folder only (ade20k has 150 fixed classes)" in line


def test_cirkd_script_defaults_fill_unset_flags(tmp_path):
    for name, crop, iterations in (("ade20k", (512, 512), 80000), ("coco_stuff_164k", (512, 512), 80000),
                                   ("camvid", (360, 360), 40000)):
        config = build_config(dataset=name, root=str(tmp_path), out_dir=str(tmp_path / name))
        assert (config.data.crop_size, config.optim.max_iterations, config.optim.batch_size, config.optim.lr,
                config.runtime.eval_mode, config.data.val_batch_size) == (crop, iterations, 16, 0.02, "whole", 1)
        assert config.data.num_classes == DATASET_DEFAULTS[name]["num_classes"]
        validate(config)
    with pytest.raises(ConfigError):
        validate(build_config(dataset="folder", root=str(tmp_path), out_dir=str(tmp_path / "f")))


@pytest.mark.parametrize("name, writer, classes, extra", [
    ("ade20k", write_ade20k, 150, []),
    ("coco_stuff_164k", write_coco_stuff, 182, []),
    ("camvid", write_camvid, 11, []),
    ("folder", write_folder, 4, ["--num-classes", "4"]),
])
def test_each_layout_trains_two_iterations_and_evaluates_with_its_class_count(tmp_path, name, writer, classes, extra):
    writer(tmp_path / "data")
    out = tmp_path / "run"
    code, stdout, stderr = run_train(TINY + extra + [
        "--dataset", name, "--data", str(tmp_path / "data"), "--method", "kd", "--teacher-iterations", "2",
        "--max-iterations", "2", "--val-per-iters", "2", "--save-per-iters", "2", "--val-batch-size", "1",
        "--out-dir", str(out)])
    assert code == 0, stderr
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary["student"]["num_classes"] == classes and len(summary["class_names"]) == classes
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    evals = [r for r in rows if r["phase"] == "student" and "miou" in r]
    assert [r["iteration"] for r in evals] == [2]
    assert len(summary["student_per_class_iou"]) == classes
