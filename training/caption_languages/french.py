"""French captions: "un petit cercle rouge , un grand carré bleu et un petit triangle vert".

The size comes before the noun and the colour after it, as French places them;
all three shape nouns are masculine ("un", "petit", "vert"), while "forme" is
feminine ("une seule forme", "trois formes"); "de" elides before "un" ("d'un").
"""

from __future__ import annotations

from typing import Sequence

from training.caption_languages import CaptionLanguage, SceneObject, inflections, listing

SHAPES = {"circle": "cercle", "square": "carré", "triangle": "triangle"}
COLOURS = {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune", "purple": "violet"}
SIZES = {"small": "petit", "large": "grand"}
COUNTS = {2: "deux", 3: "trois", 4: "quatre", 5: "cinq"}
PLACES = {"left": "à gauche de l'image", "middle": "au milieu de l'image", "right": "à droite de l'image"}


def _phrase(obj: SceneObject) -> str:
    return f"un {SIZES[obj.size]} {SHAPES[obj.shape]} {COLOURS[obj.color]}"


def _shapes(count: int) -> str:
    return "une seule forme" if count == 1 else f"{COUNTS[count]} formes"


def describe(objects: Sequence[SceneObject]) -> list[str]:
    """Five true captions with different wording, objects named left to right."""
    named = listing([_phrase(o) for o in objects], "et")
    placed = f"{named} {PLACES[objects[0].column]}" if len(objects) == 1 else f"{named} de gauche à droite"
    of_each = listing([f"d'{_phrase(o)}" for o in objects], "et")  # "d'un ... , d'un ... et d'un ..."
    return [named, f"il y a {named}", f"une image {of_each}", f"{named} , soit {_shapes(len(objects))}", placed]


FRENCH = CaptionLanguage(
    code="fr",
    name="French",
    describe=describe,
    colour_words={
        **inflections({"rouge": "red", "jaune": "yellow"}, ("", "s")),
        **inflections({"vert": "green", "bleu": "blue"}, ("", "e", "s", "es")),
        **inflections({"violet": "purple"}, ("", "s", "te", "tes")),
    },
    shape_words=inflections({v: k for k, v in SHAPES.items()}, ("", "s")),
    colour_offset=+1,
)
