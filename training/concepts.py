"""Visual concepts: the words and short phrases an image's captions use, as an auxiliary target.

A training-only loss ("visual concepts" learned from captions, as in Fang et
al., 2015, extended from words to phrases). With a backbone trained from
scratch, the caption loss reaches the encoder only through the LSTM and is slow
to start; predicting concepts from the image embedding gives the encoder a
direct signal. Words alone do not bind attributes: "red", "blue", "circle",
"square" are all present whether the picture holds a red circle and a blue
square or a red square and a blue circle. Phrases do ("red circle", "large red
circle"), so the embedding must say which attributes belong together, which is
what a caption has to get right. See README, "Training", for what it changed.
Neither the phrases nor the head are exported.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from training.coco_data import CaptionBatch


def ngrams(tokens: Sequence[int], max_n: int) -> set[tuple[int, ...]]:
    """Every run of 1..max_n consecutive tokens."""
    return {tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1)}


class ConceptVocabulary:
    """The most frequent caption phrases (up to `max_n` words), each a concept index."""

    def __init__(self, phrases: Iterable[Sequence[int]], max_n: int) -> None:
        self.phrases = [tuple(p) for p in phrases]
        self.index = {p: i for i, p in enumerate(self.phrases)}
        self.max_n = max_n

    def __len__(self) -> int:
        return len(self.phrases)

    @classmethod
    def build(
        cls, captions: Iterable[Sequence[int]], *, max_n: int = 3, min_count: int = 5, max_concepts: int = 1000
    ) -> "ConceptVocabulary":
        """From caption token ids without special tokens; a phrase counts once per caption."""
        counts: Counter = Counter()
        for caption in captions:
            counts.update(ngrams(caption, max_n))
        ranked = sorted((p for p, c in counts.items() if c >= min_count), key=lambda p: (-counts[p], p))
        return cls(ranked[:max_concepts], max_n)

    def to_dict(self) -> dict:
        return {"max_n": self.max_n, "phrases": [list(p) for p in self.phrases]}

    @classmethod
    def from_dict(cls, data: dict) -> "ConceptVocabulary":
        return cls(data["phrases"], data["max_n"])

    def targets(self, batch: CaptionBatch, images: int, first_word_id: int) -> torch.Tensor:
        """(images, concepts) multi-hot: the concepts any caption of each image uses."""
        targets = torch.zeros(images, len(self))
        for caption, length, owner in zip(batch.captions.tolist(), batch.lengths.tolist(), batch.owners.tolist()):
            words = [t for t in caption[:length] if t >= first_word_id]
            hits = [self.index[p] for p in ngrams(words, self.max_n) if p in self.index]
            targets[owner, hits] = 1.0
        return targets


class ConceptHead(nn.Module):
    """A linear read-out of the concepts from the image embedding."""

    def __init__(self, embed_size: int, concepts: ConceptVocabulary) -> None:
        super().__init__()
        self.concepts = concepts
        self.linear = nn.Linear(embed_size, len(concepts))

    def loss(self, embeddings: torch.Tensor, batch: CaptionBatch, first_word_id: int) -> torch.Tensor:
        """Binary cross-entropy summed over concepts, averaged over images.

        Summed, not averaged, over concepts: how strongly each concept pulls on
        the encoder should not shrink as the inventory grows.
        """
        targets = self.concepts.targets(batch, len(embeddings), first_word_id).to(embeddings.device)
        logits = self.linear(embeddings)
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(embeddings)
