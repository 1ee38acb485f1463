"""Images that are not coloured-shape scenes, for measuring and testing the domain score.

Nothing is downloaded: the photos are the ones shipped inside installed packages
(scikit-learn's `load_sample_images`: a temple in China and a flower; matplotlib's
sample data: Grace Hopper's portrait), with crops of each, and the rest is
generated here, seeded:

    photo        the three photos, whole and five crops each (corners and centre, half size)
    graphic      matplotlib's logo and a clip-art present (sample data PNGs)
    noise        uniform RGB noise, every pixel on its own
    grain        the same noise drawn at 2.5 times the size, so resizing to the model's input
                 averages it into finer, fainter grain (a dark, noisy photo's sensor noise)
    value_noise  smooth "Perlin-ish" noise: random grids of several sizes, upsampled and summed, in colour
    plaid        crossed sinusoidal stripes of two random colours
    text         lines of random words rendered with PIL on a plain background
    plain        pictures with nothing in them: one random colour, the same with faint grain,
                 or a gradient between two colours (a lens cap, a blank page, an empty wall)

`training/domain_report.py` (the AUROC of the domain score against held-out
scenes) and the tests use the same set, `out_of_domain_images()`.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CANVAS = 128  # the generated set's image size


@dataclass(frozen=True)
class OutOfDomainImage:
    kind: str
    name: str
    image: Image.Image  # RGB


def package_photos() -> dict[str, Image.Image]:
    """The photos shipped in scikit-learn and matplotlib, by name (RGB)."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    photos = {
        name.rsplit("/", 1)[-1]: Image.fromarray(array).convert("RGB")
        for name, array in zip(samples.filenames, samples.images)
    }
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as portrait:
        photos["grace_hopper.jpg"] = portrait.convert("RGB")
    return photos


def _crops(image: Image.Image) -> list[tuple[str, Image.Image]]:
    width, height = image.size
    half_w, half_h = width // 2, height // 2
    boxes = {
        "top-left": (0, 0), "top-right": (width - half_w, 0), "bottom-left": (0, height - half_h),
        "bottom-right": (width - half_w, height - half_h), "centre": ((width - half_w) // 2, (height - half_h) // 2),
    }
    return [("whole", image)] + [(where, image.crop((x, y, x + half_w, y + half_h))) for where, (x, y) in boxes.items()]


def photos(count: int, rng: random.Random) -> list[tuple[str, Image.Image]]:
    """Every package photo whole and cropped (`count` is ignored: there are as many as there are)."""
    return [(f"{name} {where}", crop) for name, photo in package_photos().items() for where, crop in _crops(photo)]


def graphics(count: int, rng: random.Random) -> list[tuple[str, Image.Image]]:
    """matplotlib's sample PNGs that are drawings: its logo and a clip-art present (on white)."""
    from matplotlib import cbook

    found = []
    for name in ("logo2.png", "Minduka_Present_Blue_Pack.png"):
        with Image.open(cbook.get_sample_data(name, asfileobj=False)) as picture:
            rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        found.append((name, Image.alpha_composite(white, rgba).convert("RGB")))
    return found


def _generator(rng: random.Random) -> np.random.Generator:
    return np.random.default_rng(rng.randrange(2**32))


def _noise(label: str, size: int, count: int, rng: random.Random) -> list[tuple[str, Image.Image]]:
    """`count` images of uniform RGB noise, `size` pixels square, every pixel on its own."""
    return [(f"{label} {i}", Image.fromarray(_generator(rng).integers(0, 256, (size, size, 3), dtype=np.uint8)))
            for i in range(count)]


def uniform_noise(count: int, rng: random.Random) -> list[tuple[str, Image.Image]]:
    return _noise("noise", CANVAS, count, rng)


def grain(count: int, rng: random.Random) -> list[tuple[str, Image.Image]]:
    return _noise("grain", int(CANVAS * 2.5), count, rng)


def value_noise(count: int, rng: random.Random) -> list[tuple[str, Image.Image]]:
    """Octaves of random grids (4, 8, 16, 32 cells), bilinearly upsampled, halved in weight each octave."""
    images = []
    for i in range(count):
        generator = _generator(rng)
        field = np.zeros((CANVAS, CANVAS, 3))
        for octave, cells in enumerate((4, 8, 16, 32)):
            grid = generator.random((cells, cells, 3))
            layer = Image.fromarray((grid * 255).astype(np.uint8)).resize((CANVAS, CANVAS), Image.BILINEAR)
            field += np.asarray(layer, dtype=np.float64) / 255 * 0.5 ** octave
        field = (field - field.min()) / (np.ptp(field) + 1e-9)
        images.append((f"value noise {i}", Image.fromarray((field * 255).astype(np.uint8))))
    return images


def plaid(count: int, rng: random.Random) -> list[tuple[str, Image.Image]]:
    """Horizontal and vertical sine stripes of random periods, mixing two random colours."""
    y, x = np.mgrid[0:CANVAS, 0:CANVAS] / CANVAS
    images = []
    for i in range(count):
        first, second = (np.array([rng.randrange(256) for _ in range(3)], dtype=np.float64) for _ in range(2))
        across = np.sin(2 * np.pi * (x * rng.uniform(2, 12) + rng.random()))
        down = np.sin(2 * np.pi * (y * rng.uniform(2, 12) + rng.random()))
        weight = ((across + down) / 4 + 0.5)[..., None]  # (S, S, 1) in [0, 1]
        images.append((f"plaid {i}", Image.fromarray((weight * first + (1 - weight) * second).astype(np.uint8))))
    return images


def text(count: int, rng: random.Random) -> list[tuple[str, Image.Image]]:
    """Five lines of random lower-case words in PIL's bundled font, dark on a light background."""
    font = ImageFont.load_default(size=14)
    images = []
    for i in range(count):
        shade = rng.randint(200, 255)
        image = Image.new("RGB", (CANVAS, CANVAS), (shade, shade, rng.randint(200, 255)))
        draw = ImageDraw.Draw(image)
        for line in range(5):
            words = " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 7)))
                             for _ in range(3))
            ink = tuple(rng.randint(0, 90) for _ in range(3))
            draw.text((rng.randint(2, 10), 6 + line * 24), words, fill=ink, font=font)
        images.append((f"text {i}", image))
    return images


def plain(count: int, rng: random.Random) -> list[tuple[str, Image.Image]]:
    """In turn: one colour; one colour with faint Gaussian grain (sigma 4); a left-to-right gradient."""
    images = []
    for i in range(count):
        generator = _generator(rng)
        colour = generator.integers(0, 256, 3).astype(np.float64)
        pixels = np.broadcast_to(colour, (CANVAS, CANVAS, 3)).copy()
        if i % 3 == 1:
            pixels += generator.normal(0, 4, pixels.shape)
        elif i % 3 == 2:
            across = np.linspace(0, 1, CANVAS)[None, :, None]
            pixels = pixels * (1 - across) + generator.integers(0, 256, 3) * across
        images.append((f"plain {i}", Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))))
    return images


KINDS: dict[str, Callable[[int, random.Random], list[tuple[str, Image.Image]]]] = {
    "photo": photos, "graphic": graphics, "noise": uniform_noise, "grain": grain, "value_noise": value_noise, "plaid": plaid,
    "text": text, "plain": plain,
}


def out_of_domain_images(per_kind: int = 12, seed: int = 0, kinds: tuple[str, ...] | None = None
                         ) -> list[OutOfDomainImage]:
    """The out-of-domain set: `per_kind` images of each generated kind, every package photo and graphic.

    The same arguments always give the same images.
    """
    unknown = sorted(set(kinds or ()) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown kinds {unknown}; known: {', '.join(KINDS)}")
    found = []
    for kind in kinds or tuple(KINDS):
        rng = random.Random(f"{seed}-{kind}")
        found += [OutOfDomainImage(kind, name, image) for name, image in KINDS[kind](per_kind, rng)]
    return found
