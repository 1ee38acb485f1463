"""Sampling captions: temperature, top-k and nucleus (top-p), reproducible per request.

Every request brings its own `torch.Generator`, and at each step draws one
uniform number per caption of its own that is still being decoded, from its own
generator, in a fixed order. So what a request gets depends on its image, its
settings and its seed only, never on the other requests decoded in the same
batch. Scores are the model's own log-probabilities (temperature 1, nothing
filtered), so they compare with greedy and beam scores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch.nn import functional as F

from model.decoding import Caption, DecodeOutput, StartIds, decode_token_by_token, start_ids_of
from model.step_decoder import StepDecoder

SAMPLING_ROUNDS = 3  # most sampling runs spent finding `num_captions` distinct captions
# (step, image rows, (N,) chosen ids) for the images that asked for one caption, which can be streamed
ImageStepCallback = Callable[[int, list[int], torch.Tensor], None]


@dataclass(frozen=True)
class SamplingSettings:
    """How one request samples: softmax temperature, then the `top_k` most likely tokens (0: all),
    then the smallest set of them holding `top_p` of the probability (1.0: all)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def filtered_distribution(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row temperature, top-k and top-p, as Hugging Face's logits warpers apply them in turn.

    Args:
        logits: (N, V).
        temperature, top_p: (N,) floats; top_k: (N,) ints, 0 for no limit.
    Returns:
        (N, V) probabilities over the tokens sorted most likely first (zero for the
        filtered ones, not renormalised) and (N, V) the token ids in that order.
    """
    sorted_logits, order = (logits.float() / temperature.unsqueeze(1)).sort(dim=-1, descending=True)  # (N, V)
    vocab = logits.shape[-1]
    rank = torch.arange(vocab, device=logits.device).unsqueeze(0)  # (1, V)
    limit = torch.where(top_k > 0, top_k, vocab).unsqueeze(1)  # (N, 1)
    sorted_logits = sorted_logits.masked_fill(rank >= limit, float("-inf"))
    probs = F.softmax(sorted_logits, dim=-1)  # (N, V)
    mass_before = probs.cumsum(dim=-1) - probs  # the most likely token always stays
    outside = (mass_before >= top_p.unsqueeze(1)) & (top_p < 1.0).unsqueeze(1)  # 1.0 keeps all, rounding aside
    return probs.masked_fill(outside, 0.0), order


def draw_uniforms(generators: Sequence[torch.Generator], drawing: list[bool]) -> torch.Tensor:
    """(N,) uniform numbers in [0, 1) for the rows that draw, each from its row's generator.

    Rows sharing a generator (several captions of one request) take its numbers in
    row order; rows that do not draw take none, and get 0.
    """
    values = torch.zeros(len(generators))
    rows_of: dict[int, list[int]] = {}
    for row, (generator, draws) in enumerate(zip(generators, drawing)):
        if draws:
            rows_of.setdefault(id(generator), []).append(row)
    for rows in rows_of.values():
        values[rows] = torch.rand(len(rows), generator=generators[rows[0]])
    return values


def _sampler(
    settings: Sequence[SamplingSettings], generators: Sequence[torch.Generator], device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A `TokenChooser` that samples each row with its settings and generator (inverse-CDF sampling)."""
    temperature = torch.tensor([s.temperature for s in settings], device=device)
    top_k = torch.tensor([s.top_k for s in settings], device=device)
    top_p = torch.tensor([s.top_p for s in settings], device=device)

    def choose(logits: torch.Tensor, decoding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs, order = filtered_distribution(logits, temperature, top_k, top_p)  # (N, V) each
        cdf = probs.cumsum(dim=-1)  # (N, V)
        uniforms = draw_uniforms(generators, decoding.tolist()).to(device)  # (N,)
        target = (uniforms * cdf[:, -1]).unsqueeze(1)  # (N, 1), below the total mass
        position = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)  # (N, 1)
        tokens = order.gather(1, position).squeeze(1)  # (N,)
        logps = F.log_softmax(logits.float(), dim=-1).gather(1, tokens.unsqueeze(1)).squeeze(1)
        return logps, tokens

    return choose


@torch.inference_mode()
def sample_decode(
    decoder: StepDecoder,
    image_embeddings: torch.Tensor,
    *,
    settings: Sequence[SamplingSettings],
    generators: Sequence[torch.Generator],
    max_lengths: Sequence[int],
    start_id: StartIds,
    end_id: int,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> DecodeOutput:
    """One sampled caption per row of `image_embeddings` (N, E), every row with its own settings.

    `generators[i]` draws row i's numbers (rows may share one); `max_lengths[i]`
    is row i's most tokens, `<end>` included.
    """
    device = image_embeddings.device
    return decode_token_by_token(
        decoder,
        image_embeddings,
        _sampler(settings, generators, device),
        start_id=start_id,
        end_id=end_id,
        max_length=max(max_lengths),
        row_max_lengths=torch.tensor(list(max_lengths), device=device),
        on_step=on_step,
    )


def _rank(captions: list[Caption], length_penalty: float) -> list[Caption]:
    """Best first by length-normalised log-prob, as beam search ranks its hypotheses."""
    return sorted(captions, key=lambda c: -c.score / max(1, len(c.tokens) + c.ended) ** length_penalty)


@torch.inference_mode()
def sample_captions(
    decoder: StepDecoder,
    image_embeddings: torch.Tensor,
    *,
    settings: Sequence[SamplingSettings],
    num_captions: Sequence[int],
    generators: Sequence[torch.Generator],
    max_lengths: Sequence[int],
    start_id: StartIds,
    end_id: int,
    length_penalty: float = 1.0,
    rounds: int = SAMPLING_ROUNDS,
    on_step: ImageStepCallback | None = None,
) -> tuple[list[Caption], int]:
    """`num_captions[i]` distinct sampled captions for image i of (B, E) embeddings, all images together.

    Each image is sampled `num_captions[i]` times at once; when some samples are the
    same caption, the missing ones are sampled again (all such images in one run),
    up to `rounds` runs in all. An image whose captions keep repeating gets fewer.
    Returns per image the best caption with the others in `alternatives` (ranked
    like beam search's), and the decoding steps run. `on_step` sees the first run's
    tokens of the images that asked for one caption.
    """
    found: list[list[Caption]] = [[] for _ in num_captions]
    total_steps = 0
    for round_index in range(rounds):
        wanted = [n - len(have) for n, have in zip(num_captions, found)]
        owners = [image for image, count in enumerate(wanted) for _ in range(count)]
        if not owners:
            break
        callback = _image_callback(on_step, owners, num_captions) if round_index == 0 else None
        output = sample_decode(
            decoder,
            image_embeddings[owners],  # (N, E): one row per caption still wanted
            settings=[settings[i] for i in owners],
            generators=[generators[i] for i in owners],
            max_lengths=[max_lengths[i] for i in owners],
            start_id=start_ids_of(start_id, owners),
            end_id=end_id,
            on_step=callback,
        )
        total_steps += output.steps
        for image, caption in zip(owners, output.captions):
            if all((c.tokens, c.ended) != (caption.tokens, caption.ended) for c in found[image]):
                found[image].append(caption)
    results = []
    for captions in found:
        best, *others = _rank(captions, length_penalty)
        results.append(replace(best, alternatives=others))
    return results, total_steps


def _image_callback(
    on_step: ImageStepCallback | None, owners: list[int], num_captions: Sequence[int]
) -> Callable[[int, torch.Tensor], None] | None:
    """Forward a run's step to `on_step` for the rows of images that asked for one caption."""
    if on_step is None:
        return None
    rows = [row for row, image in enumerate(owners) if num_captions[image] == 1]
    images = [owners[row] for row in rows]
    if not rows:
        return None
    return lambda step, tokens: on_step(step, images, tokens[rows])
