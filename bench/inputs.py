"""What the benchmark feeds the pipelines: a COCO-sized random model and 640x480 JPEGs.

Speed does not depend on the weights, so the model is random; its shapes are
those of a COCO captioner (about 10,000 words, embedding 256, LSTM 512,
224x224 input). It is written in the export format `training.export` uses, so
the handler and the `.mar` load it exactly as they load a trained model.

The images are photo-like (smooth colour fields, shapes, grain), so that JPEG
decoding costs what it costs on real photos: file sizes land in the range of
COCO's 640x480 images, unlike flat synthetic images or pure noise.
"""

from __future__ import annotations

import io
import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from model.captioner import Captioner
from model.config import CaptionerConfig
from model.vocabulary import SPECIAL_TOKENS, Vocabulary
from model.export_format import export_captioner

SYLLABLES = "ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu ra re ri ro ru sa se si so su ta te ti to tu".split()


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide how long a forward pass takes."""

    vocab_size: int
    embed_size: int
    hidden_size: int
    image_size: int
    max_length: int = 20


COCO_SIZED = ModelShape(vocab_size=10_000, embed_size=256, hidden_size=512, image_size=224)
TINY = ModelShape(vocab_size=40, embed_size=16, hidden_size=32, image_size=32)
MODEL_SHAPES = {"coco": COCO_SIZED, "tiny": TINY}


def made_up_words(count: int) -> list[str]:
    """`count` distinct pronounceable non-words, always the same ones."""
    words = []
    for length in itertools.count(2):
        for combo in itertools.product(SYLLABLES, repeat=length):
            words.append("".join(combo))
            if len(words) == count:
                return words
    raise AssertionError("unreachable")


def write_random_export(shape: ModelShape, out_dir: Path | str, seed: int = 0) -> Path:
    """A random-weight captioner of `shape`, exported as config.json + vocab.json + model.safetensors."""
    torch.manual_seed(seed)
    vocab = Vocabulary(made_up_words(shape.vocab_size - len(SPECIAL_TOKENS)))
    config = CaptionerConfig(
        vocab_size=len(vocab), embed_size=shape.embed_size, hidden_size=shape.hidden_size,
        image_size=shape.image_size, max_length=shape.max_length,
    )
    model = Captioner(config).eval()
    return export_captioner(model, vocab, out_dir)


def photo_like_jpeg(seed: int, width: int = 640, height: int = 480, quality: int = 90) -> bytes:
    """One JPEG with smooth gradients, a few blurred shapes and sensor-like grain."""
    rng = random.Random(seed)
    array_rng = np.random.default_rng(seed)
    # A low-resolution random colour field, upscaled: smooth like sky, walls, grass.
    field = array_rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(field).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(4, 9)):
        x, y = rng.randrange(width), rng.randrange(height)
        w, h = rng.randint(30, width // 2), rng.randint(30, height // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        box = (x - w // 2, y - h // 2, x + w // 2, y + h // 2)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    grain = array_rng.normal(0, 6, size=(height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def jpeg_set(count: int, seed: int = 0) -> list[bytes]:
    """`count` different 640x480 JPEGs; requests cycle through them."""
    return [photo_like_jpeg(seed + i) for i in range(count)]


CALIBRATION_IMAGES = 16


def write_calibration_images(export_dir: Path | str, count: int = CALIBRATION_IMAGES, seed: int = 10_000) -> Path:
    """JPEGs in the export's `calibration/` folder, which int8 workers calibrate on (not the measured images)."""
    folder = Path(export_dir) / "calibration"
    folder.mkdir(parents=True, exist_ok=True)
    for i, jpeg in enumerate(jpeg_set(count, seed=seed)):
        (folder / f"{i:03d}.jpg").write_bytes(jpeg)
    return folder
