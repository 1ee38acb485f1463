"""The one preprocessing definition: mode conversion, EXIF orientation, tensor shape."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import IMAGENET_MEAN, IMAGENET_STD
from model.transforms import eval_transform, to_rgb, train_transform


def _exif_rotated_jpeg() -> bytes:
    """A 40x20 image, left half red, stored with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    upright = to_rgb(Image.open(io.BytesIO(_exif_rotated_jpeg())))
    assert upright.size == (20, 40), "rotated to portrait"
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60, "the red half is on top after a clockwise turn"
    assert bottom[2] > 200


def test_modes_become_8_bit_rgb():
    sixteen = Image.new("I;16", (4, 4))
    sixteen.putpixel((0, 0), 65535)
    converted = to_rgb(sixteen)
    assert converted.mode == "RGB" and converted.getpixel((0, 0)) == (255, 255, 255)
    assert converted.getpixel((1, 1)) == (0, 0, 0)
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))  # fully transparent red
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255), "transparent pixels go on a white background"
    for mode in ("L", "LA", "P", "CMYK", "1", "F"):
        assert to_rgb(Image.new(mode, (3, 3))).mode == "RGB"


def test_eval_transform_gives_normalised_square_tensors():
    transform = eval_transform(image_size=48, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    tensor = transform(Image.new("RGB", (640, 480), (124, 116, 104)))
    assert tensor.shape == (3, 48, 48)
    assert tensor.abs().max() < 0.05, "the ImageNet mean colour normalises to about zero"


def test_train_transform_without_augmentation_is_the_eval_transform():
    image = Image.new("RGB", (64, 64), (10, 200, 30))
    plain = train_transform(image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=False)
    evaluation = eval_transform(image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert torch.equal(plain(image), evaluation(image))
    augmented = train_transform(image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert augmented(image).shape == (3, 32, 32)


def _reopened(image: Image.Image, fmt: str = "PNG", **save) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _first_pixel(image: Image.Image) -> tuple[int, ...]:
    return to_rgb(image).getpixel((0, 0))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_keeps_its_levels_on_the_16_bit_scale(fmt):
    """Half of 65535 is mid grey and 200 of 65535 nearly black, whatever else the picture holds."""
    levels = np.full((4, 4), 32768, np.uint16)
    levels[0, 1] = 200
    image = _reopened(Image.fromarray(levels), fmt)
    assert image.mode.startswith("I;16")
    rgb = to_rgb(image)
    assert rgb.getpixel((0, 0)) == (128, 128, 128) and rgb.getpixel((1, 0)) == (1, 1, 1)
    assert _first_pixel(_reopened(Image.fromarray(np.full((4, 4), 200, np.uint16)), fmt)) == (1, 1, 1)


def test_float_grey_in_0_to_1_is_scaled_to_8_bits():
    assert _first_pixel(_reopened(Image.fromarray(np.full((4, 4), 0.5, np.float32)), "TIFF")) == (128, 128, 128)


@pytest.mark.parametrize("mode, colour", [("RGB", (0, 255, 0)), ("L", 7)])
def test_a_colour_marked_transparent_becomes_the_background(mode, colour):
    image = Image.new(mode, (4, 4), colour)
    image.putpixel((1, 0), (9, 9, 9) if mode == "RGB" else 9)
    rgb = to_rgb(_reopened(image, transparency=colour), background=(10, 20, 30))
    assert rgb.getpixel((0, 0)) == (10, 20, 30)
    assert rgb.getpixel((1, 0)) == (9, 9, 9)
