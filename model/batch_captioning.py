"""Decode a batch whose requests ask for different decoding options.

A serving batch mixes requests: some greedy with various `max_length`, some
beam search. Greedy is prefix-consistent, so every greedy request shares one
batched greedy run (as long as the longest asks) and is cut to its own length;
beam requests are grouped by (beam_size, max_length), one batched search each.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from model.decoder import DecoderRNN
from model.decoding import Caption, beam_search, greedy_decode

# (step, rows of the full batch, chosen ids for those rows)
GreedyStepCallback = Callable[[int, list[int], torch.Tensor], None]


@dataclass(frozen=True)
class DecodeSpec:
    max_length: int
    beam_size: int = 1
    n_best: int = 1


def cut_to_length(caption: Caption, max_length: int) -> Caption:
    """The caption greedy decoding would have produced with `max_length` steps."""
    if len(caption.tokens) + (1 if caption.ended else 0) <= max_length:
        return caption
    tokens, scores = caption.tokens[:max_length], caption.scores[:max_length]
    return replace(caption, tokens=tokens, scores=scores, score=float(sum(scores)), ended=False)


def decode_mixed(
    decoder: DecoderRNN,
    image_embeddings: torch.Tensor,
    specs: Sequence[DecodeSpec],
    *,
    start_id: int,
    end_id: int,
    on_greedy_step: GreedyStepCallback | None = None,
) -> tuple[list[Caption], int]:
    """One caption per row of `image_embeddings` (B, E), each decoded as its spec says.

    Returns the captions and the number of decoding steps run in total.
    """
    if len(specs) != image_embeddings.shape[0]:
        raise ValueError(f"{len(specs)} specs for {image_embeddings.shape[0]} images")
    captions: list[Caption | None] = [None] * len(specs)
    total_steps = 0
    greedy_rows = [i for i, spec in enumerate(specs) if spec.beam_size == 1]
    if greedy_rows:
        callback = None
        if on_greedy_step is not None:
            callback = lambda step, tokens: on_greedy_step(step, greedy_rows, tokens)  # noqa: E731
        output = greedy_decode(
            decoder,
            image_embeddings[greedy_rows],
            start_id=start_id,
            end_id=end_id,
            max_length=max(specs[i].max_length for i in greedy_rows),
            on_step=callback,
        )
        total_steps += output.steps
        for row, caption in zip(greedy_rows, output.captions):
            captions[row] = cut_to_length(caption, specs[row].max_length)
    beam_groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, spec in enumerate(specs):
        if spec.beam_size > 1:
            beam_groups[(spec.beam_size, spec.max_length)].append(i)
    for (beam_size, max_length), rows in beam_groups.items():
        output = beam_search(
            decoder,
            image_embeddings[rows],
            start_id=start_id,
            end_id=end_id,
            max_length=max_length,
            beam_size=beam_size,
            n_best=max(specs[i].n_best for i in rows),
        )
        total_steps += output.steps
        for row, caption in zip(rows, output.captions):
            captions[row] = replace(caption, alternatives=caption.alternatives[: specs[row].n_best - 1])
    return captions, total_steps  # type: ignore[return-value]
