"""The generated world's geometry: canvases, objects at free positions, and the ranges they come from.

A model trained on one fixed layout (three columns, one canvas size, one grey)
learns that layout, not the objects: drawn by other code, with objects anywhere,
it named every object right on 17% of images. Here every scene is drawn from
wide ranges (domain randomisation, Tobin et al. 2017), so what stays constant
between images is only what the captions talk about: each object's colour,
shape, size and place. `training/shapes_render.py` draws a scene; this module
decides what is in it and keeps every caption true:

- the canvas is 64..512 pixels on its long side, aspect 1:2 to 2:1; the one
  preprocessing (`model/transforms.py`) brings every canvas to the model's square
  input, so sizes are measured against the canvas's short side;
- an object's size is its radius (half its width: a circle's radius, half a
  square's side, a triangle's circumradius) as a share of the short side:
  small 5.5..11%, large 15..25%; the gap between them keeps "small" and "large"
  true of every drawing;
- objects stand anywhere, with small gaps or slight overlaps; their centres are
  far enough apart across the width that "left to right" has one order;
- a lone object stands inside one third of the width, away from the thirds'
  borders, so "on the left of the image" is true of it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

COLORS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
COLUMNS = ("left", "middle", "right")


@dataclass(frozen=True)
class WorldRanges:
    """Where every random choice of a scene comes from; the tests check a generated set honours them."""

    long_side: tuple[int, int] = (64, 512)
    aspect: tuple[float, float] = (1.0, 2.0)  # long side / short side; either orientation
    min_short_side: int = 48
    radius: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {"small": (0.055, 0.11), "large": (0.15, 0.25)}
    )
    margin: float = 0.02  # of the short side, between an object and the canvas's edge
    overlap: float = 0.12  # two objects' discs may overlap by this share of the smaller radius
    order_gap: float = 0.08  # of the width, between neighbouring centres
    third_margin: float = 0.05  # of the width, between a lone object's centre and a third's border
    rotation: float = 15.0  # degrees, either way, for squares and triangles
    stretch: float = 0.1  # a shape's width / height within 1 +- stretch


DEFAULT_RANGES = WorldRanges()
# How far a drawn shape reaches from its centre, in radii: a turned, stretched square's corner.
REACH = 1.5


@dataclass(frozen=True)
class ShapeObject:
    """One object: what captions say of it (shape, colour, size, column) and where it is drawn.

    `column` is the third of the width its centre lies in. `center` and `radius`
    are in pixels of the scene's canvas; `angle` (degrees) and `stretch` (width /
    height) vary squares and triangles a little. Geometry defaults to none, so an
    object can stand for a caption alone.
    """

    shape: str
    color: str
    size: str
    column: str
    center: tuple[float, float] = (0.0, 0.0)
    radius: float = 0.0
    angle: float = 0.0
    stretch: float = 1.0

    @property
    def box(self) -> list[float]:
        """[x0, y0, x1, y1] in pixels: the square around the circle of its radius (a square, unturned, fills it)."""
        x, y = self.center
        return [round(x - self.radius, 2), round(y - self.radius, 2), round(x + self.radius, 2),
                round(y + self.radius, 2)]

    def record(self) -> dict:
        """The object as the image record stores it (COCO `images[].objects`)."""
        return {
            "shape": self.shape, "color": self.color, "size": self.size, "column": self.column, "box": self.box,
            "angle": round(self.angle, 2), "stretch": round(self.stretch, 3),
        }


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    objects: tuple[ShapeObject, ...]  # left to right

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)


def column_of(x: float, width: float) -> str:
    return COLUMNS[min(len(COLUMNS) - 1, int(3 * x / width))]


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def random_canvas(rng: random.Random, ranges: WorldRanges = DEFAULT_RANGES) -> tuple[int, int]:
    """(width, height): long side log-uniform in its range, aspect log-uniform, either orientation."""
    long_side = round(_log_uniform(rng, *ranges.long_side))
    short_side = max(ranges.min_short_side, round(long_side / _log_uniform(rng, *ranges.aspect)))
    short_side = min(short_side, long_side)
    return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)


def _fits(candidate: tuple[float, float, float], placed: list[tuple[float, float, float]], width: int,
          ranges: WorldRanges) -> bool:
    x, y, r = candidate
    for px, py, pr in placed:
        if math.hypot(x - px, y - py) < r + pr - ranges.overlap * min(r, pr):
            return False
        if abs(x - px) < ranges.order_gap * width:
            return False
    return True


def _place(rng: random.Random, radii: list[float], width: int, height: int, ranges: WorldRanges,
           lone_column: int | None) -> list[tuple[float, float]] | None:
    """Centres for discs of `radii` inside the canvas, or None when this draw found no room."""
    margin = ranges.margin * min(width, height)
    placed: list[tuple[float, float, float]] = []
    for r in radii:
        reach = REACH * r + margin
        low_x, high_x = reach, width - reach
        low_y, high_y = reach, height - reach
        if lone_column is not None:  # keep a lone object's centre well inside its third
            third = width / 3
            low_x = max(low_x, third * lone_column + ranges.third_margin * width)
            high_x = min(high_x, third * (lone_column + 1) - ranges.third_margin * width)
        if low_x > high_x or low_y > high_y:
            return None
        for _ in range(40):
            candidate = (rng.uniform(low_x, high_x), rng.uniform(low_y, high_y), r)
            if _fits(candidate, placed, width, ranges):
                placed.append(candidate)
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]


def random_scene(rng: random.Random, max_objects: int = 3, ranges: WorldRanges = DEFAULT_RANGES) -> Scene:
    """A canvas with 1..max_objects objects at free positions, listed left to right.

    Draws until the objects fit (a tall, narrow canvas has room for fewer large
    objects side by side); every draw comes from `rng`, so a seed fixes the scene.
    """
    count = rng.randint(1, max_objects)
    while True:
        width, height = random_canvas(rng, ranges)
        short = min(width, height)
        kinds = [(rng.choice(SHAPES), rng.choice(COLORS), rng.choice(SIZES)) for _ in range(count)]
        radii = [short * rng.uniform(*ranges.radius[size]) for _, _, size in kinds]
        lone_column = rng.randrange(len(COLUMNS)) if count == 1 else None
        centres = _place(rng, radii, width, height, ranges, lone_column)
        if centres is None:
            continue
        objects = []
        for (shape, color, size), r, (x, y) in zip(kinds, radii, centres):
            turns = shape != "circle"
            objects.append(ShapeObject(
                shape, color, size, column_of(x, width), center=(x, y), radius=r,
                angle=rng.uniform(-ranges.rotation, ranges.rotation) if turns else 0.0,
                stretch=rng.uniform(1 - ranges.stretch, 1 + ranges.stretch) if turns else 1.0,
            ))
        objects.sort(key=lambda o: o.center[0])
        return Scene(width, height, tuple(objects))
