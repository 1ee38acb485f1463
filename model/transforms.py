"""The one definition of image preprocessing, shared by training, evaluation and serving.

`to_rgb` normalises whatever PIL opened (EXIF rotation, palette, alpha, CMYK,
16-bit) into an upright 8-bit RGB image; `eval_transform` turns that into the
tensor the encoder expects. Training's `train_transform` adds augmentation on
top of the same resize and normalisation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Upright 8-bit RGB: applies EXIF orientation, flattens alpha onto `background`."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit integer greyscale: scale to 8 bits instead of clipping to white.
        array = np.asarray(image, dtype=np.float32)
        scale = 255.0 / max(float(array.max()), 255.0)
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = image.convert("L")
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB") if image.mode != "RGB" else image


def _normalize(mean: Sequence[float], std: Sequence[float]) -> list:
    return [T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))]


def eval_transform(*, image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """RGB PIL image -> normalised (3, image_size, image_size) float tensor."""
    return T.Compose([T.Resize((image_size, image_size), antialias=True), *_normalize(mean, std)])


def train_transform(
    *, image_size: int, mean: Sequence[float], std: Sequence[float], augment: bool = True, hflip: bool = False
) -> T.Compose:
    """`eval_transform` plus mild, label-preserving augmentation.

    Colour jitter is left out on purpose (captions name colours), and so is the
    horizontal flip unless asked for (captions may say left and right).
    """
    if not augment:
        return eval_transform(image_size=image_size, mean=mean, std=std)
    steps: list = [
        T.Resize((image_size, image_size), antialias=True),
        T.RandomAffine(degrees=0, translate=(0.04, 0.04), scale=(0.95, 1.05)),
    ]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, *_normalize(mean, std)])


def preprocess_images(images: Sequence[Image.Image], transform: T.Compose) -> torch.Tensor:
    """Convert and stack PIL images into one (B, 3, H, W) batch."""
    return torch.stack([transform(to_rgb(image)) for image in images])
