"""Spanish captions: "un pequeño círculo rojo , un gran cuadrado azul y un pequeño triángulo verde".

The colour follows the noun; the size goes before it, "grande" shortened to
"gran" there. The shape nouns are masculine; "figura" is feminine ("una sola
figura", "tres figuras").
"""

from __future__ import annotations

from typing import Sequence

from training.caption_languages import CaptionLanguage, SceneObject, inflections, listing

SHAPES = {"circle": "círculo", "square": "cuadrado", "triangle": "triángulo"}
COLOURS = {"red": "rojo", "green": "verde", "blue": "azul", "yellow": "amarillo", "purple": "morado"}
SIZES = {"small": "pequeño", "large": "gran"}
COUNTS = {2: "dos", 3: "tres", 4: "cuatro", 5: "cinco"}
PLACES = {
    "left": "a la izquierda de la imagen", "middle": "en el centro de la imagen", "right": "a la derecha de la imagen"
}


def _phrase(obj: SceneObject) -> str:
    return f"un {SIZES[obj.size]} {SHAPES[obj.shape]} {COLOURS[obj.color]}"


def describe(objects: Sequence[SceneObject]) -> list[str]:
    """Five true captions with different wording, objects named left to right."""
    named = listing([_phrase(o) for o in objects], "y")
    count = "una sola figura" if len(objects) == 1 else f"en total {COUNTS[len(objects)]} figuras"
    placed = f"{named} {PLACES[objects[0].column]}" if len(objects) == 1 else f"{named} de izquierda a derecha"
    return [named, f"hay {named}", f"una imagen de {named}", f"{named} , {count}", placed]


SPANISH = CaptionLanguage(
    code="es",
    name="Spanish",
    describe=describe,
    colour_words={
        **inflections({"roj": "red", "amarill": "yellow", "morad": "purple"}, ("o", "a", "os", "as")),
        **inflections({"verde": "green"}, ("", "s")),
        **inflections({"azul": "blue"}, ("", "es")),
    },
    shape_words=inflections({v: k for k, v in SHAPES.items()}, ("", "s")),
    colour_offset=+1,
)
