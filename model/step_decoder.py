"""The protocol every caption decoder offers to the decoding strategies.

Greedy decoding, sampling, beam search (plain and diverse) and streaming are
written against these three calls only, so a new decoder (soft attention over a
feature map, a video decoder over frames) plugs in without a branch in
`model/decoding.py`, `model/sampling.py` or the handler. The state is the
decoder's own business: the strategies only pass it back, or ask the decoder to
pick rows of it (as fairseq's `reorder_incremental_state` does).

A decoder that attends over image regions puts the weights each step used in
its state's `attention` field, (B, P); the strategies read them through
`step_attention` and keep them with each caption's tokens (beam search reorders
them with its hypotheses). For a decoder without one, that is None.

For training, every decoder offers `teacher_forced(embeddings, captions,
lengths) -> TeacherForced`: the logits of the positions it predicts, their
targets and, for an attending decoder, the weights of every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

DecoderState = Any  # whatever the decoder carries between steps; one row per caption being decoded


@dataclass
class TeacherForced:
    """A teacher-forced pass: what the caption loss and the attention regulariser need."""

    logits: torch.Tensor  # (N, V) at every predicted position
    targets: torch.Tensor  # (N,) the token each position should predict
    attention: torch.Tensor | None = None  # (B, T, P) per step; zero past a caption's end


class StepDecoder(Protocol):
    def start(self, image_embeddings: torch.Tensor) -> DecoderState:
        """The state before the first word, from (B, E) image embeddings (or a (B, P, E) grid): one row per image."""
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


def step_attention(state: DecoderState) -> torch.Tensor | None:
    """(B, P) attention weights of the step that produced `state`, or None for a decoder without attention."""
    return getattr(state, "attention", None)


class WithoutTokens:
    """A decoder whose steps never choose `token_ids`: their logits are -inf.

    A caption never contains `<pad>`, `<start>` or a language token, but nothing in
    a trained (or random) decoder's logits rules them out, and at a high sampling
    temperature they are drawn. Masked here, every strategy (greedy, beam, sampling,
    streaming) writes only words, and each caption's scores match its words one to one.
    """

    def __init__(self, decoder: StepDecoder, token_ids: list[int]) -> None:
        self.decoder = decoder
        self.token_ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long)

    def start(self, image_embeddings: torch.Tensor) -> DecoderState:
        return self.decoder.start(image_embeddings)

    def step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        logits, state = self.decoder.step(tokens, state)  # (B, V)
        return logits.index_fill(1, self.token_ids.to(logits.device), float("-inf")), state

    def select(self, state: DecoderState, index: torch.Tensor) -> DecoderState:
        return self.decoder.select(state, index)
