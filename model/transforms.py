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
    """Upright 8-bit RGB: applies EXIF orientation, flattens transparency onto `background`.

    Transparency is an alpha channel, or one colour marked transparent (a palette
    entry, or a PNG's grey level or RGB colour); both come out as `background`, as
    a browser shows them. Embedded colour profiles are not applied: pixels are read
    as sRGB, as torchvision's loaders and COCO training read them.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in HIGH_DEPTH_GREY:
        image = _grey_to_8_bit(image)
    elif "transparency" in image.info and image.mode in ("P", "L", "RGB"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB") if image.mode != "RGB" else image


HIGH_DEPTH_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _grey_to_8_bit(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit "L" ("LA" when one grey level is marked transparent).

    The scale is the format's, not the picture's: 16-bit levels span 0..65535, so a
    dark 16-bit scan stays dark (a 32-bit picture beyond 16 bits is scaled by its
    largest value), and float levels span 0..1 (or 0..255 when any value is above 1).
    """
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    largest = float(values.max(initial=0.0))
    if image.mode == "F":
        full_scale = 1.0 if largest <= 1.0 else 255.0
    else:
        full_scale = max(65535.0, largest)
    grey = Image.fromarray(np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8), mode="L")
    transparent = image.info.get("transparency")
    if isinstance(transparent, (int, float)) and not isinstance(transparent, bool):
        alpha = Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8), mode="L")
        return Image.merge("LA", (grey, alpha))
    return grey


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
