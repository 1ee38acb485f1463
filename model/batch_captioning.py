"""Decode a batch whose requests ask for different decoding options.

A serving batch mixes requests: greedy with various `max_length`, beam search
(plain or diverse), sampling. Greedy is prefix-consistent, so every greedy
request shares one batched greedy run (as long as the longest asks) and is cut
to its own length; beam requests are grouped by their search settings
(beam_size, max_length, beam_groups, diversity), one batched search each; every
sampling request, whatever its settings, joins one batched sampling run, each
with its own random generator so that its captions do not depend on the batch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from model.decoding import Caption, StartIds, beam_search, greedy_decode, start_ids_of
from model.sampling import SamplingSettings, sample_captions
from model.step_decoder import StepDecoder, WithoutTokens

# (step, rows of the full batch, chosen ids for those rows): the token-by-token runs, for streaming
TokenStepCallback = Callable[[int, list[int], torch.Tensor], None]


@dataclass(frozen=True)
class DecodeSpec:
    """How one image is decoded: the model's side of a request's options.

    `n_best` is how many captions come back: beam search's n best hypotheses, or
    that many distinct samples. Sampling (`sample=True`) uses `temperature`,
    `top_k` (0: no limit), `top_p` and `seed` (None: a fresh random one); beam
    search with `beam_groups` > 1 is diverse beam search with penalty `diversity`.
    """

    max_length: int
    beam_size: int = 1
    n_best: int = 1
    beam_groups: int = 1
    diversity: float = 0.0
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def method(self) -> str:
        if self.sample:
            return "sample"
        if self.beam_size == 1:
            return "greedy"
        return "diverse_beam" if self.beam_groups > 1 else "beam"

    def generator(self) -> torch.Generator:
        """This request's own random numbers (CPU, so a seed means the same on every device)."""
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


def cut_to_length(caption: Caption, max_length: int) -> Caption:
    """The caption greedy decoding would have produced with `max_length` steps."""
    if len(caption.tokens) + (1 if caption.ended else 0) <= max_length:
        return caption
    tokens, scores = caption.tokens[:max_length], caption.scores[:max_length]
    attention = None if caption.attention is None else caption.attention[:max_length]
    return replace(caption, tokens=tokens, scores=scores, score=float(sum(scores)), ended=False, attention=attention)


def _rows_calling(on_step: TokenStepCallback | None, rows: list[int]) -> Callable | None:
    """`on_step` with a run's own row positions turned into rows of the full batch."""
    if on_step is None:
        return None
    return lambda step, positions, tokens: on_step(step, [rows[p] for p in positions], tokens)


def _decode_greedy(decoder, embeddings, specs, rows, ids, on_step) -> tuple[dict[int, Caption], int]:
    callback = None
    if on_step is not None:
        callback = lambda step, tokens: on_step(step, rows, tokens)  # noqa: E731
    output = greedy_decode(
        decoder, embeddings[rows], max_length=max(specs[i].max_length for i in rows), on_step=callback, **ids(rows)
    )
    return {row: cut_to_length(c, specs[row].max_length) for row, c in zip(rows, output.captions)}, output.steps


def _decode_beams(decoder, embeddings, specs, rows, ids) -> tuple[dict[int, Caption], int]:
    """One batched search per set of search settings; `n_best` is cut per request afterwards."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i in rows:
        spec = specs[i]
        groups[(spec.beam_size, spec.max_length, spec.beam_groups, spec.diversity)].append(i)
    captions, steps = {}, 0
    for (beam_size, max_length, beam_groups, diversity), members in groups.items():
        output = beam_search(
            decoder, embeddings[members], max_length=max_length, beam_size=beam_size,
            n_best=max(specs[i].n_best for i in members), beam_groups=beam_groups, diversity=diversity,
            **ids(members),
        )
        steps += output.steps
        for row, caption in zip(members, output.captions):
            captions[row] = replace(caption, alternatives=caption.alternatives[: specs[row].n_best - 1])
    return captions, steps


def _decode_samples(decoder, embeddings, specs, rows, ids, on_step) -> tuple[dict[int, Caption], int]:
    chosen = [specs[i] for i in rows]
    captions, steps = sample_captions(
        decoder,
        embeddings[rows],
        settings=[SamplingSettings(s.temperature, s.top_k, s.top_p) for s in chosen],
        num_captions=[s.n_best for s in chosen],
        generators=[s.generator() for s in chosen],
        max_lengths=[s.max_length for s in chosen],
        on_step=_rows_calling(on_step, rows),
        **ids(rows),
    )
    return dict(zip(rows, captions)), steps


def decode_mixed(
    decoder: StepDecoder,
    image_embeddings: torch.Tensor,
    specs: Sequence[DecodeSpec],
    *,
    start_id: StartIds,
    end_id: int,
    unwritten_ids: Sequence[int] = (),
    on_step: TokenStepCallback | None = None,
) -> tuple[list[Caption], int]:
    """The captions for each row of `image_embeddings` (B, E), each decoded as its spec says.

    `start_id` is every row's first token, or (B,) each row's own (its language's, in a
    multilingual model). `unwritten_ids` are never chosen (the vocabulary's `unwritten_ids`:
    padding, start and language tokens), so every token returned is a word or `<end>`.

    `on_step` sees the tokens of greedy rows and of sampled rows asking for one
    caption as they are chosen (beam search knows its captions only at the end).
    Returns the captions (the best, others in `alternatives`) and the number of
    decoding steps run in total.
    """
    if len(specs) != image_embeddings.shape[0]:
        raise ValueError(f"{len(specs)} specs for {image_embeddings.shape[0]} images")
    if unwritten_ids:
        decoder = WithoutTokens(decoder, list(unwritten_ids))
    def ids(rows: list[int]) -> dict:  # the token ids a run over `rows` starts and stops at
        return dict(start_id=start_ids_of(start_id, rows), end_id=end_id)

    by_method: dict[str, list[int]] = defaultdict(list)
    for i, spec in enumerate(specs):
        by_method["beam" if spec.method == "diverse_beam" else spec.method].append(i)
    captions: dict[int, Caption] = {}
    total_steps = 0
    runs = (
        ("greedy", lambda rows: _decode_greedy(decoder, image_embeddings, specs, rows, ids, on_step)),
        ("beam", lambda rows: _decode_beams(decoder, image_embeddings, specs, rows, ids)),
        ("sample", lambda rows: _decode_samples(decoder, image_embeddings, specs, rows, ids, on_step)),
    )
    for method, run in runs:
        if by_method.get(method):
            decoded, steps = run(by_method[method])
            captions.update(decoded)
            total_steps += steps
    return [captions[i] for i in range(len(specs))], total_steps
