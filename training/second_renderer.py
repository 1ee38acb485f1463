"""A second generator of shape scenes, for evaluation only: the same world drawn by other hands.

A model evaluated only on its own generator's held-out images can score well by
learning that generator. This one writes scenes of the same vocabulary (colours,
shapes, small/large, left to right; `training.shapes_dataset`'s captions, in every
language of `training/caption_languages/`) with its own layout and drawing code
(`training.second_drawing`), and ranges partly outside what training sees:

| | training's randomised world | this one |
| --- | --- | --- |
| canvas | long side 64..512 px, aspect up to 2:1 | 48..640 px a side, aspect up to 2.5:1 (log-uniform) |
| object radius, of the short side | small 5.5%..11%, large 15%..25% | small 5%..12%, large 16%..30% (at least 4 px) |
| background | gradients, grain, tints, blur | low-contrast checkerboard or stripes, vignette, paper, solid mid/dark tint |
| drawing | filled shapes | 4x supersampled coverage (anti-aliased); 35% with a 1-2 px dark or light outline |
| triangles | one form | equilateral or isosceles (height 0.7..1.25 of the base), turned like squares up to 15 degrees |
| files | JPEG 50..95 and PNG | JPEG 40..95 (75%) and PNG (25%) |

(The fixed-layout generator before that world drew 128 px squares, one object per third,
radii 10%..11% and 14.5%..16%, on light grey, as JPEG 92.)

Every caption stays true:

- a colour moves at most 5 degrees in hue from its own reference (`second_drawing.PALETTE`,
  `jitter_colour`) and must stand out from the background behind it (`MIN_CONTRAST`);
- small and large are kept apart (a radius of at most 12% against at least 16% of the short
  side); an object's `radius` is half its unrotated box's longer side: a circle's radius,
  half a square's side. A radius is drawn from its size's range cut to what fits (a large
  lone object in the left third of a narrow image is as large as fits there);
- object centres (their boxes' centres) are at least 10% of the width apart in x, so the
  left-to-right order the captions use is plain, and objects overlap at most slightly
  (centres at least 0.9 of the sum of their outer radii apart);
- a lone object's caption says where it is ("on the left of the image"): its centre lies
  in its third of the width at least 6% of the width away from the thirds' boundaries.

Each scene has 1..3 objects (equally likely). Image i of seed s is drawn from its own random
numbers, so it is the same whatever `--count`, and the same arguments write the same files.

    python -m training.second_renderer --out data/second --count 300 --seed 7 --languages en fr de es

writes `OUT/images/000001.jpg` (or `.png`) ... and `OUT/annotations/captions_val.json`, COCO
format as `training.shapes_dataset` writes it. Image records carry `renderer`
("second_renderer"), `objects` (sorted left to right by centre x, each with `shape`, `color`,
`size`, `column`, `box` [x0, y0, x1, y1] in pixels, and this generator's `radius` in pixels,
`rotation` in degrees and `outline`: "none", "dark" or "light"), `background` (the style) and
`encoding` ("png" or "jpeg-Q").
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from training import second_drawing as drawing
from training.caption_languages import LANGUAGES, get_language
from training.cli import make_folder, non_negative_int, positive_int, user_errors
from training.shapes_dataset import COLORS, COLUMNS, SHAPES, ShapeObject, describe
from training.shapes_world import column_of

RENDERER = "second_renderer"
MIN_SIDE, MAX_SIDE, MAX_ASPECT = 48, 640, 2.5
SMALL_RADIUS, LARGE_RADIUS = (0.05, 0.12), (0.16, 0.30)  # shares of the short side
MIN_RADIUS_PIXELS = 4  # smaller, a triangle is a blob
MAX_ROTATION = 15.0  # degrees, squares and triangles
ISOSCELES_HEIGHT = (0.7, 1.25)  # a triangle's height over its base, when not equilateral
MIN_SEPARATION = 0.10  # of the width, between neighbouring centres
OVERLAP_FACTOR = 0.9  # centres at least this times the sum of outer radii apart
COLUMN_MARGIN = 0.06  # of the width, a lone object's centre from its third's boundaries
EDGE_MARGIN = 0.02  # of the short side, between an object and the image's edge
OUTLINE_SHARE = 0.35
PNG_SHARE = 0.25
JPEG_QUALITY = (40, 95)
MIN_CONTRAST = 80.0  # RGB distance between a fill and the mean background behind it
LAYOUT_TRIES, SCENE_TRIES, BACKGROUND_TRIES = 100, 50, 20


@dataclass(frozen=True)
class Form:
    """A shape in one pose at radius 1, its box centred on (0, 0): scaled and moved to place it."""

    shape: str
    rotation: float  # degrees
    points: tuple[tuple[float, float], ...]
    half_width: float  # of its box
    half_height: float
    reach: float  # farthest point from the box's centre

    @classmethod
    def random(cls, shape: str, rng: random.Random) -> Form:
        rotation = 0.0 if shape == "circle" else rng.uniform(-MAX_ROTATION, MAX_ROTATION)
        triangle_height = math.sqrt(3) / 2 if rng.random() < 0.5 else rng.uniform(*ISOSCELES_HEIGHT)
        points = drawing.shape_points(shape, (0.0, 0.0), 1.0, rotation=rotation, triangle_height=triangle_height)
        x0, y0, x1, y1 = drawing.bounding_box(points)
        centred = tuple((x - (x0 + x1) / 2, y - (y0 + y1) / 2) for x, y in points)
        return cls(shape, rotation, centred, (x1 - x0) / 2, (y1 - y0) / 2, max(math.hypot(*p) for p in centred))


@dataclass(frozen=True)
class PlacedObject:
    """One drawn object: what the captions say about it, and how it is drawn."""

    color: str
    size: str
    form: Form
    radius: float
    centre: tuple[float, float]  # its box's centre
    column: str
    fill: tuple[int, int, int]
    outline: str  # "none", "dark", "light"

    @property
    def shape(self) -> str:
        return self.form.shape

    @property
    def points(self) -> list[tuple[float, float]]:
        return [(self.centre[0] + x * self.radius, self.centre[1] + y * self.radius) for x, y in self.form.points]

    @property
    def box(self) -> tuple[float, float, float, float]:
        return drawing.bounding_box(self.points)

    def caption_object(self) -> ShapeObject:
        return ShapeObject(self.shape, self.color, self.size, self.column)

    def record(self) -> dict:
        return {
            "shape": self.shape, "color": self.color, "size": self.size, "column": self.column,
            "box": [round(v, 2) for v in self.box], "radius": round(self.radius, 2),
            "rotation": round(self.form.rotation, 2), "outline": self.outline,
        }


def random_canvas(rng: random.Random) -> tuple[int, int]:
    """(width, height): aspect log-uniform in 1..2.5 either way, short side log-uniform within the limits."""
    aspect = math.exp(rng.uniform(0, math.log(MAX_ASPECT)))
    short = round(math.exp(rng.uniform(math.log(MIN_SIDE), math.log(MAX_SIDE / aspect))))
    long = min(MAX_SIDE, round(short * aspect))
    return (long, short) if rng.random() < 0.5 else (short, long)


def _x_range(width: int, column: str | None) -> tuple[float, float]:
    """Where a centre may lie in x: anywhere, or for a lone object well inside its third."""
    if column is None:
        return 0.0, float(width)
    third = COLUMNS.index(column)
    return width * (third / 3 + COLUMN_MARGIN), width * ((third + 1) / 3 - COLUMN_MARGIN)


def _radius_range(size: str, form: Form, width: int, height: int, x_range: tuple[float, float]) -> tuple[float, float]:
    """The radii of `size` at which `form` fits the image (and `x_range`, with its box inside the image)."""
    short = min(width, height)
    low, high = SMALL_RADIUS if size == "small" else LARGE_RADIUS
    margin = EDGE_MARGIN * short
    widest = min(x_range[1], width - x_range[0]) - margin  # the box's half width may reach this far from an edge
    fits = min(widest / form.half_width, (height / 2 - margin) / form.half_height)
    return max(low * short, MIN_RADIUS_PIXELS), min(high * short, fits)


def _centre(rng: random.Random, form: Form, radius: float, width: int, height: int,
            x_range: tuple[float, float]) -> tuple[float, float]:
    margin = EDGE_MARGIN * min(width, height)
    reach_x, reach_y = form.half_width * radius + margin, form.half_height * radius + margin
    x = rng.uniform(max(x_range[0], reach_x), min(x_range[1], width - reach_x))
    return x, rng.uniform(reach_y, height - reach_y)


def _apart(objects: Sequence[PlacedObject], width: int) -> bool:
    """Centres far enough apart in x for a plain order, and objects overlapping at most slightly."""
    xs = sorted(o.centre[0] for o in objects)
    if any(b - a < MIN_SEPARATION * width for a, b in itertools.pairwise(xs)):
        return False
    return all(
        math.dist(a.centre, b.centre) >= OVERLAP_FACTOR * (a.form.reach * a.radius + b.form.reach * b.radius)
        for i, a in enumerate(objects) for b in objects[i + 1 :]
    )


def random_layout(rng: random.Random, width: int, height: int) -> list[PlacedObject]:
    """1..3 objects placed so that every caption about them is true, sorted left to right.

    Each radius is drawn from its size's range cut to what fits the image (a large
    lone object in a narrow image's left third is as large as fits there); a scene
    whose objects find no places apart is drawn again.
    """
    count = rng.randint(1, 3)
    for _ in range(SCENE_TRIES):
        column = rng.choice(COLUMNS) if count == 1 else None
        x_range = _x_range(width, column)
        kinds, radii = [], []
        for _ in range(count):
            color, size = rng.choice(list(COLORS)), rng.choice(("small", "large"))
            form = Form.random(rng.choice(SHAPES), rng)
            outline = rng.choice(("dark", "light")) if rng.random() < OUTLINE_SHARE else "none"
            kinds.append((color, size, form, drawing.jitter_colour(color, rng), outline))
            radii.append(_radius_range(size, form, width, height, x_range))
        if any(low > high for low, high in radii):
            continue  # an object of that size cannot fit there
        radii = [rng.uniform(low, high) for low, high in radii]
        for _ in range(LAYOUT_TRIES):
            objects = []
            for (color, size, form, fill, outline), radius in zip(kinds, radii):
                centre = _centre(rng, form, radius, width, height, x_range)
                objects.append(PlacedObject(color, size, form, radius, centre, column_of(centre[0], width), fill,
                                            outline))
            if _apart(objects, width):
                return sorted(objects, key=lambda o: o.centre[0])
    raise RuntimeError(f"no layout of {count} objects found on a {width}x{height} canvas")


def _contrasts(canvas: np.ndarray, objects: Sequence[PlacedObject]) -> bool:
    """Every fill stands out from the mean of the background behind its box."""
    for obj in objects:
        x0, y0, x1, y1 = (int(v) for v in obj.box)
        behind = canvas[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3).mean(axis=0)
        if np.linalg.norm(behind - np.asarray(obj.fill, dtype=np.float32)) < MIN_CONTRAST:
            return False
    return True


def render(objects: Sequence[PlacedObject], width: int, height: int, rng: random.Random) -> tuple[Image.Image, str]:
    """The image (PIL RGB) and its background style's name."""
    arrays = np.random.default_rng(rng.getrandbits(64))
    for _ in range(BACKGROUND_TRIES):
        background = rng.choice(list(drawing.BACKGROUNDS))
        canvas = drawing.BACKGROUNDS[background](width, height, arrays).astype(np.float32)
        if _contrasts(canvas, objects):
            break
    else:  # a light plain tint shows every colour named
        background, canvas = "solid_tint", np.full((height, width, 3), 200.0, dtype=np.float32)
    ring = max(1.0, min(2.0, min(width, height) / 160))
    for obj in rng.sample(list(objects), len(objects)):  # drawing order: any object may be on top
        outline = None if obj.outline == "none" else drawing.outline_colour(obj.fill, obj.outline)
        drawing.paint(canvas, obj.points, obj.fill, outline=outline, outline_width=ring)
    return drawing.to_image(canvas), background


def random_encoding(rng: random.Random) -> str:
    return "png" if rng.random() < PNG_SHARE else f"jpeg-{rng.randint(*JPEG_QUALITY)}"


def scene_rng(seed: int, image_id: int) -> random.Random:
    """Image `image_id`'s own random numbers: the same whatever else is generated."""
    return random.Random(f"{RENDERER}:{seed}:{image_id}")


def render_record(image_id: int, seed: int) -> tuple[dict, bytes, list[ShapeObject]]:
    """One image: its COCO record, its file's bytes, and the objects the captions describe."""
    rng = scene_rng(seed, image_id)
    width, height = random_canvas(rng)
    objects = random_layout(rng, width, height)
    image, background = render(objects, width, height, rng)
    encoding = random_encoding(rng)
    record = {
        "id": image_id, "file_name": f"{image_id:06d}.{'png' if encoding == 'png' else 'jpg'}",
        "width": width, "height": height, "objects": [o.record() for o in objects], "renderer": RENDERER,
        "background": background, "encoding": encoding,
    }
    return record, drawing.encode(image, encoding), [o.caption_object() for o in objects]


def generate(out_dir: Path | str, *, count: int, seed: int = 7, languages: Sequence[str] = ("en",),
             first_id: int = 1, quiet: bool = False) -> Path:
    """Write `count` images and `annotations/captions_val.json`; five captions per image in each language.

    Annotation ids follow `training.shapes_dataset.write_split`: (image id x languages + language) x 10 + k.
    """
    out_dir = Path(out_dir)
    for code in languages:
        get_language(code)  # an unknown code fails before anything is written
    image_dir = make_folder(out_dir / "images")
    annotation_dir = make_folder(out_dir / "annotations")  # before any image, so a bad --out costs no rendering
    images, annotations = [], []
    for image_id in tqdm(range(first_id, first_id + count), desc="rendering second set", unit="img", disable=quiet):
        record, data, objects = render_record(image_id, seed)
        (image_dir / record["file_name"]).write_bytes(data)
        images.append(record)
        for l, language in enumerate(languages):
            for k, caption in enumerate(describe(objects, language)):
                annotations.append({"id": (image_id * len(languages) + l) * 10 + k, "image_id": image_id,
                                    "caption": caption, "language": language})
    coco = {
        "info": {"description": f"shapes captions drawn by the second renderer (seed {seed})", "version": "1.0"},
        "licenses": [], "images": images, "annotations": annotations,
    }
    (annotation_dir / "captions_val.json").write_text(json.dumps(coco))
    return out_dir


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Render a held-out shapes set with the second renderer.")
    parser.add_argument("--out", required=True, help="output folder (images/ and annotations/ are created)")
    parser.add_argument("--count", type=positive_int, default=300, help="images")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--first-id", type=non_negative_int, default=1, help="the first image id")
    parser.add_argument("--languages", nargs="+", default=["en"], choices=list(LANGUAGES),
                        help="caption languages (ISO 639-1), five captions per image in each")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(args: argparse.Namespace) -> Path:
    out = generate(args.out, count=args.count, seed=args.seed, languages=args.languages, first_id=args.first_id,
                   quiet=args.quiet)
    print(f"wrote {args.count} second-renderer images to {out}, captioned in {', '.join(args.languages)}")
    return out


if __name__ == "__main__":
    with user_errors():
        main(get_args_parser().parse_args())
