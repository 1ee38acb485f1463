"""The languages the generated set is captioned in, behind one interface.

Each language is a `CaptionLanguage`: how it writes a scene's five true captions
(`describe`), and which words name each colour and shape, in every form its
grammar gives them, so that evaluation can read a caption back into the scene's
(colour, shape) pairs (`named_objects`). Adding a language is one module and one
line in `LANGUAGES`; nothing else branches on the language.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence


class SceneObject(Protocol):
    shape: str
    color: str
    size: str
    column: str


@dataclass(frozen=True)
class CaptionLanguage:
    """One caption language.

    Args:
        code: ISO 639-1 code, as requests ask for it.
        name: the language's English name, for people.
        describe: a scene's objects, left to right -> its five captions.
        colour_words: every written form of a colour (lower case) -> its name in `COLORS`.
        shape_words: every written form of a shape (lower case) -> its name in `SHAPES`.
        colour_offset: where a shape's colour stands in a noun phrase: -1 just before the
            shape word ("a red circle", "ein roter Kreis"), +1 just after ("un cercle rouge").
    """

    code: str
    name: str
    describe: Callable[[Sequence[SceneObject]], list[str]]
    colour_words: dict[str, str]
    shape_words: dict[str, str]
    colour_offset: int

    def named_sequence(self, caption_tokens: Sequence[str]) -> list[tuple[str, str]]:
        """(colour, shape) pairs in the order the caption names them: `un cercle rouge` -> [('red', 'circle')]."""
        words = [token.lower() for token in caption_tokens]
        pairs = []
        for position, word in enumerate(words):
            colour_at = position + self.colour_offset
            if word in self.shape_words and 0 <= colour_at < len(words) and words[colour_at] in self.colour_words:
                pairs.append((self.colour_words[words[colour_at]], self.shape_words[word]))
        return pairs

    def named_objects(self, caption_tokens: Sequence[str]) -> Counter:
        """The pairs of `named_sequence` as a multiset, for checking a caption whatever its order."""
        return Counter(self.named_sequence(caption_tokens))


def listing(phrases: Sequence[str], conjunction: str) -> str:
    """"A , B and C": the objects in order, commas as their own tokens, as the vocabulary splits them."""
    if len(phrases) == 1:
        return phrases[0]
    return " , ".join(phrases[:-1]) + f" {conjunction} " + phrases[-1]


def inflections(stems: dict[str, str], endings: Sequence[str]) -> dict[str, str]:
    """Every stem + ending -> the stem's meaning: {"rot": "red"} with ("", "e", "er") -> rot, rote, roter."""
    return {stem + ending: meaning for stem, meaning in stems.items() for ending in endings}


def _registry() -> dict[str, CaptionLanguage]:
    from training.caption_languages import english, french, german, spanish

    return {language.code: language for language in (english.ENGLISH, french.FRENCH, german.GERMAN, spanish.SPANISH)}


LANGUAGES: dict[str, CaptionLanguage] = _registry()


def get_language(code: str) -> CaptionLanguage:
    """The language with ISO 639-1 code `code`; a clear error naming the known ones otherwise."""
    if code not in LANGUAGES:
        raise ValueError(f"no caption language {code!r}; known: {', '.join(LANGUAGES)}")
    return LANGUAGES[code]
