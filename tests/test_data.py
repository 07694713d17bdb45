"""frkd.data: Cityscapes/VOC layouts on disk, label mapping, augmentation, determinism, bad files."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from frkd.data import build_dataset
from frkd.data.synthetic import OBJECT_COLOURS, PRETEXT_SHAPES, SHAPES, TEXTURES, generate_scene, scene_rng
from frkd.data.transforms import IMAGENET_MEAN, IMAGENET_STD

# Cityscapes label id -> train id, as listed in cityscapesScripts' labels.py (written out here)
CITYSCAPES_ID_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                          24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
H, W = 12, 16


def _rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _normalised(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((rgb / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)).float()


def _write_cityscapes(root, split="train", label_ids=None, train_ids=None, city="aachen", stem="aachen_000000_000019"):
    image_dir = root / "leftImg8bit" / split / city
    label_dir = root / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(0)).save(image_dir / f"{stem}_leftImg8bit.png")
    if label_ids is not None:
        Image.fromarray(label_ids.astype(np.uint8)).save(label_dir / f"{stem}_gtFine_labelIds.png")
    if train_ids is not None:
        Image.fromarray(train_ids.astype(np.uint8)).save(label_dir / f"{stem}_gtFine_labelTrainIds.png")
    return image_dir / f"{stem}_leftImg8bit.png", label_dir


def _all_label_ids() -> np.ndarray:
    """H×W map cycling through every Cityscapes id 0..33 and a few unused ones."""
    values = np.array(list(range(34)) + [250, 255], dtype=np.uint8)
    return np.resize(values, (H, W))


def _voc_palette_png(indices: np.ndarray, path) -> None:
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([c for i in range(256) for c in ((i * 37) % 256, (i * 91) % 256, (i * 151) % 256)])
    image.save(path)


def _write_voc(base, ids=("2007_000032", "2008_000001"), aug=False, split="train"):
    root = base / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    labels = {}
    for i, image_id in enumerate(ids):
        Image.fromarray(_rgb(i)).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        label = np.random.default_rng(100 + i).integers(0, 21, (H, W)).astype(np.uint8)
        label[0, :] = 255
        _voc_palette_png(label, root / "SegmentationClass" / f"{image_id}.png")
        if aug:
            label = (label + 1) % 21
            Image.fromarray(label).save(root / "SegmentationClassAug" / f"{image_id}.png")
        labels[image_id] = label
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root, labels


# ---------------------------------------------------------------- Cityscapes


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    raw = _all_label_ids()
    image_path, _ = _write_cityscapes(tmp_path, "val", label_ids=raw)
    ds = build_dataset("cityscapes", str(tmp_path), "val", crop_size=8, train=False)
    assert len(ds) == 1 and ds.num_classes == 19 and len(ds.class_names) == 19
    image, label = ds[0]
    expected = np.vectorize(lambda v: CITYSCAPES_ID_TO_TRAIN.get(int(v), 255))(raw)
    assert label.dtype == torch.int64 and image.dtype == torch.float32
    assert torch.equal(label, torch.from_numpy(expected).long())
    torch.testing.assert_close(image, _normalised(np.asarray(Image.open(image_path))))


def test_cityscapes_prefers_train_ids_when_both_exist(tmp_path):
    train_ids = np.random.default_rng(3).integers(0, 19, (H, W)).astype(np.uint8)
    _write_cityscapes(tmp_path, label_ids=_all_label_ids(), train_ids=train_ids)
    _, label = build_dataset("cityscapes", str(tmp_path), "train", crop_size=8, train=False)[0]
    assert torch.equal(label, torch.from_numpy(train_ids).long())


def test_cityscapes_missing_label_is_named(tmp_path):
    _write_cityscapes(tmp_path)
    with pytest.raises(FileNotFoundError, match="aachen_000000_000019_gtFine_labelIds.png"):
        build_dataset("cityscapes", str(tmp_path), "train", crop_size=8, train=False)


def test_cityscapes_empty_split_is_an_error(tmp_path):
    (tmp_path / "leftImg8bit" / "val" / "lindau").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty"):
        build_dataset("cityscapes", str(tmp_path), "val", crop_size=8, train=False)


def test_cityscapes_train_ids_out_of_range_are_named(tmp_path):
    bad = np.zeros((H, W), np.uint8)
    bad[2, 3] = 19
    _, label_dir = _write_cityscapes(tmp_path, train_ids=bad)
    ds = build_dataset("cityscapes", str(tmp_path), "train", crop_size=8, train=False)
    with pytest.raises(ValueError, match=r"labelTrainIds\.png: values \[19\] are outside \[0, 19\)"):
        ds[0]


def test_cityscapes_label_size_mismatch_names_both_files(tmp_path):
    image_path, _ = _write_cityscapes(tmp_path, label_ids=np.zeros((H + 1, W), np.uint8))
    ds = build_dataset("cityscapes", str(tmp_path), "train", crop_size=8, train=False)
    with pytest.raises(ValueError, match="labelIds.png is") as info:
        ds[0]
    assert str(image_path) in str(info.value)


def test_corrupt_image_is_named(tmp_path):
    image_path, _ = _write_cityscapes(tmp_path, label_ids=_all_label_ids())
    image_path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ds = build_dataset("cityscapes", str(tmp_path), "train", crop_size=8, train=False)
    with pytest.raises(ValueError, match=f"image {image_path}: cannot decode"):
        ds[0]


# ---------------------------------------------------------------- VOC


@pytest.mark.parametrize("level", ["VOC2012", "VOCdevkit", "parent"])
def test_voc_palette_labels_and_root_levels(tmp_path, level):
    root, labels = _write_voc(tmp_path)
    given = {"VOC2012": root, "VOCdevkit": root.parent, "parent": tmp_path}[level]
    ds = build_dataset("voc", str(given), "train", crop_size=8, train=False)
    assert len(ds) == 2 and ds.num_classes == 21 and ds.class_names[0] == "background"
    image, label = ds[1]
    assert torch.equal(label, torch.from_numpy(labels["2008_000001"]).long())
    assert image.shape == (3, H, W)


def test_voc_prefers_augmented_index_labels(tmp_path):
    _, labels = _write_voc(tmp_path, aug=True)
    _, label = build_dataset("voc", str(tmp_path), "train", crop_size=8, train=False)[0]
    assert torch.equal(label, torch.from_numpy(labels["2007_000032"]).long())


def test_voc_two_path_list_lines(tmp_path):
    root, labels = _write_voc(tmp_path, aug=True)
    (root / "ImageSets/Segmentation/train_aug.txt").write_text(
        "/JPEGImages/2008_000001.jpg /SegmentationClassAug/2008_000001.png\n")
    ds = build_dataset("voc", str(root), "train_aug", crop_size=8, train=False)
    assert len(ds) == 1 and torch.equal(ds[0][1], torch.from_numpy(labels["2008_000001"]).long())


def test_voc_rgb_label_is_a_clear_error(tmp_path):
    root, _ = _write_voc(tmp_path)
    Image.fromarray(_rgb(5)).save(root / "SegmentationClass" / "2007_000032.png")
    ds = build_dataset("voc", str(root), "train", crop_size=8, train=False)
    with pytest.raises(ValueError, match=r"2007_000032.png: mode 'RGB' is not a single-channel"):
        ds[0]


def test_voc_label_values_out_of_range_are_named(tmp_path):
    root, _ = _write_voc(tmp_path)
    bad = np.zeros((H, W), np.uint8)
    bad[1, 1], bad[2, 2] = 21, 40
    _voc_palette_png(bad, root / "SegmentationClass" / "2008_000001.png")
    ds = build_dataset("voc", str(root), "train", crop_size=8, train=False)
    ds[0]
    with pytest.raises(ValueError, match=r"2008_000001.png: values \[21, 40\] are outside \[0, 21\)"):
        ds[1]


def test_voc_missing_image_is_named(tmp_path):
    root, _ = _write_voc(tmp_path)
    (root / "JPEGImages" / "2008_000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="2008_000001.jpg"):
        build_dataset("voc", str(root), "train", crop_size=8, train=False)


def test_voc_truncated_jpeg_is_named(tmp_path):
    root, _ = _write_voc(tmp_path)
    path = root / "JPEGImages" / "2007_000032.jpg"
    path.write_bytes(path.read_bytes()[:200])
    ds = build_dataset("voc", str(root), "train", crop_size=8, train=False)
    with pytest.raises(ValueError, match="2007_000032.jpg: cannot decode"):
        ds[0]


def test_voc_empty_and_missing_split_lists(tmp_path):
    root, _ = _write_voc(tmp_path)
    (root / "ImageSets/Segmentation/val.txt").write_text("\n\n")
    with pytest.raises(ValueError, match=r"val.txt is empty"):
        build_dataset("voc", str(root), "val", crop_size=8, train=False)
    with pytest.raises(FileNotFoundError, match=r"test.txt"):
        build_dataset("voc", str(root), "test", crop_size=8, train=False)


# ---------------------------------------------------------------- augmentation


def test_train_crops_have_the_crop_size_and_valid_labels(tmp_path):
    _, labels = _write_voc(tmp_path)
    ds = build_dataset("voc", str(tmp_path), "train", crop_size=(10, 14), train=True)
    ds.set_epoch(0)
    for index in range(len(ds)):
        image, label = ds[index]
        assert image.shape == (3, 10, 14) and label.shape == (10, 14)
        kept = label[label != 255]
        assert ((kept >= 0) & (kept < 21)).all()


def test_augmented_labels_stay_aligned_with_the_image(tmp_path):
    # left 5 columns red (class 1), the rest blue (class 2): an asymmetric layout shows flips
    image_dir = tmp_path / "leftImg8bit" / "train" / "bonn"
    label_dir = tmp_path / "gtFine" / "train" / "bonn"
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :5, 0], rgb[:, 5:, 2] = 255, 255
    train_ids = np.full((H, W), 2, np.uint8)
    train_ids[:, :5] = 1
    Image.fromarray(rgb).save(image_dir / "bonn_000000_000000_leftImg8bit.png")
    Image.fromarray(train_ids).save(label_dir / "bonn_000000_000000_gtFine_labelTrainIds.png")
    ds = build_dataset("cityscapes", str(tmp_path), "train", crop_size=(10, 12), train=True)
    flipped = 0
    for epoch in range(12):
        ds.set_epoch(epoch)
        image, label = ds[0]
        redder = image[0] > image[2]
        for k, want_red in ((1, True), (2, False)):
            region = label == k
            if region.any():
                assert (redder[region] == want_red).float().mean() > 0.9
        columns = (label == 1).any(0).nonzero()
        flipped += bool(len(columns)) and columns.max().item() == label.shape[1] - 1
    assert flipped > 0


def test_padding_is_zero_image_and_ignore_label():
    # 8×8 images scaled by at most 2 never fill a 40×40 crop
    ds = build_dataset("synthetic", None, "train", crop_size=40, image_size=8, train=True, length=4)
    ds.set_epoch(1)
    for index in range(len(ds)):
        image, label = ds[index]
        padded = (image == 0).all(0)
        assert padded.sum() >= 40 * 40 - 16 * 16
        assert (label[padded] == 255).all()


def test_val_returns_the_full_image_or_resizes_it(tmp_path):
    _write_voc(tmp_path)
    full = build_dataset("voc", str(tmp_path), "train", crop_size=4, train=False)
    resized = build_dataset("voc", str(tmp_path), "train", crop_size=4, train=False, resize=(6, 8))
    assert full[0][0].shape == (3, H, W)
    image, label = resized[0]
    assert image.shape == (3, 6, 8) and label.shape == (6, 8)
    assert set(label.unique().tolist()) <= set(full[0][1].unique().tolist())


def test_augmentation_is_deterministic_per_seed_epoch_and_index():
    def sample(seed, epoch, index):
        ds = build_dataset("synthetic", None, "train", crop_size=24, train=True, seed=seed, length=8)
        ds.set_epoch(epoch)
        return ds[index]

    first = sample(0, 0, 3)
    for other in (sample(0, 0, 3),):
        assert torch.equal(first[0], other[0]) and torch.equal(first[1], other[1])
    for other in (sample(0, 1, 3), sample(1, 0, 3), sample(0, 0, 4)):
        assert not torch.equal(first[0], other[0])


def test_set_epoch_makes_results_independent_of_workers():
    ds = build_dataset("synthetic", None, "train", crop_size=16, train=True, length=6)
    ds.set_epoch(2)
    batches = [torch.cat([x for x, _ in DataLoader(ds, batch_size=2, num_workers=n)]) for n in (0, 2)]
    assert torch.equal(batches[0], batches[1])


def test_without_set_epoch_torch_seed_drives_workers():
    ds = build_dataset("synthetic", None, "train", crop_size=16, train=True, length=4)

    def run():
        torch.manual_seed(7)
        return torch.cat([x for x, _ in DataLoader(ds, batch_size=2, num_workers=2)])

    first, second = run(), run()
    assert torch.equal(first, second)
    assert not torch.equal(first, torch.cat([x for x, _ in DataLoader(ds, batch_size=2, num_workers=2)]))


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_split_dependent():
    def make(seed, split):
        return build_dataset("synthetic", None, split, crop_size=(24, 32), train=False, seed=seed)

    a, b = make(0, "train")[5], make(0, "train")[5]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 24, 32) and a[1].shape == (24, 32)
    assert not torch.equal(a[0], make(1, "train")[5][0])
    assert not torch.equal(a[0], make(0, "val")[5][0])
    assert not torch.equal(a[0], make(0, "train")[6][0])


def test_synthetic_cached_scenes_equal_fresh_ones_and_stay_unchanged():
    ds = build_dataset("synthetic", None, "train", crop_size=(24, 32), train=True, seed=3, length=4)
    ds.set_epoch(0)  # augmentation fixed by (seed, epoch, index)
    first = [ds[i] for i in range(4)]  # fills the cache
    for index, (image, label) in enumerate(first):
        fresh = generate_scene(scene_rng(3, "train", index), 24, 32, ds.num_classes)
        cached_image, cached_label = ds.load_pair(index)
        assert np.array_equal(np.asarray(cached_image), fresh.image) and np.array_equal(cached_label, fresh.label)
        assert not cached_label.flags.writeable
        again = ds[index]  # same (seed, index): same augmentation, from the cached scene
        assert torch.equal(image, again[0]) and torch.equal(label, again[1])
    big = build_dataset("synthetic", None, "train", crop_size=(24, 32), image_size=(512, 512), train=False,
                        length=1000)
    big.load_pair(0)
    assert not big._scenes  # 1000 scenes of 512² exceed SCENE_CACHE_BYTES: generated each time


def test_synthetic_labels_have_classes_and_thin_ignore_boundaries():
    ds = build_dataset("synthetic", None, "val", crop_size=32, train=False, num_classes=7, length=30)
    assert len(ds) == 30 and ds.num_classes == 7 and len(ds.class_names) == 7
    labels = torch.stack([ds[i][1] for i in range(len(ds))])
    assert set(labels.unique().tolist()) == {0, 1, 2, 3, 4, 5, 6, 255}
    ignored = (labels == 255).float().mean()
    assert 0 < ignored < 0.2


def test_synthetic_classes_are_colour_pairs_of_solid_and_holed_objects():
    # colour names the pair (CLASSES), texture is any; attributes cover exactly the objects; solid objects
    # have no hole (their pixels fill their bounding box's centre), holed ones show the background inside
    from frkd.data.synthetic import CLASSES

    seen = {k: (set(), set()) for k in range(1, len(CLASSES) + 1)}
    for index in range(80):
        scene = generate_scene(scene_rng(0, "train", index), 64, 64, 1 + len(CLASSES))
        ignore = scene.label == 255
        assert ((scene.colour == 255) == ignore).all() and ((scene.texture == 255) == ignore).all()
        objects = (scene.label > 0) & ~ignore
        for attribute in (scene.colour, scene.texture):
            assert ((attribute > 0) == objects)[~ignore].all()
        for k in np.unique(scene.label[objects]):
            seen[k][0].update(np.unique(scene.colour[scene.label == k]).tolist())
            seen[k][1].update(np.unique(scene.texture[scene.label == k]).tolist())
    for k, (colours, textures) in seen.items():
        assert colours == {CLASSES[k - 1][1] + 1}, k
        assert textures == set(range(1, 1 + len(TEXTURES))), k
    pairs = {}
    for outlines, colour in CLASSES:
        pairs.setdefault(colour, []).append(outlines)
    assert all(sorted(p) == [("disc", "square"), ("ring", "frame")] for p in pairs.values())
    assert len(pairs) >= 3 and set(pairs) <= set(range(len(OBJECT_COLOURS)))


def test_pretext_scenes_use_other_shapes_in_any_colour():
    from frkd.data.synthetic import PRETEXT_CLASSES

    colours = set()
    for index in range(40):
        scene = generate_scene(scene_rng(0, "pretext", index), 48, 48, 1 + len(PRETEXT_CLASSES), PRETEXT_CLASSES)
        colours.update(np.unique(scene.colour[(scene.label > 0) & (scene.label != 255)]).tolist())
    assert colours == set(range(1, 1 + len(OBJECT_COLOURS)))


def _naive_boundary_fraction(label: np.ndarray, stride: int = 8) -> tuple[int, int]:
    """Nearest-resize to the stride grid (torch's rule: source index floor(i * H / h)), then the 3×3 rule."""
    h, w = -(-label.shape[0] // stride), -(-label.shape[1] // stride)
    grid = np.array([[label[i * label.shape[0] // h, j * label.shape[1] // w] for j in range(w)] for i in range(h)])
    boundary = valid = 0
    for i in range(h):
        for j in range(w):
            if grid[i, j] == 255:
                continue
            valid += 1
            window = grid[max(0, i - 1):i + 2, max(0, j - 1):j + 2]
            boundary += bool((window != grid[i, j]).any())
    return boundary, valid


def test_synthetic_benchmark_crops_have_few_boundary_cells():
    # the benchmark's design bound (docs/method.md "Synthetic benchmark"): at most 40% of valid stride-8
    # cells of a 128×128 image touch another class or ignore
    totals = np.zeros(2)
    for index in range(100):
        scene = generate_scene(scene_rng(0, "val", index), 128, 128, 7)
        totals += _naive_boundary_fraction(scene.label)
    assert totals[0] / totals[1] <= 0.40


def test_synthetic_shapes_are_mirror_symmetric():
    # h-flips keep classes: each object's mask, centred, equals its mirror image
    from frkd.data.synthetic import _shape_mask

    ys, xs = np.mgrid[0:64, 0:65].astype(np.float32)
    for name in SHAPES + PRETEXT_SHAPES:
        mask = _shape_mask(name, ys, xs, 32.0, 32.0, 20.0)
        assert mask.any() and (mask == mask[:, ::-1]).all(), name


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(name="mnist"), ValueError, "dataset: expected one of"),
    (dict(name="synthetic", split="holdout"), ValueError, "split must be one of"),
    (dict(name="synthetic", num_classes=1), ValueError, "num_classes must be an int"),
    (dict(name="synthetic", length=0), ValueError, "length must be a positive int"),
    (dict(name="synthetic", crop_size=(4, 0)), ValueError, "crop_size: expected a positive int"),
    (dict(name="synthetic", crop_size=None), ValueError, "crop_size: training needs a crop size"),
    (dict(name="voc", root=None), ValueError, "a root folder is required"),
])
def test_bad_arguments_are_named(kwargs, error, message):
    args = dict(name="synthetic", root=None, split="train", crop_size=8, train=True) | kwargs
    with pytest.raises(error, match=message):
        build_dataset(args.pop("name"), args.pop("root"), args.pop("split"), **args)


@pytest.mark.parametrize("holed, solid", [("holed-ellipse", "ellipse"), ("holed-octagon", "octagon")])
def test_holed_pretext_shapes_are_their_solid_shape_minus_a_central_hole(holed, solid):
    from frkd.data.synthetic import _shape_mask

    ys, xs = np.mgrid[0:64, 0:64].astype(np.float32)
    ring, full = _shape_mask(holed, ys, xs, 32.0, 32.0, 20.0), _shape_mask(solid, ys, xs, 32.0, 32.0, 20.0)
    assert not ring[32, 32] and full[32, 32]
    assert (ring <= full).all() and 0.3 < ring.sum() / full.sum() < 0.9
