"""Image/label transforms: ImageNet normalisation, train augmentation, val resize.

Images are PIL RGB, labels PIL "L" (values in [0, K) ∪ {ignore label, 255 unless a dataset says otherwise}); outputs are a float32 3×h×w
normalised image tensor and an int64 h×w label tensor.
"""
import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IGNORE_INDEX = 255
SCALE_RANGE = (0.5, 2.0)


def normalise(image: Image.Image) -> torch.Tensor:
    """PIL RGB h×w -> float32 3×h×w, (x/255 - mean) / std."""
    array = (np.asarray(image, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def label_tensor(label: Image.Image) -> torch.Tensor:
    """PIL "L" h×w -> int64 h×w."""
    return torch.from_numpy(np.asarray(label, dtype=np.int64).copy())


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high] (both inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())


def random_scale_crop_flip(
    image: Image.Image, label: Image.Image, crop_size: tuple[int, int], generator: torch.Generator,
    scale_range: tuple[float, float] = SCALE_RANGE, ignore_label: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale, pad (image 0 after normalisation = mean, label ``ignore_label``), random crop, h-flip.

    Only the crop window is resampled (PIL ``resize(box=...)`` on the sampling grid of the
    full rescale, equal to it up to PIL's rounding), so the cost follows the crop, not the
    scaled image. Image and label use the same box, so they stay aligned.
    Returns (3×H×W float32, H×W int64) with (H, W) = crop_size.
    """
    crop_h, crop_w = crop_size
    width, height = image.size
    scale = _uniform(*scale_range, generator)
    scaled_h, scaled_w = max(1, round(height * scale)), max(1, round(width * scale))
    # top-left of the crop in scaled coordinates; negative when the image is padded there
    top = _randint(min(0, scaled_h - crop_h), max(0, scaled_h - crop_h), generator)
    left = _randint(min(0, scaled_w - crop_w), max(0, scaled_w - crop_w), generator)
    flip = torch.rand((), generator=generator).item() < 0.5

    y0, y1 = max(top, 0), min(top + crop_h, scaled_h)
    x0, x1 = max(left, 0), min(left + crop_w, scaled_w)
    box = (x0 * width / scaled_w, y0 * height / scaled_h, x1 * width / scaled_w, y1 * height / scaled_h)
    size = (x1 - x0, y1 - y0)
    out_image = torch.zeros(3, crop_h, crop_w)
    out_label = torch.full((crop_h, crop_w), ignore_label, dtype=torch.int64)
    rows = slice(y0 - top, y1 - top)
    cols = slice(x0 - left, x1 - left)
    out_image[:, rows, cols] = normalise(image.resize(size, Image.Resampling.BILINEAR, box=box))
    out_label[rows, cols] = label_tensor(label.resize(size, Image.Resampling.NEAREST, box=box))
    if flip:
        out_image, out_label = out_image.flip(-1), out_label.flip(-1)
    return out_image, out_label


def val_transform(
    image: Image.Image, label: Image.Image, resize: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """No augmentation; optionally resize to (H, W) (image bilinear, label nearest)."""
    if resize is not None:
        height, width = resize
        image = image.resize((width, height), Image.Resampling.BILINEAR)
        label = label.resize((width, height), Image.Resampling.NEAREST)
    return normalise(image), label_tensor(label)
