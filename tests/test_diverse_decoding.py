"""Sampling, several captions per image and diverse beam search, on tiny random models."""

import pytest
import torch

from model.batch_captioning import DecodeSpec, decode_mixed
from model.decoding import beam_search, greedy_decode
from model.sampling import SamplingSettings, filtered_distribution, sample_captions, sample_decode
from tests.helpers import tiny_captioner


def _embeddings(model, batch=4, seed=1):
    size = model.config.image_size
    return model.encode(torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)))


def _ids(vocab):
    return dict(start_id=vocab.start_id, end_id=vocab.end_id)


def _sample(model, vocab, embeddings, seed, max_length=12, **settings):
    rows = embeddings.shape[0]
    generator = torch.Generator().manual_seed(seed)
    return sample_decode(
        model.decoder, embeddings, settings=[SamplingSettings(**settings)] * rows, generators=[generator] * rows,
        max_lengths=[max_length] * rows, **_ids(vocab),
    ).captions


def _tokens(captions):
    return [c.tokens for c in captions]


def test_sampling_with_a_seed_is_reproducible_and_differs_across_seeds():
    model, vocab = tiny_captioner(2)
    embeddings = _embeddings(model)
    first = _sample(model, vocab, embeddings, seed=7, temperature=1.5)
    assert _tokens(first) == _tokens(_sample(model, vocab, embeddings, seed=7, temperature=1.5))
    others = [_tokens(_sample(model, vocab, embeddings, seed=s, temperature=1.5)) for s in (8, 9)]
    assert all(other != _tokens(first) for other in others)


@pytest.mark.parametrize("settings", [dict(temperature=1e-6), dict(top_k=1), dict(top_p=1e-6)])
def test_sampling_that_leaves_one_choice_is_greedy(settings):
    model, vocab = tiny_captioner(3)
    embeddings = _embeddings(model, batch=5)
    greedy = greedy_decode(model.decoder, embeddings, max_length=12, **_ids(vocab)).captions
    sampled = _sample(model, vocab, embeddings, seed=0, **settings)
    assert _tokens(sampled) == _tokens(greedy)
    for s, g in zip(sampled, greedy):
        assert s.scores == pytest.approx(g.scores, abs=1e-5), "scores are the model's own log-probs"
        assert s.ended == g.ended


def test_top_k_and_top_p_keep_only_the_most_likely_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3))
    probs, order = filtered_distribution(
        logits, torch.ones(3), torch.tensor([2, 0, 0]), torch.tensor([1.0, 0.7, 0.9])
    )
    assert order[0].tolist() == [0, 1, 2, 3]
    assert (probs > 0).sum(dim=1).tolist() == [2, 2, 3]  # top-2; 0.5 + 0.3 >= 0.7; 0.5 + 0.3 + 0.15 >= 0.9


def test_sampling_draws_only_what_the_top_k_allows():
    model, vocab = tiny_captioner(4)
    embeddings = _embeddings(model, batch=3)
    logits, _ = model.decoder.step(torch.full((3,), vocab.start_id), model.decoder.start(embeddings))
    allowed = logits.topk(2, dim=-1).indices  # (3, 2)
    first_words = [c.tokens[0] for c in _sample(model, vocab, embeddings, seed=5, max_length=1, top_k=2,
                                                temperature=5.0)]
    assert all(word in row for word, row in zip(first_words, allowed.tolist()))


def _distinct_samples(model, vocab, embeddings, n, seed=3, temperature=2.0):
    generators = [torch.Generator().manual_seed(seed + i) for i in range(embeddings.shape[0])]
    rows = embeddings.shape[0]
    captions, _ = sample_captions(
        model.decoder, embeddings, settings=[SamplingSettings(temperature)] * rows, num_captions=[n] * rows,
        generators=generators, max_lengths=[12] * rows, **_ids(vocab),
    )
    return captions


def test_several_samples_per_image_are_distinct_and_ranked():
    model, vocab = tiny_captioner(5)
    for caption in _distinct_samples(model, vocab, _embeddings(model, batch=3), n=4):
        every = [caption] + caption.alternatives
        assert len(every) == 4
        assert len({tuple(c.tokens) for c in every}) == 4
        normalised = [c.score / (len(c.tokens) + c.ended) for c in every]
        assert normalised == sorted(normalised, reverse=True)


def test_samples_that_keep_repeating_give_fewer_captions():
    model, vocab = tiny_captioner(5)
    captions = _distinct_samples(model, vocab, _embeddings(model, batch=2), n=3, temperature=1e-6)
    assert all(c.alternatives == [] for c in captions), "one caption is all a near-zero temperature can give"


def test_diverse_beam_search_with_one_group_is_beam_search():
    model, vocab = tiny_captioner(6)
    embeddings = _embeddings(model, batch=4)
    plain = beam_search(model.decoder, embeddings, max_length=10, beam_size=4, n_best=3, **_ids(vocab))
    one_group = beam_search(
        model.decoder, embeddings, max_length=10, beam_size=4, n_best=3, beam_groups=1, diversity=2.0, **_ids(vocab)
    )
    assert plain == one_group


def test_diverse_groups_start_with_different_words():
    model, vocab = tiny_captioner(7)
    embeddings = _embeddings(model, batch=3)
    output = beam_search(
        model.decoder, embeddings, max_length=10, beam_size=4, n_best=4, beam_groups=4, diversity=100.0,
        **_ids(vocab),
    )
    for caption in output.captions:
        every = [caption] + caption.alternatives
        assert len(every) == 4
        assert len({c.tokens[0] for c in every}) == 4, "a large penalty forbids a word another group chose"
        for c in every:  # its own log-probs (those of its words and `<end>`), not the penalty of 100 a word
            assert sum(c.scores) - 20 < c.score <= sum(c.scores) + 1e-5


def test_diverse_beam_search_needs_groups_that_divide_the_beam():
    model, vocab = tiny_captioner(7)
    with pytest.raises(ValueError, match="beam_groups"):
        beam_search(model.decoder, _embeddings(model, 1), max_length=5, beam_size=4, beam_groups=3, **_ids(vocab))


def _alone(model, vocab, embedding, spec):
    return decode_mixed(model.decoder, embedding, [spec], **_ids(vocab))[0][0]


def _all_tokens(caption):
    return [caption.tokens] + [a.tokens for a in caption.alternatives]


def test_a_mixed_batch_gives_every_request_what_it_gets_alone():
    model, vocab = tiny_captioner(8)
    embeddings = _embeddings(model, batch=7)
    specs = [
        DecodeSpec(12),
        DecodeSpec(12, beam_size=3, n_best=2),
        DecodeSpec(12, sample=True, temperature=1.5, seed=1),
        DecodeSpec(6, sample=True, top_k=5, n_best=3, seed=2),
        DecodeSpec(10, beam_size=4, n_best=4, beam_groups=2, diversity=1.0),
        DecodeSpec(12, sample=True, top_p=0.8, n_best=2, seed=1),
        DecodeSpec(4),
    ]
    mixed, _ = decode_mixed(model.decoder, embeddings, specs, **_ids(vocab))
    for row, spec in enumerate(specs):
        alone = _alone(model, vocab, embeddings[row : row + 1], spec)
        assert _all_tokens(mixed[row]) == _all_tokens(alone), f"row {row} ({spec.method})"
        assert len(mixed[row].alternatives) == spec.n_best - 1


def test_a_sampled_request_does_not_depend_on_what_else_is_in_its_batch():
    model, vocab = tiny_captioner(9)
    embeddings = _embeddings(model, batch=4)
    spec = DecodeSpec(12, sample=True, temperature=1.5, n_best=3, seed=11)
    neighbours = [DecodeSpec(12, sample=True, temperature=2.0, n_best=4, seed=s) for s in (11, 12, 13)]
    crowded, _ = decode_mixed(model.decoder, embeddings, [neighbours[0], spec, *neighbours[1:]], **_ids(vocab))
    assert _all_tokens(crowded[1]) == _all_tokens(_alone(model, vocab, embeddings[1:2], spec))


def test_mixed_decoding_streams_greedy_and_single_sampled_rows():
    model, vocab = tiny_captioner(10)
    embeddings = _embeddings(model, batch=4)
    specs = [DecodeSpec(12), DecodeSpec(12, sample=True, seed=3), DecodeSpec(12, sample=True, n_best=2, seed=3),
             DecodeSpec(12, beam_size=2)]
    streamed: dict[int, list[int]] = {}

    def on_step(step, rows, tokens):
        for row, token in zip(rows, tokens.tolist()):
            streamed.setdefault(row, []).append(token)

    captions, _ = decode_mixed(model.decoder, embeddings, specs, on_step=on_step, **_ids(vocab))
    assert sorted(streamed) == [0, 1]
    for row in (0, 1):
        assert streamed[row][: len(captions[row].tokens)] == captions[row].tokens


@pytest.mark.parametrize("spec", [DecodeSpec(8), DecodeSpec(8, beam_size=3, n_best=3),
                                  DecodeSpec(8, beam_size=4, n_best=2, beam_groups=2, diversity=1.0),
                                  DecodeSpec(8, sample=True, temperature=2.0, n_best=3, seed=5)])
def test_decoding_never_chooses_a_token_that_is_not_a_word(spec):
    """A decoder that favours `<pad>` and `<start>` still writes only words (and `<end>`) with `unwritten_ids`."""
    model, vocab = tiny_captioner(4)
    with torch.no_grad():
        model.decoder.linear.bias[vocab.pad_id] += 50.0
        model.decoder.linear.bias[vocab.start_id] += 49.0
    embeddings = _embeddings(model, batch=3)
    unmasked, _ = decode_mixed(model.decoder, embeddings, [spec] * 3, **_ids(vocab))
    assert all(vocab.pad_id in c.tokens or vocab.start_id in c.tokens for c in unmasked), "the bias bites"
    masked, _ = decode_mixed(model.decoder, embeddings, [spec] * 3, unwritten_ids=vocab.unwritten_ids, **_ids(vocab))
    for caption in masked:
        for each in [caption, *caption.alternatives]:
            assert not set(each.tokens) & set(vocab.unwritten_ids)
            assert len(vocab.decode(each.tokens)) == len(each.tokens) == len(each.scores)
