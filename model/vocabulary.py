"""Word <-> id mapping with a tokenizer that needs no downloaded data.

Stored as plain JSON (`to_dict`/`from_dict`), never pickled: a pickled class
only loads where that class is importable, and unpickling runs code.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Sequence

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)

# Words (letters, digits, inner apostrophes/hyphens) or single punctuation marks.
_TOKEN_PATTERN = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*|[^\sa-z0-9]")
_DROPPED_PUNCTUATION = set(".!?\"'`()[]{}:;")


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; sentence punctuation is dropped, commas are kept.

    A regular expression instead of NLTK's punkt, so nothing is downloaded.
    """
    return [tok for tok in _TOKEN_PATTERN.findall(text.lower()) if tok not in _DROPPED_PUNCTUATION]


class Vocabulary:
    """Maps words to ids; ids 0-3 are `<pad> <start> <end> <unk>`."""

    def __init__(self, words: Iterable[str] = ()) -> None:
        self.itos: list[str] = list(SPECIAL_TOKENS)
        self.stoi: dict[str, int] = {tok: i for i, tok in enumerate(self.itos)}
        for word in words:
            self.add(word)

    pad_id = property(lambda self: self.stoi[PAD])
    start_id = property(lambda self: self.stoi[START])
    end_id = property(lambda self: self.stoi[END])
    unk_id = property(lambda self: self.stoi[UNK])

    def add(self, word: str) -> int:
        if word not in self.stoi:
            self.stoi[word] = len(self.itos)
            self.itos.append(word)
        return self.stoi[word]

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 4) -> "Vocabulary":
        """Keep words seen at least `min_count` times (4 is the usual COCO threshold).

        Words are ordered by frequency, then alphabetically, so the same captions
        always give the same ids.
        """
        counts = Counter(tok for caption in captions for tok in tokenize(caption))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(w for w in kept if w not in SPECIAL_TOKENS)

    def encode(self, caption: str) -> list[int]:
        """`<start> w1 ... wn <end>` as ids; unknown words become `<unk>`."""
        ids = [self.stoi.get(tok, self.unk_id) for tok in tokenize(caption)]
        return [self.start_id, *ids, self.end_id]

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Words up to the first `<end>`, without special tokens."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
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
        return cls(itos[len(SPECIAL_TOKENS):])
