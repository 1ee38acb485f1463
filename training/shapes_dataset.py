"""A generated COCO-format captioning set: scenes of coloured shapes with true captions.

COCO and ImageNet weights cannot be downloaded everywhere, so the project makes
its own data. Each image holds 1-3 shapes, each with a colour, a shape, a size
and a column (left, middle, right). Every image gets five different captions
(varied wording, as COCO's five annotators give), all true, with objects named
left to right, in each language asked for (`training/caption_languages/`:
English, French, German, Spanish). The scene itself is stored on the image record (`objects`), so
evaluation can check that a predicted caption names each colour and shape.

Files are written in real COCO caption format and read back through the same
pycocotools path as COCO itself:

    OUT/images/000001.jpg ...
    OUT/annotations/captions_train.json
    OUT/annotations/captions_val.json

Run: python -m training.shapes_dataset --out data/shapes --train 3000 --val 300 [--languages en fr de es]
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw
from tqdm import tqdm

from training.caption_languages import LANGUAGES, get_language

COLORS = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 70, 220),
    "yellow": (235, 200, 25),
    "purple": (140, 45, 180),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
COLUMNS = ("left", "middle", "right")


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str
    column: str


def random_scene(rng: random.Random, max_objects: int = 3) -> list[ShapeObject]:
    """1..max_objects objects in distinct columns, sorted left to right."""
    count = rng.randint(1, max_objects)
    columns = sorted(rng.sample(range(len(COLUMNS)), count))
    return [
        ShapeObject(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(SIZES), COLUMNS[c]) for c in columns
    ]


def render_scene(objects: list[ShapeObject], rng: random.Random, canvas: int = 128) -> Image.Image:
    """Draw the objects on a plain light-grey background.

    The background varies only a little: with a strongly tinted one, most of the
    variance between images is the tint, and the encoder learns the objects slowly.
    """
    grey = rng.randint(226, 238)
    background = (grey, grey, grey)
    image = Image.new("RGB", (canvas, canvas), background)
    draw = ImageDraw.Draw(image)
    column_width = canvas / len(COLUMNS)
    for obj in objects:
        radius = canvas * (rng.uniform(0.10, 0.11) if obj.size == "small" else rng.uniform(0.145, 0.16))
        center_x = (COLUMNS.index(obj.column) + 0.5) * column_width + rng.uniform(-0.01, 0.01) * canvas
        center_y = rng.uniform(radius + canvas * 0.08, canvas - radius - canvas * 0.08)
        color = tuple(min(255, max(0, v + rng.randint(-15, 15))) for v in COLORS[obj.color])
        box = (center_x - radius, center_y - radius, center_x + radius, center_y + radius)
        if obj.shape == "circle":
            draw.ellipse(box, fill=color)
        elif obj.shape == "square":
            draw.rectangle(box, fill=color)
        else:
            points = [
                (center_x + radius * math.cos(a), center_y + radius * math.sin(a))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
            ]
            draw.polygon(points, fill=color)
    return image


def describe(objects: list[ShapeObject], language: str = "en") -> list[str]:
    """Five true captions in `language` with different wording, objects named left to right."""
    return get_language(language).describe(objects)


def named_objects(caption_tokens: list[str], language: str = "en") -> Counter:
    """(colour, shape) pairs a caption names, as a multiset: `red circle` -> ('red', 'circle')."""
    return get_language(language).named_objects(caption_tokens)


# Classes per attribute in `scene_labels`, "nothing here" (0) included.
SCENE_ATTRIBUTE_CLASSES = (len(COLORS) + 1, len(SHAPES) + 1, len(SIZES) + 1)


def scene_labels(objects: list[dict] | list[ShapeObject]) -> list[list[int]]:
    """Per column, left to right: [colour, shape, size] class ids, 0 where the column is empty.

    Training targets for `training.auxiliary_losses.SceneHead`.
    """
    labels = [[0, 0, 0] for _ in COLUMNS]
    for obj in objects:
        o = obj if isinstance(obj, dict) else asdict(obj)
        labels[COLUMNS.index(o["column"])] = [
            list(COLORS).index(o["color"]) + 1, SHAPES.index(o["shape"]) + 1, SIZES.index(o["size"]) + 1
        ]
    return labels


def names_every_object(
    caption_tokens: list[str], objects: list[dict] | list[ShapeObject], language: str = "en"
) -> bool:
    """True when the caption (in `language`) names exactly the scene's colour/shape pairs."""
    truth = Counter(
        (o["color"], o["shape"]) if isinstance(o, dict) else (o.color, o.shape) for o in objects
    )
    return named_objects(caption_tokens, language) == truth


def write_split(
    out_dir: Path, name: str, count: int, rng: random.Random, first_id: int, max_objects: int, canvas: int,
    languages: Sequence[str] = ("en",),
) -> int:
    """Write `count` images and `annotations/captions_{name}.json`; returns the next free image id.

    Each image gets five captions in each of `languages`, every annotation with
    its `language` (ISO 639-1), as `training.coco_data` reads them.
    """
    images, annotations = [], []
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for image_id in tqdm(range(first_id, first_id + count), desc=f"generating {name}", unit="img"):
        objects = random_scene(rng, max_objects)
        file_name = f"{image_id:06d}.jpg"
        render_scene(objects, rng, canvas).save(image_dir / file_name, quality=92)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": canvas,
                "height": canvas,
                "objects": [asdict(o) for o in objects],
            }
        )
        for l, language in enumerate(languages):
            for k, caption in enumerate(describe(objects, language)):
                # Ids unique across splits: five captions per language per image id.
                annotations.append({
                    "id": (image_id * len(languages) + l) * 10 + k, "image_id": image_id, "caption": caption,
                    "language": language,
                })
    coco = {
        "info": {"description": f"generated shapes captions ({name})", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
    }
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    (out_dir / "annotations" / f"captions_{name}.json").write_text(json.dumps(coco))
    return first_id + count


def generate(
    out_dir: Path | str, *, train: int, val: int, seed: int = 0, max_objects: int = 3, canvas: int = 128,
    languages: Sequence[str] = ("en",),
) -> Path:
    """Write the whole set; the same arguments always give the same files (images whatever the languages)."""
    out_dir = Path(out_dir)
    for code in languages:
        get_language(code)  # an unknown code fails before anything is written
    rng = random.Random(seed)
    next_id = write_split(out_dir, "train", train, rng, 1, max_objects, canvas, languages)
    write_split(out_dir, "val", val, rng, next_id, max_objects, canvas, languages)
    return out_dir


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate the COCO-format shapes captioning set.")
    parser.add_argument("--out", required=True, help="output folder (images/ and annotations/ are created)")
    parser.add_argument("--train", type=int, default=3000, help="training images")
    parser.add_argument("--val", type=int, default=300, help="held-out images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-objects", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--canvas", type=int, default=128, help="image side in pixels")
    parser.add_argument("--languages", nargs="+", default=["en"], choices=list(LANGUAGES),
                        help="caption languages (ISO 639-1), five captions per image in each")
    return parser


def main(args: argparse.Namespace) -> None:
    out = generate(
        args.out, train=args.train, val=args.val, seed=args.seed, max_objects=args.max_objects, canvas=args.canvas,
        languages=args.languages,
    )
    print(f"wrote {args.train} training and {args.val} held-out images to {out}, captioned in "
          f"{', '.join(args.languages)}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
