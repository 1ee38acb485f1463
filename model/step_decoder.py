"""The protocol every caption decoder offers to the decoding strategies.

Greedy decoding, sampling, beam search (plain and diverse) and streaming are
written against these three calls only, so a new decoder (soft attention over a
feature map, a video decoder over frames) plugs in without a branch in
`model/decoding.py`, `model/sampling.py` or the handler. The state is the
decoder's own business: the strategies only pass it back, or ask the decoder to
pick rows of it (as fairseq's `reorder_incremental_state` does).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

DecoderState = Any  # whatever the decoder carries between steps; one row per caption being decoded


class StepDecoder(Protocol):
    def start(self, image_embeddings: torch.Tensor) -> DecoderState:
        """The state before the first word, from (B, E) image embeddings: one row per image."""
        ...

    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """Feed (B,) token ids; return (B, V) logits for the next token and the new state."""
        ...

    def select(self, state: DecoderState, index: torch.Tensor) -> DecoderState:
        """The state whose row i is row `index[i]` of `state`: (N,) ids, repeats allowed.

        Beam search calls it to expand each image to its beams and to follow the
        hypotheses it keeps after each step.
        """
        ...
