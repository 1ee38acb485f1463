"""German captions: "ein kleiner roter Kreis , ein großes blaues Quadrat und ein kleines grünes Dreieck".

Nouns are capitalised. Adjectives after "ein" take the mixed declension, by
the noun's gender (Kreis masculine, Quadrat and Dreieck neuter) and the case
the sentence puts it in: nominative in a plain listing, accusative after
"es gibt", dative after "von" and "auf".
"""

from __future__ import annotations

from typing import Sequence

from training.caption_languages import CaptionLanguage, SceneObject, inflections, listing

SHAPES = {"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n")}
COLOURS = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "purple": "violett"}
SIZES = {"small": "klein", "large": "groß"}
COUNTS = {2: "zwei", 3: "drei", 4: "vier", 5: "fünf"}
PLACES = {"left": "links im Bild", "middle": "in der Mitte des Bildes", "right": "rechts im Bild"}
# (case, gender) -> (article, adjective ending): the mixed declension after "ein".
DECLENSION = {
    ("nom", "m"): ("ein", "er"), ("nom", "n"): ("ein", "es"),
    ("acc", "m"): ("einen", "en"), ("acc", "n"): ("ein", "es"),
    ("dat", "m"): ("einem", "en"), ("dat", "n"): ("einem", "en"),
}


def _phrase(obj: SceneObject, case: str) -> str:
    noun, gender = SHAPES[obj.shape]
    article, ending = DECLENSION[(case, gender)]
    return f"{article} {SIZES[obj.size]}{ending} {COLOURS[obj.color]}{ending} {noun}"


def _named(objects: Sequence[SceneObject], case: str) -> str:
    return listing([_phrase(o, case) for o in objects], "und")


def describe(objects: Sequence[SceneObject]) -> list[str]:
    """Five true captions with different wording, objects named left to right."""
    named = _named(objects, "nom")
    count = "nur eine Form" if len(objects) == 1 else f"insgesamt {COUNTS[len(objects)]} Formen"
    placed = f"{named} {PLACES[objects[0].column]}" if len(objects) == 1 else f"{named} von links nach rechts"
    return [
        named,
        f"es gibt {_named(objects, 'acc')}",
        f"ein Bild von {_named(objects, 'dat')}",
        f"{named} , {count}",
        placed,
    ]


GERMAN = CaptionLanguage(
    code="de",
    name="German",
    describe=describe,
    colour_words=inflections({v: k for k, v in COLOURS.items()}, ("", "e", "er", "es", "en", "em")),
    shape_words={
        form.lower(): shape
        for shape, (noun, _) in SHAPES.items()
        for form in (noun, noun + "e", noun + "en")
    },
    colour_offset=-1,
)
