"""Word <-> id mapping with a tokenizer that needs no downloaded data.

Stored as plain JSON (`to_dict`/`from_dict`), never pickled: a pickled class
only loads where that class is importable, and unpickling runs code.

A multilingual vocabulary also holds one token per caption language (`<fr>`),
which takes `<start>`'s place at the head of a caption in that language: the
decoder learns to write in the language it is started with (Johnson et al.
2017), from one shared vocabulary.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Sequence

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)

# Words (letters of any script, digits, inner apostrophes/hyphens: "don't", "d'un") or single
# punctuation marks.
_TOKEN_PATTERN = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*|[^\s\w]|_")
_DROPPED_PUNCTUATION = set(".!?\"'`()[]{}:;")
# Languages whose spelling needs capitals: German capitalises every noun ("ein roter Kreis").
CASED_LANGUAGES = frozenset({"de"})
_LANGUAGE_TOKEN = re.compile(r"<([a-z]{2,3})>")


def tokenize(text: str, language: str | None = None) -> list[str]:
    """Word tokens; sentence punctuation is dropped, commas are kept.

    Lower-cased, except in languages (`CASED_LANGUAGES`) where case is spelling.
    A regular expression instead of NLTK's punkt, so nothing is downloaded.
    """
    if language not in CASED_LANGUAGES:
        text = text.lower()
    return [tok for tok in _TOKEN_PATTERN.findall(text) if tok not in _DROPPED_PUNCTUATION]


def language_token(code: str) -> str:
    """The token that starts a caption in language `code` (ISO 639-1): `fr` -> `<fr>`."""
    token = f"<{code}>"
    if not _LANGUAGE_TOKEN.fullmatch(token):
        raise ValueError(f"a language is a lower-case ISO 639 code such as 'en' or 'fr', got {code!r}")
    return token


class Vocabulary:
    """Maps words to ids; ids 0-3 are `<pad> <start> <end> <unk>`."""

    def __init__(self, words: Iterable[str] = (), languages: Iterable[str] = ()) -> None:
        self.itos: list[str] = list(SPECIAL_TOKENS)
        self.stoi: dict[str, int] = {tok: i for i, tok in enumerate(self.itos)}
        self._languages: dict[str, int] = {}  # code -> id of its start token
        for code in languages:
            self.add(language_token(code))
        for word in words:
            self.add(word)

    pad_id = property(lambda self: self.stoi[PAD])
    start_id = property(lambda self: self.stoi[START])
    end_id = property(lambda self: self.stoi[END])
    unk_id = property(lambda self: self.stoi[UNK])

    @property
    def unwritten_ids(self) -> list[int]:
        """Ids that start or pad a caption but are never one of its words: `<pad>`, `<start>`, language tokens.

        Decoding never chooses them (`decode_mixed`'s `unwritten_ids`), so a caption's
        tokens and their scores stay aligned; `decode` skips them in older outputs.
        """
        return [self.pad_id, self.start_id, *self._languages.values()]

    def add(self, word: str) -> int:
        if word not in self.stoi:
            self.stoi[word] = len(self.itos)
            self.itos.append(word)
            language = _LANGUAGE_TOKEN.fullmatch(word)
            if language:
                self._languages[language.group(1)] = self.stoi[word]
        return self.stoi[word]

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    @property
    def languages(self) -> list[str]:
        """The caption languages this vocabulary has start tokens for; [] for a one-language model."""
        return list(self._languages)

    def start_id_for(self, language: str | None) -> int:
        """The first token of a caption in `language`: its language token, or `<start>`.

        A one-language vocabulary starts every caption with `<start>`, whatever is asked;
        which languages a model accepts is the caller's check (`languages`).
        """
        if language is None or not self._languages:
            return self.start_id
        if language not in self._languages:
            raise ValueError(f"no captions in {language!r} here; languages: {', '.join(self.languages)}")
        return self._languages[language]

    @classmethod
    def build(
        cls, captions: Iterable[str | tuple[str, str]], min_count: int = 4, languages: Sequence[str] = ()
    ) -> "Vocabulary":
        """Keep words seen at least `min_count` times (4 is the usual COCO threshold).

        `captions` are strings, or (caption, language) pairs when languages differ
        in how they are tokenised. `languages` adds their start tokens (ids 4, 5, ...),
        for a multilingual model. Words are ordered by frequency, then
        alphabetically, so the same captions always give the same ids.
        """
        counts = Counter(
            tok for caption in captions
            for tok in (tokenize(caption) if isinstance(caption, str) else tokenize(*caption))
        )
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls((w for w in kept if w not in SPECIAL_TOKENS), languages=languages)

    def encode(self, caption: str, language: str | None = None) -> list[int]:
        """`<start> w1 ... wn <end>` as ids (`<fr> w1 ... wn <end>` in a multilingual vocabulary).

        Unknown words become `<unk>`.
        """
        ids = [self.stoi.get(tok, self.unk_id) for tok in tokenize(caption, language)]
        return [self.start_id_for(language), *ids, self.end_id]

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Words up to the first `<end>`, without special or language tokens."""
        skipped = set(self.unwritten_ids)
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in skipped:
                continue
            words.append(self.itos[i] if 0 <= i < len(self.itos) else UNK)
        return words

    def to_dict(self) -> dict[str, Any]:
        return {"itos": list(self.itos)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Vocabulary":
        itos = list(values["itos"])
        if tuple(itos[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocabulary must start with {SPECIAL_TOKENS}, got {itos[:4]}")
        if len(set(itos)) != len(itos):
            raise ValueError("vocabulary has duplicate words")
        return cls(itos[len(SPECIAL_TOKENS):])  # language tokens are words of the list, in their places
