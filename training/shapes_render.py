"""Draws a scene of `training/shapes_world.py` on a randomised background, and encodes it as JPEG or PNG.

Everything a caption does not talk about varies from image to image, so the
model cannot lean on it: the background (white to mid-grey, light tints, linear
and radial gradients, grain, a mild cloudy texture), each object's exact colour
within its named hue, a slight blur, and the file's encoding (JPEG at quality
50..95, or lossless PNG). The colour of an object stays far from the
background's: backgrounds are light and barely saturated, named colours are
saturated.
"""

from __future__ import annotations

import colorsys
import io
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from training.shapes_world import Scene, ShapeObject

# Each named colour as a hue (degrees) and the saturation and value ranges its drawings take.
HUES = {
    "red": (0.0, (0.70, 0.95), (0.70, 0.92)),
    "green": (130.0, (0.65, 0.90), (0.50, 0.75)),
    "blue": (222.0, (0.70, 0.90), (0.70, 0.90)),
    "yellow": (50.0, (0.80, 0.95), (0.88, 0.98)),
    "purple": (282.0, (0.60, 0.85), (0.55, 0.75)),
}


@dataclass(frozen=True)
class RenderRanges:
    """The ranges of everything `render` varies; the tests check images honour them."""

    hue_jitter: float = 8.0  # degrees either way
    grey: tuple[int, int] = (128, 255)  # plain backgrounds, mid-grey to white
    tint_saturation: tuple[float, float] = (0.04, 0.16)
    tint_value: tuple[float, float] = (0.78, 1.0)
    grain: tuple[float, float] = (0.0, 10.0)  # standard deviation, in 0..255 levels
    texture: tuple[float, float] = (0.0, 12.0)  # amplitude of the cloudy texture, in levels
    blur: tuple[float, float] = (0.0, 0.8)  # Gaussian radius in pixels, on some images
    blur_share: float = 0.3
    jpeg_quality: tuple[int, int] = (50, 95)
    png_share: float = 0.2


DEFAULT_RENDER = RenderRanges()
BACKGROUND_STYLES = ("plain", "tint", "linear", "radial")


def named_colour(rng: random.Random, name: str, ranges: RenderRanges = DEFAULT_RENDER) -> tuple[int, int, int]:
    """One drawing's RGB of a named colour: its hue a few degrees either way, saturation and value in range."""
    hue, saturation, value = HUES[name]
    h = ((hue + rng.uniform(-ranges.hue_jitter, ranges.hue_jitter)) % 360) / 360
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(*saturation), rng.uniform(*value))
    return round(r * 255), round(g * 255), round(b * 255)


def _light_colour(rng: random.Random, ranges: RenderRanges) -> np.ndarray:
    if rng.random() < 0.5:
        return np.full(3, rng.randint(*ranges.grey), dtype=np.float32)
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*ranges.tint_saturation), rng.uniform(*ranges.tint_value))
    return np.array([r, g, b], dtype=np.float32) * 255


def background(rng: random.Random, width: int, height: int, ranges: RenderRanges = DEFAULT_RENDER) -> np.ndarray:
    """(H, W, 3) float32 levels: a plain, tinted, linear- or radial-gradient ground, with grain and texture."""
    style = rng.choice(BACKGROUND_STYLES)
    first = _light_colour(rng, ranges)
    if style in ("plain", "tint"):
        ground = np.broadcast_to(first, (height, width, 3)).astype(np.float32)
    else:
        second = _light_colour(rng, ranges)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        if style == "linear":
            angle = rng.uniform(0, 2 * math.pi)
            t = xs * math.cos(angle) + ys * math.sin(angle)
        else:
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            t = np.hypot(xs - cx, ys - cy)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        ground = first + (second - first) * t[..., None]
    texture = rng.uniform(*ranges.texture)
    noise_rng = np.random.default_rng(rng.getrandbits(32))
    if texture > 0:
        coarse = noise_rng.standard_normal((max(2, height // 24), max(2, width // 24), 1)).astype(np.float32)
        cloud = np.asarray(Image.fromarray(coarse[..., 0]).resize((width, height), Image.BICUBIC))[..., None]
        ground = ground + texture * cloud
    grain = rng.uniform(*ranges.grain)
    if grain > 0:
        ground = ground + noise_rng.normal(0, grain, (height, width, 1)).astype(np.float32)
    return ground


def _outline(obj: ShapeObject) -> list[tuple[float, float]] | None:
    """The polygon of a square or triangle (rotated, stretched), or None for a circle."""
    x, y = obj.center
    r = obj.radius
    if obj.shape == "circle":
        return None
    if obj.shape == "square":
        half = r  # the circle of the same radius fits inside it: corners are what tell them apart
        corners = [(-half, -half), (half, -half), (half, half), (-half, half)]
    else:
        corners = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        corners = [(cx, cy + r * 0.15) for cx, cy in corners]  # centre the triangle's mass on the disc
    sx, sy = math.sqrt(obj.stretch), 1 / math.sqrt(obj.stretch)
    turn = math.radians(obj.angle)
    cos, sin = math.cos(turn), math.sin(turn)
    return [(x + (cx * sx) * cos - (cy * sy) * sin, y + (cx * sx) * sin + (cy * sy) * cos) for cx, cy in corners]


def render(scene: Scene, rng: random.Random, ranges: RenderRanges = DEFAULT_RENDER) -> Image.Image:
    """The scene as an RGB image: background, then each object in its colour, then maybe a slight blur."""
    ground = background(rng, scene.width, scene.height, ranges)
    image = Image.fromarray(np.clip(ground, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        colour = named_colour(rng, obj.color, ranges)
        polygon = _outline(obj)
        if polygon is None:
            draw.ellipse(obj.box, fill=colour)
        else:
            draw.polygon(polygon, fill=colour)
    if rng.random() < ranges.blur_share:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(*ranges.blur)))
    return image


def encode(image: Image.Image, rng: random.Random, ranges: RenderRanges = DEFAULT_RENDER) -> tuple[bytes, str]:
    """(file bytes, extension): lossless PNG on some images, JPEG at a random quality on the rest."""
    buffer = io.BytesIO()
    if rng.random() < ranges.png_share:
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "png"
    image.save(buffer, format="JPEG", quality=rng.randint(*ranges.jpeg_quality))
    return buffer.getvalue(), "jpg"
