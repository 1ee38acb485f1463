"""The second renderer's drawing: backgrounds training never shows, anti-aliased shapes, encodings.

This is its own code on purpose, not `training.shapes_dataset`'s renderer: a held-out set
drawn by the training generator's function shares that function's quirks (how PIL
rasterises its polygons, hard aliased edges, its palette jitter, its backgrounds), so it
cannot tell a model that learnt shapes from one that learnt a renderer. Here:

- shapes are polygons (a circle is a 96-gon) drawn 4x larger into a coverage mask and
  box-filtered down, so edges are anti-aliased, then composited over the background by
  coverage with numpy; an outline is the shape's own ring, dark or light, one or two pixels;
- backgrounds are numpy arrays in styles training does not use: low-contrast checkerboard
  or stripes, a vignette, paper (blotches and fibres), a solid mid or dark tint;
- colours are jittered in HSV, by little enough that each stays inside its named hue.

`training.second_renderer` decides what goes where; this module only draws it.
"""

from __future__ import annotations

import colorsys
import io
import math
import random
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

Point = tuple[float, float]
SUPERSAMPLE = 4
CIRCLE_VERTICES = 96
# An outline's colour: the fill darkened, or lightened towards white, by this share.
OUTLINE_DARKEN = 0.45
OUTLINE_LIGHTEN = 0.55
# Each colour name's reference RGB (the names of `training.shapes_dataset.COLORS`), which
# `jitter_colour` varies. This renderer keeps its own palette so that it does not change
# when the training generator's does.
PALETTE = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 70, 220),
    "yellow": (235, 200, 25),
    "purple": (140, 45, 180),
}


# --- colours --------------------------------------------------------------------------------

def jitter_colour(name: str, rng: random.Random) -> tuple[int, int, int]:
    """The named colour (`PALETTE`) moved a little in hue, saturation and value.

    Hue moves at most 5 degrees; the nearest other named hue is over 45 degrees away
    (red 0, yellow 49, green 128, blue 229, purple 283), so the name stays true.
    """
    red, green, blue = (channel / 255 for channel in PALETTE[name])
    hue, saturation, value = colorsys.rgb_to_hsv(red, green, blue)
    hue = (hue + rng.uniform(-5, 5) / 360) % 1.0
    saturation = min(1.0, saturation * rng.uniform(0.85, 1.05))
    value = min(1.0, value * rng.uniform(0.88, 1.04))
    return tuple(round(channel * 255) for channel in colorsys.hsv_to_rgb(hue, saturation, value))


def outline_colour(fill: Sequence[int], kind: str) -> tuple[int, int, int]:
    """A thin ring's colour: `dark` (the fill darkened) or `light` (the fill lightened)."""
    if kind == "dark":
        return tuple(round(c * (1 - OUTLINE_DARKEN)) for c in fill)
    return tuple(round(c + (255 - c) * OUTLINE_LIGHTEN) for c in fill)


def _tint(rng: np.random.Generator, value: tuple[float, float], saturation: tuple[float, float],
          hue: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """One low-saturation background colour, (3,) in 0..255."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(*hue), rng.uniform(*saturation), rng.uniform(*value))
    return np.array(rgb, dtype=np.float32) * 255


# --- backgrounds ----------------------------------------------------------------------------
# Each: (width, height, rng) -> (height, width, 3) float32 in 0..255.

def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(width, dtype=np.float32) + 0.5, np.arange(height, dtype=np.float32) + 0.5)


def checkerboard(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Squares of 4-12% of the short side, 10-24 grey levels apart."""
    base = _tint(rng, (0.55, 0.9), (0.0, 0.12))
    cell = min(width, height) * rng.uniform(0.04, 0.12)
    x, y = _grid(width, height)
    phase = rng.uniform(0, 2 * cell, size=2)
    parity = (np.floor((x + phase[0]) / cell) + np.floor((y + phase[1]) / cell)) % 2  # (H, W)
    amplitude = rng.uniform(5, 12)
    return base + (parity[..., None] * 2 - 1) * amplitude


def stripes(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Straight stripes at any angle, 5-15% of the short side a period, 8-20 grey levels apart."""
    base = _tint(rng, (0.55, 0.9), (0.0, 0.12))
    period = min(width, height) * rng.uniform(0.05, 0.15)
    angle = rng.uniform(0, math.pi)
    x, y = _grid(width, height)
    along = x * math.cos(angle) + y * math.sin(angle)
    band = np.where((along / period + rng.uniform()) % 1.0 < 0.5, 1.0, -1.0)  # (H, W)
    return base + band[..., None] * rng.uniform(4, 10)


def vignette(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A light tint darkening towards the corners, by 25-50% there."""
    base = _tint(rng, (0.6, 0.92), (0.0, 0.12))
    x, y = _grid(width, height)
    centre = np.array([width, height], dtype=np.float32) * rng.uniform(0.4, 0.6, size=2)
    distance = np.hypot((x - centre[0]) / (width / 2), (y - centre[1]) / (height / 2)) / math.sqrt(2)  # 1 at corners
    shade = 1 - rng.uniform(0.25, 0.5) * np.clip(distance, 0, 1.3) ** 2
    return base * shade[..., None]


def paper(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Warm off-white paper: soft blotches, faint fibres and a little tooth."""
    base = _tint(rng, (0.82, 0.95), (0.04, 0.12), hue=(0.08, 0.14))
    coarse = rng.normal(0, 1, size=(max(2, height // 24), max(2, width // 24))).astype(np.float32)
    blotches = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))  # (H, W)
    fibres = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(fibres)
    for _ in range(int(width * height / 900) + 2):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        length, angle = rng.uniform(3, 14), rng.uniform(0, math.pi)
        draw.line([(x, y), (x + length * math.cos(angle), y + length * math.sin(angle))],
                  fill=int(rng.integers(6, 14)))
    tooth = rng.normal(0, 1.5, size=(height, width)).astype(np.float32)
    shade = blotches * rng.uniform(3, 6) - np.asarray(fibres, dtype=np.float32) + tooth
    return base + shade[..., None]


def solid_tint(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """One flat mid or dark tint (training's backgrounds are light)."""
    return np.broadcast_to(_tint(rng, (0.3, 0.62), (0.05, 0.25)), (height, width, 3)).copy()


BACKGROUNDS: dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    "checkerboard": checkerboard, "stripes": stripes, "vignette": vignette, "paper": paper, "solid_tint": solid_tint,
}


# --- shapes ---------------------------------------------------------------------------------

def _rotated(points: list[Point], degrees: float, centre: Point) -> list[Point]:
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = centre
    return [(cx + (x - cx) * cos - (y - cy) * sin, cy + (x - cx) * sin + (y - cy) * cos) for x, y in points]


def shape_points(shape: str, centre: Point, radius: float, *, rotation: float = 0.0,
                 triangle_height: float = math.sqrt(3) / 2) -> list[Point]:
    """The shape's polygon, its unrotated box centred on `centre`, 2 x `radius` on its longer side.

    A circle's radius, half a square's side; a triangle points up, its height
    `triangle_height` times its base (sqrt(3)/2: equilateral), and the longer of the
    two is 2 x `radius`. `rotation` (degrees) turns it about `centre`.
    """
    cx, cy = centre
    extent = 2 * radius
    if shape == "circle":
        return [(cx + radius * math.cos(2 * math.pi * k / CIRCLE_VERTICES),
                 cy + radius * math.sin(2 * math.pi * k / CIRCLE_VERTICES)) for k in range(CIRCLE_VERTICES)]
    if shape == "square":
        corners = [(cx - radius, cy - radius), (cx + radius, cy - radius), (cx + radius, cy + radius),
                   (cx - radius, cy + radius)]
        return _rotated(corners, rotation, centre)
    if shape == "triangle":
        base, height = (extent, extent * triangle_height) if triangle_height <= 1 else (extent / triangle_height, extent)
        corners = [(cx, cy - height / 2), (cx + base / 2, cy + height / 2), (cx - base / 2, cy + height / 2)]
        return _rotated(corners, rotation, centre)
    raise ValueError(f"no shape {shape!r}")


def bounding_box(points: Sequence[Point]) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _incircle(points: Sequence[Point]) -> tuple[Point, float]:
    """Centre and radius of the circle touching every side (the three shapes all have one)."""
    if len(points) == 3:
        (ax, ay), (bx, by), (qx, qy) = points
        a, b, c = math.dist(points[1], points[2]), math.dist(points[2], points[0]), math.dist(points[0], points[1])
        centre = ((a * ax + b * bx + c * qx) / (a + b + c), (a * ay + b * by + c * qy) / (a + b + c))
    else:
        centre = (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))
    radius = min(
        abs((q[0] - p[0]) * (p[1] - centre[1]) - (p[0] - centre[0]) * (q[1] - p[1])) / math.dist(p, q)
        for p, q in zip(points, [*points[1:], points[0]])
    )
    return centre, radius


def inset(points: Sequence[Point], distance: float) -> list[Point]:
    """The polygon with every side moved `distance` inwards (scaled about its incentre)."""
    (cx, cy), radius = _incircle(points)
    scale = max(0.0, radius - distance) / radius
    return [(cx + (x - cx) * scale, cy + (y - cy) * scale) for x, y in points]


def _coverage(points: Sequence[Point], x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """Share of each pixel of the window at (x0, y0) the polygon covers, (height, width) in 0..1."""
    mask = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    ImageDraw.Draw(mask).polygon([((x - x0) * SUPERSAMPLE, (y - y0) * SUPERSAMPLE) for x, y in points], fill=255)
    return np.asarray(mask.resize((width, height), Image.BOX), dtype=np.float32) / 255


def paint(canvas: np.ndarray, points: Sequence[Point], fill: Sequence[int], *,
          outline: Sequence[int] | None = None, outline_width: float = 0.0) -> None:
    """Composite the polygon onto `canvas` (H, W, 3) by coverage, with a ring of `outline` inside its edge."""
    height, width = canvas.shape[:2]
    left, top, right, bottom = bounding_box(points)
    x0, y0 = max(0, math.floor(left) - 1), max(0, math.floor(top) - 1)
    x1, y1 = min(width, math.ceil(right) + 1), min(height, math.ceil(bottom) + 1)
    window = canvas[y0:y1, x0:x1]
    layers = [(points, fill)] if outline is None else [(points, outline), (inset(points, outline_width), fill)]
    for polygon, colour in layers:
        alpha = _coverage(polygon, x0, y0, x1 - x0, y1 - y0)[..., None]  # (h, w, 1)
        window[:] = window * (1 - alpha) + np.asarray(colour, dtype=np.float32) * alpha


# --- files ----------------------------------------------------------------------------------

def to_image(canvas: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), mode="RGB")


def encode(image: Image.Image, encoding: str) -> bytes:
    """`png`, or `jpeg-Q` (quality Q, PIL's default 4:2:0 chroma subsampling)."""
    buffer = io.BytesIO()
    if encoding == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=int(encoding.removeprefix("jpeg-")))
    return buffer.getvalue()
