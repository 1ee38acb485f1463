"""Batched step-by-step decoding shared by evaluation and serving.

Both decoders run one LSTM step for the whole batch at a time. Greedy stops as
soon as every caption has produced `<end>`; beam search keeps `beam_size`
hypotheses per image and ranks finished ones with length normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.nn import functional as F

from model.decoder import DecoderRNN

StepCallback = Callable[[int, torch.Tensor], None]


@dataclass
class Caption:
    """One decoded caption: token ids (without `<end>`), their log-probs, and the total score.

    `ended` says whether `<end>` was produced within `max_length`. For beam
    search, `alternatives` holds the other n-best hypotheses, best first.
    """

    tokens: list[int]
    scores: list[float]
    score: float
    ended: bool
    alternatives: list["Caption"] = field(default_factory=list)


@dataclass
class DecodeOutput:
    captions: list[Caption]
    steps: int  # decoding steps actually run (early stop makes this < max_length)


def _trim(ids: list[int], logps: list[float], end_id: int) -> tuple[list[int], list[float], bool]:
    if end_id in ids:
        cut = ids.index(end_id)
        return ids[:cut], logps[:cut], True
    return ids, logps, False


@torch.inference_mode()
def greedy_decode(
    decoder: DecoderRNN,
    image_embeddings: torch.Tensor,
    *,
    start_id: int,
    end_id: int,
    max_length: int,
    on_step: StepCallback | None = None,
) -> DecodeOutput:
    """Pick the most likely token at every step, for the whole batch at once.

    Args:
        decoder: the captioner's decoder.
        image_embeddings: (B, E).
        start_id, end_id: ids of `<start>` and `<end>`.
        max_length: most tokens per caption, `<end>` included.
        on_step: called after each step with (step, (B,) chosen ids), e.g. to
            stream words; ids of captions that already ended are `end_id`.
    """
    batch = image_embeddings.shape[0]
    device = image_embeddings.device
    state = decoder.start(image_embeddings)
    tokens = torch.full((batch,), start_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    chosen, chosen_logps = [], []
    for step in range(max_length):
        logits, state = decoder.step(tokens, state)  # (B, V)
        logps, tokens = F.log_softmax(logits.float(), dim=-1).max(dim=-1)  # (B,), (B,)
        tokens = tokens.masked_fill(finished, end_id)
        chosen.append(tokens)
        chosen_logps.append(logps)
        if on_step is not None:
            on_step(step, tokens)
        finished |= tokens == end_id
        if bool(finished.all()):
            break
    ids = torch.stack(chosen, dim=1).tolist()  # (B, steps)
    logps = torch.stack(chosen_logps, dim=1).tolist()
    captions = []
    for row_ids, row_logps in zip(ids, logps):
        kept_ids, kept_logps, ended = _trim(row_ids, row_logps, end_id)
        # The score includes `<end>`'s log-prob, as beam search's does.
        total = sum(row_logps[: len(kept_ids) + (1 if ended else 0)])
        captions.append(Caption(kept_ids, kept_logps, total, ended))
    return DecodeOutput(captions, len(chosen))


@torch.inference_mode()
def beam_search(
    decoder: DecoderRNN,
    image_embeddings: torch.Tensor,
    *,
    start_id: int,
    end_id: int,
    max_length: int,
    beam_size: int = 3,
    n_best: int = 1,
    length_penalty: float = 1.0,
) -> DecodeOutput:
    """Keep the `beam_size` best partial captions per image, all images in one batch.

    Hypotheses are extended by cumulative log-prob; finished ones are ranked by
    `score / length ** length_penalty` (length counts `<end>`), so long captions
    are not punished for having more terms. With `beam_size=1` this is exactly
    greedy decoding.

    Returns one `Caption` per image (the best), with up to `n_best - 1` others
    in `alternatives`.
    """
    if beam_size < 1 or not 1 <= n_best <= beam_size:
        raise ValueError(f"need 1 <= n_best <= beam_size, got n_best={n_best}, beam_size={beam_size}")
    batch, k = image_embeddings.shape[0], beam_size
    device = image_embeddings.device
    h, c = decoder.start(image_embeddings)  # (L, B, H) each
    h = h.repeat_interleave(k, dim=1)  # (L, B*k, H)
    c = c.repeat_interleave(k, dim=1)
    tokens = torch.full((batch * k,), start_id, dtype=torch.long, device=device)
    # Only the first beam is live at the start, or all k would be the same hypothesis.
    cumulative = torch.full((batch, k), float("-inf"), device=device)
    cumulative[:, 0] = 0.0
    finished = torch.zeros(batch, k, dtype=torch.bool, device=device)
    history = torch.empty(batch, k, 0, dtype=torch.long, device=device)
    history_logps = torch.empty(batch, k, 0, device=device)
    lengths = torch.zeros(batch, k, device=device)
    steps = 0
    for _ in range(max_length):
        steps += 1
        logits, (h, c) = decoder.step(tokens, (h, c))
        logps = F.log_softmax(logits.float(), dim=-1).view(batch, k, -1)  # (B, k, V)
        vocab = logps.shape[-1]
        # A finished hypothesis can only repeat `<end>` at no cost, so it keeps its score.
        done_row = torch.full((vocab,), float("-inf"), device=device)
        done_row[end_id] = 0.0
        logps = torch.where(finished.unsqueeze(-1), done_row, logps)
        candidates = (cumulative.unsqueeze(-1) + logps).view(batch, k * vocab)  # (B, k*V)
        cumulative, flat = candidates.topk(k, dim=-1)  # (B, k)
        beam_index = torch.div(flat, vocab, rounding_mode="floor")
        tokens_bk = flat % vocab
        step_logps = logps.view(batch, k * vocab).gather(1, flat)
        history = torch.cat([history.gather(1, beam_index.unsqueeze(-1).expand_as(history)), tokens_bk.unsqueeze(-1)], 2)
        history_logps = torch.cat(
            [history_logps.gather(1, beam_index.unsqueeze(-1).expand_as(history_logps)), step_logps.unsqueeze(-1)], 2
        )
        was_finished = finished.gather(1, beam_index)
        lengths = lengths.gather(1, beam_index) + (~was_finished).float()
        finished = was_finished | (tokens_bk == end_id)
        reorder = (beam_index + torch.arange(batch, device=device).unsqueeze(1) * k).view(-1)
        h, c = h[:, reorder], c[:, reorder]
        tokens = tokens_bk.view(-1)
        if bool(finished.all()):
            break
    normalised = cumulative / lengths.clamp(min=1).pow(length_penalty)
    order = normalised.argsort(dim=1, descending=True)[:, :n_best]
    ids, logps_list = history.tolist(), history_logps.tolist()
    captions = []
    for b in range(batch):
        ranked = []
        for beam in order[b].tolist():
            kept_ids, kept_logps, ended = _trim(ids[b][beam], logps_list[b][beam], end_id)
            ranked.append(Caption(kept_ids, kept_logps, float(cumulative[b, beam]), ended))
        best = ranked[0]
        best.alternatives = ranked[1:]
        captions.append(best)
    return DecodeOutput(captions, steps)
