"""A caption's attention weights as one G x G map per word, the form replies and pictures use."""

from __future__ import annotations

from model.decoding import Caption
from model.vocabulary import Vocabulary


def word_maps(caption: Caption, vocab: Vocabulary, grid_size: int) -> tuple[list[str], list[list[list[float]]]]:
    """The caption's words and, for each, its G x G map (rows top to bottom).

    Tokens that are no word (`<pad>`, `<start>`: `Vocabulary.decode` drops them)
    lose their maps too, so words and maps stay one to one.
    """
    if caption.attention is None:
        raise ValueError("this caption has no attention weights: its decoder does not attend (use soft_attention)")
    words, maps = [], []
    for token, weights in zip(caption.tokens, caption.attention):
        word = vocab.decode([token])
        if not word:
            continue
        words.append(word[0])
        maps.append([weights[row * grid_size : (row + 1) * grid_size] for row in range(grid_size)])
    return words, maps
