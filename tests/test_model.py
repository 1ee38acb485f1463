"""The pure model package on tiny configurations: shapes, gradients, freezing, decoding."""

import pytest
import torch

from model.batch_captioning import DecodeSpec, cut_to_length, decode_mixed
from model.captioner import Captioner
from model.config import CaptionerConfig
from model.decoding import beam_search, greedy_decode
from tests.helpers import tiny_captioner, tiny_config


def _batch(model: Captioner, batch: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    images = torch.randn(batch, 3, size, size, generator=generator)
    lengths = torch.tensor([7, 5, 3, 6, 4, 2][:batch])
    captions = torch.randint(4, model.config.vocab_size, (batch, int(lengths.max())), generator=generator)
    captions[:, 0] = 1
    return images, captions, lengths


def test_forward_shapes_and_finite_loss():
    model, _ = tiny_captioner()
    model.train()
    images, captions, lengths = _batch(model)
    logits, loss = model(images, captions, lengths)
    assert logits.shape == (int(lengths.sum()), model.config.vocab_size)  # `<start>` too, from the image step
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    assert model.encode(images).shape == (3, model.config.embed_size)


def test_several_captions_per_image_share_one_encoding():
    model, _ = tiny_captioner()
    model.eval()
    images, captions, lengths = _batch(model, batch=2)
    owners = torch.tensor([0, 1])
    repeated = images[owners]
    _, loss_owned = model(images, captions, lengths, owners=owners)
    _, loss_plain = model(repeated, captions, lengths)
    assert torch.allclose(loss_owned, loss_plain, atol=1e-6)


def test_every_trainable_parameter_gets_a_gradient():
    model, _ = tiny_captioner(train_backbone=True)
    model.train()
    images, captions, lengths = _batch(model, batch=4)
    _, loss = model(images, captions, lengths)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, f"no gradient for {missing}"


def test_backbone_is_frozen_by_default():
    model, _ = tiny_captioner()
    assert not model.config.train_backbone
    assert all(not p.requires_grad for p in model.encoder.backbone.parameters())
    assert all(p.requires_grad for p in model.encoder.linear.parameters())
    model.train()
    assert not model.encoder.backbone.training, "frozen backbone keeps BatchNorm statistics fixed"
    before = {k: v.clone() for k, v in model.encoder.backbone.state_dict().items()}
    images, captions, lengths = _batch(model)
    _, loss = model(images, captions, lengths)
    loss.backward()
    assert all(p.grad is None for p in model.encoder.backbone.parameters())
    after = model.encoder.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fine_tuning_unfreezes_the_backbone():
    model, _ = tiny_captioner(train_backbone=True)
    assert all(p.requires_grad for p in model.encoder.backbone.parameters())


def test_backbone_accepts_torchvision_resnet34_weights():
    from torchvision.models import resnet34

    reference = resnet34(weights=None)
    model, _ = tiny_captioner()
    model.encoder.load_backbone_state_dict(reference.state_dict())
    assert torch.equal(model.encoder.backbone[0].weight, reference.conv1.weight)


def test_config_round_trip_and_unknown_keys():
    config = tiny_config(30, num_layers=2)
    assert CaptionerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown captioner config keys"):
        CaptionerConfig.from_dict({**config.to_dict(), "surprise": 1})


def _embeddings(model: Captioner, batch: int = 5, seed: int = 1):
    size = model.config.image_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return model.encode(images)


def _ids(vocab):
    return dict(start_id=vocab.start_id, end_id=vocab.end_id)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_with_one_beam_is_greedy(seed):
    model, vocab = tiny_captioner(seed)
    embeddings = _embeddings(model, seed=seed)
    greedy = greedy_decode(model.decoder, embeddings, max_length=12, **_ids(vocab))
    beam = beam_search(model.decoder, embeddings, max_length=12, beam_size=1, **_ids(vocab))
    for g, b in zip(greedy.captions, beam.captions):
        assert g.tokens == b.tokens
        assert g.ended == b.ended
        assert g.scores == pytest.approx(b.scores, abs=1e-5)
        assert g.score == pytest.approx(b.score, abs=1e-4)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_decoding_steps_compute_what_the_teacher_forced_forward_computes(num_layers):
    """`step` runs the LSTM's weights through its own cell loop; training runs `nn.LSTM` on sequences."""
    model, vocab = tiny_captioner(5, num_layers=num_layers, dropout=0.3)
    decoder = model.decoder.eval()
    embeddings = _embeddings(model, batch=1)
    captions = torch.randint(4, len(vocab), (1, 6), generator=torch.Generator().manual_seed(5))
    captions[:, 0] = vocab.start_id
    with torch.no_grad():
        forward = decoder(embeddings, captions, torch.tensor([6]))  # (6, V): position t predicts captions[t]
        state = decoder.start(embeddings)
        for t in range(5):  # the step fed captions[t] predicts captions[t + 1]
            logits, state = decoder.step(captions[:, t], state)
            assert torch.allclose(logits[0], forward[t + 1], atol=1e-5)
    assert state[0].shape == (num_layers, 1, model.config.hidden_size)


def test_batched_greedy_equals_one_image_at_a_time():
    model, vocab = tiny_captioner(3)
    embeddings = _embeddings(model, batch=6)
    together = greedy_decode(model.decoder, embeddings, max_length=12, **_ids(vocab)).captions
    for row in range(6):
        alone = greedy_decode(model.decoder, embeddings[row : row + 1], max_length=12, **_ids(vocab)).captions[0]
        assert alone.tokens == together[row].tokens
        assert alone.scores == pytest.approx(together[row].scores, abs=1e-5)


def test_batched_beam_equals_one_image_at_a_time():
    model, vocab = tiny_captioner(4)
    embeddings = _embeddings(model, batch=4)
    together = beam_search(model.decoder, embeddings, max_length=10, beam_size=3, n_best=2, **_ids(vocab)).captions
    for row in range(4):
        alone = beam_search(
            model.decoder, embeddings[row : row + 1], max_length=10, beam_size=3, n_best=2, **_ids(vocab)
        ).captions[0]
        assert alone.tokens == together[row].tokens
        assert [a.tokens for a in alone.alternatives] == [a.tokens for a in together[row].alternatives]


def test_beam_search_scores_at_least_as_well_as_greedy():
    model, vocab = tiny_captioner(5)
    embeddings = _embeddings(model, batch=6)
    greedy = greedy_decode(model.decoder, embeddings, max_length=8, **_ids(vocab)).captions
    beam = beam_search(model.decoder, embeddings, max_length=8, beam_size=4, length_penalty=0.0, **_ids(vocab))
    for g, b in zip(greedy, beam.captions):
        assert b.score >= g.score - 1e-4


def test_beam_n_best_are_distinct_and_ranked():
    model, vocab = tiny_captioner(6)
    output = beam_search(model.decoder, _embeddings(model, 2), max_length=8, beam_size=4, n_best=3, **_ids(vocab))
    for caption in output.captions:
        assert len(caption.alternatives) == 2
        hypotheses = [tuple(caption.tokens)] + [tuple(a.tokens) for a in caption.alternatives]
        assert len(set(hypotheses)) == 3


def _decoder_ending_at(model, vocab, steps_by_row):
    """A decoder whose row i emits <end> at step steps_by_row[i] (a word before that)."""

    class Scripted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def start(self, embeddings):
            return (torch.zeros(1, embeddings.shape[0], 1), torch.zeros(1, embeddings.shape[0], 1))

        def step(self, tokens, state):
            logits = torch.full((tokens.shape[0], len(vocab)), -10.0)
            for row in range(tokens.shape[0]):
                logits[row, vocab.end_id if self.calls >= steps_by_row[row] else 4 + row] = 10.0
            self.calls += 1
            return logits, state

    return Scripted()


def test_greedy_stops_as_soon_as_every_caption_ended():
    model, vocab = tiny_captioner()
    decoder = _decoder_ending_at(model, vocab, [2, 4, 1])
    output = greedy_decode(decoder, torch.zeros(3, 4), max_length=20, **_ids(vocab))
    assert output.steps == 5, "the longest caption ends at step 5 (index 4); no step after that"
    assert decoder.calls == 5
    assert [len(c.tokens) for c in output.captions] == [2, 4, 1]
    assert all(c.ended for c in output.captions)


def test_greedy_runs_to_max_length_when_no_caption_ends():
    model, vocab = tiny_captioner()
    output = greedy_decode(_decoder_ending_at(model, vocab, [99, 99]), torch.zeros(2, 4), max_length=6, **_ids(vocab))
    assert output.steps == 6
    assert [len(c.tokens) for c in output.captions] == [6, 6]
    assert not any(c.ended for c in output.captions)


def test_mixed_batch_matches_decoding_each_request_alone():
    model, vocab = tiny_captioner(7)
    embeddings = _embeddings(model, batch=5)
    specs = [DecodeSpec(12), DecodeSpec(3), DecodeSpec(12, beam_size=3, n_best=2), DecodeSpec(5, beam_size=2), DecodeSpec(7)]
    mixed, _ = decode_mixed(model.decoder, embeddings, specs, **_ids(vocab))
    for row, spec in enumerate(specs):
        one = embeddings[row : row + 1]
        if spec.beam_size == 1:
            alone = greedy_decode(model.decoder, one, max_length=spec.max_length, **_ids(vocab)).captions[0]
        else:
            alone = beam_search(
                model.decoder, one, max_length=spec.max_length, beam_size=spec.beam_size, n_best=spec.n_best,
                **_ids(vocab),
            ).captions[0]
        assert mixed[row].tokens == alone.tokens, f"row {row} ({spec})"
        assert len(mixed[row].alternatives) == spec.n_best - 1


def test_cut_to_length_drops_the_end_that_does_not_fit():
    from model.decoding import Caption

    caption = Caption([5, 6, 7], [-0.1, -0.2, -0.3], -0.7, ended=True)
    assert cut_to_length(caption, 4) is caption
    cut = cut_to_length(caption, 3)
    assert cut.tokens == [5, 6, 7] and not cut.ended and cut.score == pytest.approx(-0.6)
    assert cut_to_length(caption, 2).tokens == [5, 6]
