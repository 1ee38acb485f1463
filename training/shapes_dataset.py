"""A generated COCO-format captioning set: scenes of coloured shapes with true captions.

COCO and ImageNet weights cannot be downloaded everywhere, so the project makes
its own data. Each image holds 1-3 shapes, each with a colour, a shape, a size
and a place, drawn from wide ranges (canvas, positions, sizes, backgrounds,
encoding: `training/shapes_world.py` and `training/shapes_render.py`), so a model
learns the objects rather than one renderer. Every image gets five different captions
(varied wording, as COCO's five annotators give), all true, with objects named
left to right, in each language asked for (`training/caption_languages/`:
English, French, German, Spanish). The scene itself is stored on the image record (`objects`), so
evaluation can check that a predicted caption names each colour and shape.

Files are written in real COCO caption format and read back through the same
pycocotools path as COCO itself:

    OUT/images/000001.jpg, 000002.png ...
    OUT/annotations/captions_train.json
    OUT/annotations/captions_val.json

Run: python -m training.shapes_dataset --out data/shapes --train 3000 --val 300 [--languages en fr de es]
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from PIL import Image
from tqdm import tqdm

from training.caption_languages import LANGUAGES, get_language
from training.cli import int_between, make_folder, non_negative_int, user_errors
from training.shapes_render import encode, render
from training.shapes_world import (
    COLORS, COLUMNS, DEFAULT_RANGES, SHAPES, SIZES, Scene, ShapeObject, WorldRanges, random_scene,
)

__all__ = [
    "COLORS", "SHAPES", "SIZES", "COLUMNS", "SCENE_SLOTS", "SCENE_ATTRIBUTE_CLASSES", "Scene", "ShapeObject",
    "random_scene", "render_scene", "describe", "named_objects", "scene_labels", "names_every_object", "generate",
]


RENDERER = "shapes-world"


def render_scene(scene: Scene, rng: random.Random) -> Image.Image:
    """The scene drawn on a randomised background (`training/shapes_render.py`)."""
    return render(scene, rng)


def describe(objects: Sequence[ShapeObject], language: str = "en") -> list[str]:
    """Five true captions in `language` with different wording, objects named left to right."""
    return get_language(language).describe(objects)


def named_objects(caption_tokens: list[str], language: str = "en") -> Counter:
    """(colour, shape) pairs a caption names, as a multiset: `red circle` -> ('red', 'circle')."""
    return get_language(language).named_objects(caption_tokens)


# `scene_labels`: one slot per object, left to right, and the classes of each attribute, "nothing here" (0) included.
SCENE_SLOTS = 3
SCENE_ATTRIBUTE_CLASSES = (len(COLORS) + 1, len(SHAPES) + 1, len(SIZES) + 1, len(COLUMNS) + 1)


def _as_record(obj: dict | ShapeObject) -> dict:
    return obj if isinstance(obj, dict) else obj.record()


def scene_labels(objects: Sequence[dict] | Sequence[ShapeObject]) -> list[list[int]]:
    """Per slot (the k-th object from the left): [colour, shape, size, column] class ids, 0 past the last object.

    Training targets for `training.auxiliary_losses.SceneHead`. Slots follow the
    captions' order (left to right), so slot k is the k-th object a caption names.
    """
    labels = [[0, 0, 0, 0] for _ in range(SCENE_SLOTS)]
    for slot, obj in enumerate(objects[:SCENE_SLOTS]):
        o = _as_record(obj)
        labels[slot] = [
            COLORS.index(o["color"]) + 1, SHAPES.index(o["shape"]) + 1, SIZES.index(o["size"]) + 1,
            COLUMNS.index(o["column"]) + 1,
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
    out_dir: Path, name: str, count: int, rng: random.Random, first_id: int, max_objects: int,
    languages: Sequence[str] = ("en",), ranges: WorldRanges = DEFAULT_RANGES,
) -> int:
    """Write `count` images and `annotations/captions_{name}.json`; returns the next free image id.

    Each image gets five captions in each of `languages`, every annotation with
    its `language` (ISO 639-1), as `training.coco_data` reads them. The image
    record keeps the scene (`objects`, left to right, with their boxes) and the
    renderer's name.
    """
    images, annotations = [], []
    image_dir = make_folder(out_dir / "images")
    for image_id in tqdm(range(first_id, first_id + count), desc=f"generating {name}", unit="img"):
        scene = random_scene(rng, max_objects, ranges)
        data, extension = encode(render_scene(scene, rng), rng)
        file_name = f"{image_id:06d}.{extension}"
        (image_dir / file_name).write_bytes(data)
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": scene.width,
                "height": scene.height,
                "renderer": RENDERER,
                "objects": [o.record() for o in scene.objects],
            }
        )
        for l, language in enumerate(languages):
            for k, caption in enumerate(describe(scene.objects, language)):
                # Ids unique across splits: five captions per language per image id.
                annotations.append({
                    "id": (image_id * len(languages) + l) * 10 + k, "image_id": image_id, "caption": caption,
                    "language": language,
                })
    coco = {
        "info": {"description": f"generated shapes captions ({name})", "version": "2.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
    }
    (make_folder(out_dir / "annotations") / f"captions_{name}.json").write_text(json.dumps(coco))
    return first_id + count


def generate(
    out_dir: Path | str, *, train: int, val: int, seed: int = 0, max_objects: int = 3,
    languages: Sequence[str] = ("en",), canvas: int | None = None,
) -> Path:
    """Write the whole set; the same arguments always give the same files (images whatever the languages).

    `canvas` fixes the canvas's long side (small, fast sets for tests); by default
    it comes from the world's range. The first held-out image is also written as
    `OUT/sample.jpg`, the one the README's examples send.
    """
    out_dir = Path(out_dir)
    for code in languages:
        get_language(code)  # an unknown code fails before anything is written
    ranges = DEFAULT_RANGES if canvas is None else replace(DEFAULT_RANGES, long_side=(canvas, canvas),
                                                           min_short_side=min(canvas, DEFAULT_RANGES.min_short_side))
    rng = random.Random(seed)
    next_id = write_split(out_dir, "train", train, rng, 1, max_objects, languages, ranges)
    write_split(out_dir, "val", val, rng, next_id, max_objects, languages, ranges)
    if val:
        first = json.loads((out_dir / "annotations" / "captions_val.json").read_text())["images"][0]
        Image.open(out_dir / "images" / first["file_name"]).convert("RGB").save(out_dir / "sample.jpg", quality=92)
    return out_dir


# `--canvas`: below 32 px the smallest shapes are a few pixels and their colours blur into the JPEG's
# chroma; above 2048 px a set of thousands fills gigabytes, and the default recipe reads images at 160 px.
MIN_CANVAS, MAX_CANVAS = 32, 2048


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate the COCO-format shapes captioning set.")
    parser.add_argument("--out", required=True, help="output folder (images/ and annotations/ are created)")
    parser.add_argument("--train", type=non_negative_int, default=3000, help="training images")
    parser.add_argument("--val", type=non_negative_int, default=300, help="held-out images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-objects", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--canvas", type=int_between(MIN_CANVAS, MAX_CANVAS), default=None,
                        help=f"fix every canvas's long side to this many pixels, {MIN_CANVAS} to {MAX_CANVAS} "
                             "(default: 64..512)")
    parser.add_argument("--languages", nargs="+", default=["en"], choices=list(LANGUAGES),
                        help="caption languages (ISO 639-1), five captions per image in each")
    return parser


def main(args: argparse.Namespace) -> None:
    out = generate(
        args.out, train=args.train, val=args.val, seed=args.seed, max_objects=args.max_objects,
        languages=args.languages, canvas=args.canvas,
    )
    print(f"wrote {args.train} training and {args.val} held-out images to {out}, captioned in "
          f"{', '.join(args.languages)}")


if __name__ == "__main__":
    with user_errors():
        main(get_args_parser().parse_args())
