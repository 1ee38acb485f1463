"""The video captioner on tiny random models: shapes, gradients, frame order, export and rebuild."""

import json

import pytest
import torch

from model.export_format import load_exported_captioner
from model.batch_captioning import DecodeSpec, decode_mixed
from model.config import CaptionerConfig
from model.video import TEMPORAL_MODULES, VideoCaptioner, build_temporal
from tests.helpers import tiny_video_captioner
from training.export import export_captioner


def _clips(model, batch: int = 3, seed: int = 0) -> torch.Tensor:
    size, frames = model.config.image_size, model.config.num_frames
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temporal", sorted(TEMPORAL_MODULES))
def test_every_temporal_module_trains_and_encodes_a_clip_to_one_embedding(temporal):
    model, _ = tiny_video_captioner(temporal=temporal, train_backbone=True)
    assert isinstance(model, VideoCaptioner)
    clips = _clips(model)
    model.eval()
    assert model.encode(clips).shape == (3, model.config.embed_size)
    model.train()
    lengths = torch.tensor([5, 3, 4])
    captions = torch.randint(4, model.config.vocab_size, (3, 5))
    logits, loss = model(clips, captions, lengths)
    assert logits.shape == (12 - 3, model.config.vocab_size) and torch.isfinite(loss)  # each caption's first token is fed, not predicted
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("temporal,keeps_order", [("concat", True), ("lstm", True), ("mean", False)])
def test_order_keeping_modules_tell_a_clip_from_its_reverse(temporal, keeps_order):
    model, _ = tiny_video_captioner(temporal=temporal)
    clips = _clips(model, batch=2)
    with torch.inference_mode():
        forward, backward = model.encode(clips), model.encode(clips.flip(1))
    assert torch.allclose(forward, backward, atol=1e-5) != keeps_order


def test_cached_features_give_the_embeddings_frames_give():
    model, _ = tiny_video_captioner()
    clips = _clips(model)
    with torch.inference_mode():
        features = model.encoder.backbone_features(clips)  # what training caches for a frozen backbone
        assert features.shape == (3, model.config.num_frames, 512)
        assert torch.allclose(model.embed_images(None, features), model.encode(clips), atol=1e-5)


@pytest.mark.parametrize("backbone,channels", [("resnet18", 512), ("resnet50", 2048)])
def test_the_frame_encoder_is_the_backbone_the_config_names(backbone, channels, tmp_path):
    model, vocab = tiny_video_captioner(backbone=backbone)
    assert model.encoder.feature_size == channels
    assert model.encoder.backbone_features(_clips(model, batch=2)).shape == (2, model.config.num_frames, channels)
    export_captioner(model, vocab, tmp_path)
    rebuilt, _ = load_exported_captioner(tmp_path)  # strict loading: weights of another trunk would not fit
    assert rebuilt.config.backbone == backbone


def test_export_rebuild_gives_identical_captions(tmp_path):
    model, vocab = tiny_video_captioner(seed=3, temporal="lstm")
    export_captioner(model, vocab, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["modality"] == "video" and config["num_frames"] == 4 and config["temporal"] == "lstm"
    rebuilt, rebuilt_vocab = load_exported_captioner(tmp_path)
    assert isinstance(rebuilt, VideoCaptioner) and rebuilt_vocab.to_dict() == vocab.to_dict()
    clips = _clips(model, batch=4, seed=1)
    specs = [DecodeSpec(12), DecodeSpec(12, beam_size=3, n_best=2), DecodeSpec(12), DecodeSpec(12, beam_size=2)]
    with torch.inference_mode():
        before, _ = decode_mixed(model.decoder, model.encode(clips), specs, start_id=vocab.start_id,
                                 end_id=vocab.end_id)
        after, _ = decode_mixed(rebuilt.decoder, rebuilt.encode(clips), specs, start_id=vocab.start_id,
                                end_id=vocab.end_id)
    assert [c.tokens for c in before] == [c.tokens for c in after]
    assert [c.score for c in before] == pytest.approx([c.score for c in after], abs=1e-5)
    assert any(c.tokens for c in before), "a model that says nothing would make the comparison vacuous"


def test_an_export_without_the_video_keys_is_an_image_model():
    old = {"vocab_size": 40, "embed_size": 16, "hidden_size": 32, "image_size": 32}  # written before video existed
    config = CaptionerConfig.from_dict(old)
    assert (config.modality, config.num_frames) == ("image", 1)
    with pytest.raises(ValueError, match="modality must be one of image, video"):
        CaptionerConfig(vocab_size=40, modality="audio")


def test_an_unknown_temporal_module_names_the_known_ones():
    with pytest.raises(ValueError, match="known: concat, lstm, mean"):
        build_temporal("transformer", 4, 16)
