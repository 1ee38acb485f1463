"""English captions: "a small red circle , a large blue square and a small green triangle"."""

from __future__ import annotations

from typing import Sequence

from training.caption_languages import CaptionLanguage, SceneObject, listing

COLOURS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle")


def describe(objects: Sequence[SceneObject]) -> list[str]:
    """Five true captions with different wording, objects named left to right."""
    named = listing([f"a {o.size} {o.color} {o.shape}" for o in objects], "and")
    if len(objects) == 1:
        column = objects[0].column
        where = "in the middle of the image" if column == "middle" else f"on the {column} of the image"
        placed = f"{named} {where}"
    else:
        placed = f"{named} from left to right"
    return [named, f"there is {named}", f"a picture of {named}", f"an image showing {named}", placed]


ENGLISH = CaptionLanguage(
    code="en",
    name="English",
    describe=describe,
    colour_words={c: c for c in COLOURS},
    shape_words={s: s for s in SHAPES},
    colour_offset=-1,
)
