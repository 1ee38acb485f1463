"""Model tokens back into written text: the `caption` string a reader gets.

The vocabulary splits punctuation off words ("a red circle , a blue square");
written text attaches it to the word before ("a red circle, a blue square").
The reply's `tokens` keep the model's tokens; only the caption string is joined
this way.
"""

from __future__ import annotations

from typing import Sequence

# Marks written against the word before them, in the languages the captioner writes.
_CLOSING = frozenset(",.;:!?)]}%")
_OPENING = frozenset("([{")


def detokenize(tokens: Sequence[str]) -> str:
    """Join tokens with spaces, except before closing punctuation and after opening brackets."""
    text = ""
    for token in tokens:
        if text and token not in _CLOSING and text[-1] not in _OPENING:
            text += " "
        text += token
    return text
