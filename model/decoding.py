"""Batched step-by-step decoding shared by evaluation and serving.

Every strategy runs one decoder step for the whole batch at a time and talks to
the decoder only through the `StepDecoder` protocol (`start`, `step`, `select`),
so any decoder that offers it is decoded unchanged. Greedy stops as soon as
every caption has produced `<end>`; beam search keeps `beam_size` hypotheses per
image and ranks finished ones with length normalisation; diverse beam search
(Vijayakumar et al., 2016) splits the beams into groups that are penalised for
repeating the words earlier groups chose at the same step. Sampling lives in
`model/sampling.py` and shares the token-by-token loop below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.nn import functional as F

from model.step_decoder import StepDecoder, step_attention

StepCallback = Callable[[int, torch.Tensor], None]
# (logits (B, V), rows still decoding (B,)) -> (log-probs of the chosen tokens (B,), chosen tokens (B,))
TokenChooser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Caption:
    """One decoded caption: token ids (without `<end>`), their log-probs, and the total score.

    `ended` says whether `<end>` was produced within `max_length`. When several
    captions were asked for (beam search's n-best, or several samples),
    `alternatives` holds the others, best first. A decoder that attends gives
    `attention`: per token, the weights over the P grid cells it looked at.
    """

    tokens: list[int]
    scores: list[float]
    score: float
    ended: bool
    alternatives: list["Caption"] = field(default_factory=list)
    attention: list[list[float]] | None = None  # (T, P) one row per token


@dataclass
class DecodeOutput:
    captions: list[Caption]
    steps: int  # decoding steps actually run (early stop makes this < max_length)


StartIds = int | torch.Tensor  # one first token for every row, or (B,) one per row


def first_tokens(start_id: StartIds, rows: int, device: torch.device) -> torch.Tensor:
    """(rows,) the token each caption starts from: `<start>`, or per row, e.g. its language's token.

    A multilingual model is trained on `<fr> w1 ... <end>`: starting a row from its
    language's token is how a request picks the language, with no decoder or
    strategy knowing about languages.
    """
    if isinstance(start_id, torch.Tensor):
        if start_id.shape != (rows,):
            raise ValueError(f"start ids of shape {tuple(start_id.shape)} for {rows} rows")
        return start_id.to(device=device, dtype=torch.long)
    return torch.full((rows,), start_id, dtype=torch.long, device=device)


def start_ids_of(start_id: StartIds, index: torch.Tensor | list[int]) -> StartIds:
    """The start ids of rows `index`, for a run over some of a batch's rows."""
    return start_id[torch.as_tensor(index, dtype=torch.long)] if isinstance(start_id, torch.Tensor) else start_id


def _trim(ids: list[int], logps: list[float], end_id: int) -> tuple[list[int], list[float], bool]:
    if end_id in ids:
        cut = ids.index(end_id)
        return ids[:cut], logps[:cut], True
    return ids, logps, False


def _stacked(steps: list[torch.Tensor | None], dim: int) -> list | None:
    """Per-step attention weights stacked along `dim` as nested lists, or None when the decoder has none."""
    if not steps or steps[0] is None:
        return None
    return torch.stack(steps, dim=dim).float().tolist()


def decode_token_by_token(
    decoder: StepDecoder,
    image_embeddings: torch.Tensor,
    choose: TokenChooser,
    *,
    start_id: StartIds,
    end_id: int,
    max_length: int,
    row_max_lengths: torch.Tensor | None = None,
    on_step: StepCallback | None = None,
) -> DecodeOutput:
    """One caption per row, each step's token picked by `choose`: the loop greedy and sampling share.

    `row_max_lengths` (B,) lets rows stop at their own length (at most `max_length`):
    a row past its length is no longer "still decoding" for `choose`, which is how a
    sampled row draws no random numbers that decoding it alone would not draw.
    """
    batch = image_embeddings.shape[0]
    device = image_embeddings.device
    state = decoder.start(image_embeddings)
    tokens = first_tokens(start_id, batch, device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    chosen, chosen_logps, weights = [], [], []
    for step in range(max_length):
        logits, state = decoder.step(tokens, state)  # (B, V)
        weights.append(step_attention(state))  # (B, P) or None
        decoding = ~finished if row_max_lengths is None else ~finished & (step < row_max_lengths)  # (B,)
        logps, tokens = choose(logits, decoding)  # (B,), (B,)
        tokens = tokens.masked_fill(finished, end_id)
        chosen.append(tokens)
        chosen_logps.append(logps)
        if on_step is not None:
            on_step(step, tokens)
        finished |= tokens == end_id
        stopped = finished if row_max_lengths is None else finished | (step + 1 >= row_max_lengths)
        if bool(stopped.all()):
            break
    ids = torch.stack(chosen, dim=1).tolist()  # (B, steps)
    logps = torch.stack(chosen_logps, dim=1).tolist()
    attention = _stacked(weights, dim=1)  # (B, steps, P) or None
    limits = [max_length] * batch if row_max_lengths is None else row_max_lengths.tolist()
    captions = []
    for row, (row_ids, row_logps, limit) in enumerate(zip(ids, logps, limits)):
        row_ids, row_logps = row_ids[:limit], row_logps[:limit]
        kept_ids, kept_logps, ended = _trim(row_ids, row_logps, end_id)
        # The score includes `<end>`'s log-prob, as beam search's does.
        total = sum(row_logps[: len(kept_ids) + (1 if ended else 0)])
        row_attention = None if attention is None else attention[row][: len(kept_ids)]
        captions.append(Caption(kept_ids, kept_logps, total, ended, attention=row_attention))
    return DecodeOutput(captions, len(chosen))


def _most_likely(logits: torch.Tensor, decoding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return F.log_softmax(logits.float(), dim=-1).max(dim=-1)  # (B,), (B,)


@torch.inference_mode()
def greedy_decode(
    decoder: StepDecoder,
    image_embeddings: torch.Tensor,
    *,
    start_id: StartIds,
    end_id: int,
    max_length: int,
    on_step: StepCallback | None = None,
) -> DecodeOutput:
    """Pick the most likely token at every step, for the whole batch at once.

    Args:
        decoder: the captioner's decoder.
        image_embeddings: (B, E), or (B, P, E) grid cells for an attending decoder.
        start_id, end_id: ids of `<start>` and `<end>`.
        max_length: most tokens per caption, `<end>` included.
        on_step: called after each step with (step, (B,) chosen ids), e.g. to
            stream words; ids of captions that already ended are `end_id`.
    """
    return decode_token_by_token(
        decoder, image_embeddings, _most_likely, start_id=start_id, end_id=end_id, max_length=max_length,
        on_step=on_step,
    )


@dataclass
class _Beams:
    """The hypotheses of a (B, k) beam: what they said, their scores and whether they ended."""

    cumulative: torch.Tensor  # (B, k) summed log-probs: what the hypotheses are ranked by at the end
    objective: torch.Tensor  # (B, k) what the search maximises: `cumulative` minus diversity penalties
    finished: torch.Tensor  # (B, k)
    history: torch.Tensor  # (B, k, t) token ids
    history_logps: torch.Tensor  # (B, k, t)
    lengths: torch.Tensor  # (B, k) tokens said, `<end>` included
    history_attention: torch.Tensor | None = None  # (B, k, t, P) the decoder's attention weights, if any


def _start_beams(batch: int, k: int, group_size: int, device: torch.device) -> _Beams:
    # Only the first beam of each group is live at the start, or all its beams would be one hypothesis.
    cumulative = torch.full((batch, k), float("-inf"), device=device)
    cumulative[:, ::group_size] = 0.0
    return _Beams(
        cumulative=cumulative,
        objective=cumulative.clone(),
        finished=torch.zeros(batch, k, dtype=torch.bool, device=device),
        history=torch.empty(batch, k, 0, dtype=torch.long, device=device),
        history_logps=torch.empty(batch, k, 0, device=device),
        lengths=torch.zeros(batch, k, device=device),
    )


def _choose_in_groups(
    candidates: torch.Tensor, finished: torch.Tensor, groups: int, diversity: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each group's best extensions, later groups penalised for the tokens earlier ones chose.

    Args:
        candidates: (B, k, V) objective of every extension of every hypothesis.
        finished: (B, k) hypotheses that already ended (never penalised: they can only repeat `<end>`).
    Returns:
        (B, k) objective of the chosen extensions, their source beam and their token.
    """
    batch, k, vocab = candidates.shape
    size = k // groups
    chosen_so_far = candidates.new_zeros(batch, vocab)  # (B, V) times each token was chosen this step
    values, beams, tokens = [], [], []
    for group in range(groups):
        columns = slice(group * size, (group + 1) * size)
        scores = candidates[:, columns]  # (B, size, V)
        if group > 0 and diversity:
            live = (~finished[:, columns]).unsqueeze(-1)  # (B, size, 1)
            scores = scores - diversity * chosen_so_far.unsqueeze(1) * live  # Hamming diversity
        top, flat = scores.reshape(batch, size * vocab).topk(size, dim=-1)  # (B, size)
        beam = torch.div(flat, vocab, rounding_mode="floor") + group * size
        token = flat % vocab
        if groups > 1:
            chosen_so_far.scatter_add_(1, token, (~finished.gather(1, beam)).to(chosen_so_far.dtype))
        values.append(top)
        beams.append(beam)
        tokens.append(token)
    return torch.cat(values, 1), torch.cat(beams, 1), torch.cat(tokens, 1)


def _extend(beams: _Beams, logps: torch.Tensor, groups: int, diversity: float) -> tuple[_Beams, torch.Tensor]:
    """One step of the search over (B, k, V) log-probs; returns the new beams and their (B, k) source beams."""
    batch, k, vocab = logps.shape
    objective, beam_index, tokens_bk = _choose_in_groups(
        beams.objective.unsqueeze(-1) + logps, beams.finished, groups, diversity
    )  # (B, k) each
    flat = beam_index * vocab + tokens_bk  # (B, k) into (k*V)
    cumulative = (beams.cumulative.unsqueeze(-1) + logps).view(batch, k * vocab).gather(1, flat)
    step_logps = logps.view(batch, k * vocab).gather(1, flat)
    gather_history = beam_index.unsqueeze(-1).expand_as(beams.history)
    history = torch.cat([beams.history.gather(1, gather_history), tokens_bk.unsqueeze(-1)], 2)
    history_logps = torch.cat([beams.history_logps.gather(1, gather_history), step_logps.unsqueeze(-1)], 2)
    was_finished = beams.finished.gather(1, beam_index)
    lengths = beams.lengths.gather(1, beam_index) + (~was_finished).float()
    return _Beams(cumulative, objective, was_finished, history, history_logps, lengths), beam_index


def _follow_attention(
    history: torch.Tensor | None, attention: torch.Tensor | None, beam_index: torch.Tensor
) -> torch.Tensor | None:
    """The kept hypotheses' attention history: their source beams' (B, k, t, P) plus this step's (B, k, P)."""
    if attention is None:
        return None
    batch, k = beam_index.shape
    step = attention.view(batch, k, -1).gather(1, beam_index.unsqueeze(-1).expand(-1, -1, attention.shape[-1]))
    if history is None:
        return step.unsqueeze(2)  # (B, k, 1, P)
    source = history.gather(1, beam_index[:, :, None, None].expand(-1, -1, *history.shape[2:]))
    return torch.cat([source, step.unsqueeze(2)], dim=2)  # (B, k, t+1, P)


def _ranked_captions(
    beams: _Beams, end_id: int, n_best: int, length_penalty: float
) -> list[Caption]:
    """Per image, the `n_best` distinct hypotheses with the best length-normalised log-prob, best first."""
    normalised = beams.cumulative / beams.lengths.clamp(min=1).pow(length_penalty)
    order = normalised.argsort(dim=1, descending=True).tolist()
    ids, logps = beams.history.tolist(), beams.history_logps.tolist()
    attention = None if beams.history_attention is None else beams.history_attention.float().tolist()
    captions = []
    for b, beam_order in enumerate(order):
        ranked: list[Caption] = []
        seen: set[tuple[tuple[int, ...], bool]] = set()
        for beam in beam_order:
            kept_ids, kept_logps, ended = _trim(ids[b][beam], logps[b][beam], end_id)
            if (tuple(kept_ids), ended) in seen:  # diverse groups can still meet on one caption
                continue
            seen.add((tuple(kept_ids), ended))
            kept_attention = None if attention is None else attention[b][beam][: len(kept_ids)]
            ranked.append(
                Caption(kept_ids, kept_logps, float(beams.cumulative[b, beam]), ended, attention=kept_attention)
            )
            if len(ranked) == n_best:
                break
        best = ranked[0]
        best.alternatives = ranked[1:]
        captions.append(best)
    return captions


@torch.inference_mode()
def beam_search(
    decoder: StepDecoder,
    image_embeddings: torch.Tensor,
    *,
    start_id: StartIds,
    end_id: int,
    max_length: int,
    beam_size: int = 3,
    n_best: int = 1,
    length_penalty: float = 1.0,
    beam_groups: int = 1,
    diversity: float = 0.0,
) -> DecodeOutput:
    """Keep the `beam_size` best partial captions per image, all images in one batch.

    Hypotheses are extended by cumulative log-prob; finished ones are ranked by
    `score / length ** length_penalty` (length counts `<end>`), so long captions
    are not punished for having more terms. With `beam_size=1` this is exactly
    greedy decoding.

    Diverse beam search: with `beam_groups` G > 1 the beams form G groups of
    `beam_size / G`, searched one after the other at each step; group g's
    candidates lose `diversity` for every time an earlier group chose the same
    token at this step (Vijayakumar et al., 2016, Hamming diversity). The penalty
    steers the search only: captions are ranked, and `score` reported, by their
    own log-probs. The first group is never penalised, so with G = 1 this is
    plain beam search, whatever `diversity` is.

    Returns one `Caption` per image (the best), with up to `n_best - 1` others
    in `alternatives`, all distinct.
    """
    if beam_size < 1 or not 1 <= n_best <= beam_size:
        raise ValueError(f"need 1 <= n_best <= beam_size, got n_best={n_best}, beam_size={beam_size}")
    if beam_groups < 1 or beam_size % beam_groups:
        raise ValueError(f"beam_groups must divide beam_size, got beam_groups={beam_groups}, beam_size={beam_size}")
    batch, k = image_embeddings.shape[0], beam_size
    device = image_embeddings.device
    state = decoder.start(image_embeddings)
    state = decoder.select(state, torch.arange(batch, device=device).repeat_interleave(k))  # B*k rows
    tokens = first_tokens(start_id, batch, device).repeat_interleave(k)  # (B*k,)
    beams = _start_beams(batch, k, k // beam_groups, device)
    steps = 0
    for _ in range(max_length):
        steps += 1
        logits, state = decoder.step(tokens, state)
        logps = F.log_softmax(logits.float(), dim=-1).view(batch, k, -1)  # (B, k, V)
        # A finished hypothesis can only repeat `<end>` at no cost, so it keeps its score.
        done_row = torch.full((logps.shape[-1],), float("-inf"), device=device)
        done_row[end_id] = 0.0
        logps = torch.where(beams.finished.unsqueeze(-1), done_row, logps)
        history_attention = beams.history_attention
        beams, beam_index = _extend(beams, logps, beam_groups, diversity)
        beams.history_attention = _follow_attention(history_attention, step_attention(state), beam_index)
        tokens_bk = beams.history[:, :, -1]  # (B, k)
        beams.finished = beams.finished | (tokens_bk == end_id)
        reorder = (beam_index + torch.arange(batch, device=device).unsqueeze(1) * k).view(-1)
        state = decoder.select(state, reorder)
        tokens = tokens_bk.reshape(-1)
        if bool(beams.finished.all()):
            break
    return DecodeOutput(_ranked_captions(beams, end_id, n_best, length_penalty), steps)
