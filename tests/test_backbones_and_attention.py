"""Every backbone x decoder pair on tiny configs: shapes, gradients, decoding, export; attention maps.

The backbones are torchvision's ResNets at 64 px (a 2 x 2 last feature map, so the
soft-attention decoder's 2 x 2 grid holds four different cells); the decoders are
show-and-tell and soft attention, behind the one decoding protocol.
"""

from __future__ import annotations

import base64
import functools
import json

import pytest
import torch

from handler.caption_handler import CaptionHandler
from model.backbones import BACKBONES
from model.batch_captioning import DecodeSpec, decode_mixed
from model.config import CaptionerConfig
from model.decoders import DECODERS
from model.decoding import beam_search, greedy_decode
from model.export_format import CONFIG_FILE, ExportError, export_captioner, load_exported_captioner
from training.auxiliary_losses import doubly_stochastic_penalty
from training.encoder_weights import imagenet_cache_path, load_encoder_weights
from tests.helpers import shape_image_bytes, tiny_captioner, torchserve_context, write_tiny_export

PAIRS = [(backbone, decoder) for backbone in BACKBONES for decoder in DECODERS]
TINY = dict(image_size=64, grid_size=2)
JPEG, _ = shape_image_bytes(4)


def _model(backbone: str, decoder: str, seed: int = 0, **overrides):
    return tiny_captioner(seed, backbone=backbone, decoder=decoder, **{**TINY, **overrides})


@functools.lru_cache(maxsize=None)
def _eval_model(backbone: str, decoder: str, seed: int = 0):
    """A model the test only reads (eval mode, no gradients): built once, as ResNet-101 takes seconds."""
    return _model(backbone, decoder, seed)


def _images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _captions(vocab_size: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    captions = torch.randint(4, vocab_size, (len(lengths), max(lengths)), generator=generator)
    captions[:, 0] = 1  # <start>
    return captions, torch.tensor(lengths)


def _ids(vocab) -> dict:
    return dict(start_id=vocab.start_id, end_id=vocab.end_id)


def _same_captions(first, second, atol=1e-5) -> None:
    assert first.tokens == second.tokens
    assert first.ended == second.ended
    assert first.scores == pytest.approx(second.scores, abs=atol)
    if first.attention is None:
        assert second.attention is None
    else:
        assert torch.allclose(torch.tensor(first.attention), torch.tensor(second.attention), atol=atol)


@pytest.mark.parametrize("backbone,decoder", PAIRS)
def test_output_shapes(backbone, decoder):
    model, vocab = _model(backbone, decoder)
    model.train()
    captions, lengths = _captions(len(vocab), [6, 4, 3])
    logits, loss = model(_images(3), captions, lengths)
    # show_tell predicts `<start>` from the image step too; soft attention starts from it.
    predicted = int(lengths.sum()) if decoder == "show_tell" else int((lengths - 1).sum())
    assert logits.shape == (predicted, len(vocab))
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    model.eval()
    embeddings = model.encode(_images(3))
    expected = (3, 16) if decoder == "show_tell" else (3, 4, 16)  # (B, E) or (B, G*G, E)
    assert embeddings.shape == expected
    assert model.encoder.linear.in_features == BACKBONES[backbone].channels


@pytest.mark.parametrize("backbone,decoder", PAIRS)
def test_every_trainable_parameter_gets_a_gradient(backbone, decoder):
    model, vocab = _model(backbone, decoder, train_backbone=True)
    model.train()
    captions, lengths = _captions(len(vocab), [6, 5, 3, 4])
    _, loss = model(_images(4), captions, lengths)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("backbone,decoder", PAIRS)
def test_beam_search_with_one_beam_is_greedy(backbone, decoder):
    model, vocab = _eval_model(backbone, decoder, seed=1)
    embeddings = model.encode(_images(4, seed=1))
    greedy = greedy_decode(model.decoder, embeddings, max_length=10, **_ids(vocab)).captions
    beam = beam_search(model.decoder, embeddings, max_length=10, beam_size=1, **_ids(vocab)).captions
    for g, b in zip(greedy, beam):
        _same_captions(g, b)
    assert (greedy[0].attention is None) == (decoder == "show_tell")


@pytest.mark.parametrize("backbone,decoder", PAIRS)
def test_batched_decoding_equals_each_image_alone(backbone, decoder):
    model, vocab = _eval_model(backbone, decoder, seed=2)
    embeddings = model.encode(_images(4, seed=2))
    specs = [DecodeSpec(10), DecodeSpec(10, beam_size=3, n_best=2), DecodeSpec(6), DecodeSpec(10, sample=True, seed=5)]
    together, _ = decode_mixed(model.decoder, embeddings, specs, **_ids(vocab))
    for row, spec in enumerate(specs):
        alone, _ = decode_mixed(model.decoder, embeddings[row : row + 1], [spec], **_ids(vocab))
        _same_captions(alone[0], together[row])
        for a, t in zip(alone[0].alternatives, together[row].alternatives):
            _same_captions(a, t)


@pytest.mark.parametrize("backbone,decoder", PAIRS)
def test_export_rebuilds_identical_outputs_and_attention_maps(backbone, decoder, tmp_path):
    model, vocab = _eval_model(backbone, decoder, seed=3)
    export_dir = export_captioner(model, vocab, tmp_path / "export")
    config = json.loads((export_dir / CONFIG_FILE).read_text())
    assert (config["backbone"], config["decoder"], config["grid_size"]) == (backbone, decoder, 2)
    rebuilt, rebuilt_vocab = load_exported_captioner(export_dir)
    images = _images(3, seed=3)
    with torch.inference_mode():
        assert torch.equal(model.encode(images), rebuilt.encode(images))
    specs = [DecodeSpec(10), DecodeSpec(10, beam_size=3)]
    for spec in specs:
        first, _ = decode_mixed(model.decoder, model.encode(images), [spec] * 3, **_ids(vocab))
        second, _ = decode_mixed(rebuilt.decoder, rebuilt.encode(images), [spec] * 3, **_ids(rebuilt_vocab))
        assert first == second, "the same tokens, scores and attention maps, to the last bit"


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_attention_weights_sum_to_one_at_every_step(backbone):
    model, vocab = _eval_model(backbone, "soft_attention", seed=4)
    embeddings = model.encode(_images(3, seed=4))
    for spec in (DecodeSpec(10), DecodeSpec(10, beam_size=3, n_best=3), DecodeSpec(10, sample=True, seed=1)):
        captions, _ = decode_mixed(model.decoder, embeddings, [spec] * 3, **_ids(vocab))
        for caption in captions:
            for one in (caption, *caption.alternatives):
                maps = torch.tensor(one.attention)  # (T, G*G)
                assert maps.shape == (len(one.tokens), 4)
                assert torch.allclose(maps.sum(dim=1), torch.ones(len(one.tokens)), atol=1e-5)
                assert (maps >= 0).all()
    captions, lengths = _captions(len(vocab), [6, 4, 3], seed=4)
    forced = model.teacher_forced(embeddings, captions, lengths, None)
    per_step = forced.attention.sum(dim=-1)  # (B, T-1): 1 while the caption lasts, 0 after
    expected = (torch.arange(5).unsqueeze(0) < (lengths - 1).unsqueeze(1)).float()
    assert torch.allclose(per_step, expected, atol=1e-5)


def test_the_maps_depend_on_the_image_region():
    """Four different cells get different weights: the grid is the backbone's real 2 x 2 map."""
    model, vocab = _model("resnet18", "soft_attention", seed=5)
    caption = greedy_decode(model.decoder, model.encode(_images(1, seed=5)), max_length=4, **_ids(vocab)).captions[0]
    first = torch.tensor(caption.attention[0])
    assert first.max() - first.min() > 1e-4


def test_teacher_forcing_computes_what_the_decoding_steps_compute():
    model, vocab = _model("resnet18", "soft_attention", seed=6)
    embeddings = model.encode(_images(1, seed=6))
    captions, lengths = _captions(len(vocab), [6], seed=6)
    with torch.inference_mode():
        forced = model.teacher_forced(embeddings, captions, lengths, None)  # (5, V): step t predicts captions[t+1]
        state = model.decoder.start(embeddings)
        for t in range(5):
            logits, state = model.decoder.step(captions[:, t], state)
            assert torch.allclose(logits[0], forced.logits[t], atol=1e-5)
            assert torch.allclose(state.attention[0], forced.attention[0, t], atol=1e-6)
    assert torch.equal(forced.targets, captions[0, 1:])


def test_an_export_without_the_new_config_keys_loads_as_resnet34_show_tell(tmp_path):
    export_dir = write_tiny_export(tmp_path / "old", seed=1)
    config = json.loads((export_dir / CONFIG_FILE).read_text())
    for key in ("backbone", "decoder", "grid_size"):
        del config[key]
    (export_dir / CONFIG_FILE).write_text(json.dumps(config))
    old, vocab = load_exported_captioner(export_dir)
    assert (old.config.backbone, old.config.decoder) == ("resnet34", "show_tell")
    reference, _ = tiny_captioner(1)
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(old.encode(images), reference.encode(images))


@pytest.mark.parametrize(
    "key,value,known", [("backbone", "vgg16", "resnet18, resnet34, resnet50, resnet101"),
                        ("decoder", "transformer", "show_tell, soft_attention")],
)
def test_an_unknown_backbone_or_decoder_fails_at_load_naming_the_known_ones(tmp_path, key, value, known):
    export_dir = write_tiny_export(tmp_path / "export")
    config = json.loads((export_dir / CONFIG_FILE).read_text())
    (export_dir / CONFIG_FILE).write_text(json.dumps({**config, key: value}))
    with pytest.raises(ExportError, match=f"unknown {key} '{value}'.*{known}"):
        load_exported_captioner(export_dir)


def test_soft_attention_has_one_lstm_layer():
    with pytest.raises(ValueError, match="at most 1 LSTM layer"):
        CaptionerConfig(vocab_size=30, decoder="soft_attention", num_layers=2)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_encoder_weights_are_the_chosen_backbones(backbone, tmp_path, monkeypatch):
    from torchvision import models

    reference = getattr(models, backbone)(weights=None)
    path = tmp_path / f"{backbone}.pth"
    torch.save(reference.state_dict(), path)
    model, _ = _model(backbone, "soft_attention")
    model.encoder.load_backbone_state_dict(load_encoder_weights(str(path), backbone))
    assert torch.equal(model.encoder.backbone[7][0].conv1.weight, reference.layer4[0].conv1.weight)
    other, _ = _model("resnet34" if backbone == "resnet50" else "resnet50", "show_tell")
    with pytest.raises(RuntimeError):  # another ResNet's weights do not fit
        other.encoder.load_backbone_state_dict(reference.state_dict())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=f"ImageNet weights for {backbone}") as error:
        load_encoder_weights("imagenet", backbone)
    assert str(imagenet_cache_path(backbone)) in str(error.value)
    assert imagenet_cache_path(backbone).name.startswith(backbone)


def test_the_doubly_stochastic_penalty_is_zero_when_every_cell_gets_one_in_all():
    steps = torch.eye(4).unsqueeze(0)  # (1, T=4, P=4): each step looks at its own cell
    assert doubly_stochastic_penalty(steps).item() == 0.0
    one_cell = torch.zeros(1, 4, 4)
    one_cell[:, :, 0] = 1.0  # every step at the same cell: it sums to 4, the others to 0
    assert doubly_stochastic_penalty(one_cell).item() == pytest.approx((9 + 1 + 1 + 1) / 4)


# --- the handler, in process ------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {
        "show_tell": write_tiny_export(root / "show_tell", seed=2),
        "soft_attention": write_tiny_export(root / "soft_attention", seed=2, decoder="soft_attention"),
    }


def _handle(export_dir, rows):
    context, reader = torchserve_context(export_dir, len(rows))
    handler = CaptionHandler()
    handler.initialize(context)
    out = handler.handle(rows, context)
    return out, [context.get_response_status(i)[0] for i in range(len(rows))]


def _json_row(**options):
    return {"body": {"image": base64.b64encode(JPEG).decode(), **options}}


def test_the_handler_returns_a_grid_per_token_for_an_attention_model(exports):
    rows = [_json_row(attention=True), _json_row(attention=True, beam_size=3, num_captions=2),
            {"data": bytearray(JPEG), "attention": bytearray(b"true"), "do_sample": bytearray(b"true")},
            _json_row()]
    out, statuses = _handle(exports["soft_attention"], rows)
    assert statuses == [200] * 4
    replies = [json.loads(o) for o in out]
    for reply in replies[:3]:
        assert reply["grid_size"] == 2
        assert len(reply["attention"]) == len(reply["tokens"])
        for grid in reply["attention"]:
            assert len(grid) == 2 and all(len(row) == 2 for row in grid)
            assert sum(map(sum, grid)) == pytest.approx(1.0, abs=0.01)  # rounded to 3 decimals
    for entry in replies[1]["captions"]:
        assert len(entry["attention"]) == len(entry["tokens"])
    assert "attention" not in replies[3] and "grid_size" not in replies[3], "only when asked"


def test_a_show_tell_model_refuses_attention_with_a_400_saying_why(exports):
    out, statuses = _handle(exports["show_tell"], [_json_row(attention=True), _json_row()])
    assert statuses == [400, 200]
    error = json.loads(out[0])["error"]
    assert "attention" in error and "show_tell" in error
    out, statuses = _handle(exports["soft_attention"], [_json_row(attention="maybe")])
    assert statuses == [400] and "attention must be true or false" in json.loads(out[0])["error"]


# --- the gallery ------------------------------------------------------------------------------


def test_the_gallery_draws_per_word_maps_for_an_attention_model_only(exports, tmp_path):
    from PIL import Image

    from training import gallery
    from training.shapes_dataset import generate

    data = generate(tmp_path / "shapes", train=1, val=3, seed=3, canvas=64)
    for decoder, export_dir in exports.items():
        out = tmp_path / decoder
        gallery.main(gallery.get_args_parser().parse_args([
            "--export-dir", str(export_dir), "--annotations", str(data / "annotations" / "captions_val.json"),
            "--images", str(data / "images"), "--count", "3",
            "--out", str(out / "gallery.png"), "--attention-out", str(out / "attention.png"),
        ]))
        assert (out / "gallery.png").is_file()
        assert (out / "attention.png").is_file() == (decoder == "soft_attention")
    with Image.open(tmp_path / "soft_attention" / "attention.png") as sheet:
        assert sheet.height > 3 * 100, "one row of panels per image, three images"


def _sideways_and_see_through(tmp_path):
    """Files a browser shows differently from their raw pixels: a JPEG stored sideways with EXIF
    orientation 6, and a PNG whose shapes stand on a transparent ground (raw pixels: black)."""
    import io

    from PIL import Image

    upright = Image.open(io.BytesIO(JPEG)).convert("RGB").resize((64, 40))
    sideways = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # turn it a quarter clockwise to show it
    upright.transpose(Image.Transpose.ROTATE_90).save(sideways, exif=exif)
    rgba = upright.convert("RGBA")
    rgba.putalpha(Image.eval(upright.convert("L"), lambda level: 0 if level > 200 else 255))
    rgba = Image.composite(rgba, Image.new("RGBA", rgba.size, (0, 0, 0, 0)), rgba.getchannel("A"))
    see_through = tmp_path / "see_through.png"
    rgba.save(see_through)
    return [sideways, see_through]


def test_the_attention_gallery_reads_images_as_the_service_does_and_writes_its_caption(exports, tmp_path,
                                                                                      monkeypatch):
    from training import gallery

    drawn = []
    draw = gallery.attention_figure
    monkeypatch.setattr(gallery, "attention_figure",
                        lambda image, words, maps, **kw: drawn.append((image.size, list(words))) or draw(
                            image, words, maps, **kw))
    model, vocab = load_exported_captioner(exports["soft_attention"])
    files = _sideways_and_see_through(tmp_path)
    gallery.draw_attention_gallery(model, vocab, files, tmp_path / "sheet.png", torch.device("cpu"))
    out, statuses = _handle(exports["soft_attention"],
                            [{"body": {"image": base64.b64encode(f.read_bytes()).decode()}} for f in files])
    assert statuses == [200, 200]
    assert [words for _, words in drawn] == [json.loads(o)["tokens"] for o in out]
    assert drawn[0][0] == (64, 40), "drawn upright, as EXIF says"


def test_the_client_draws_attention_over_the_image_upright(tmp_path):
    import io

    from PIL import Image

    from client.attention_maps import attention_figure

    sideways = _sideways_and_see_through(tmp_path)[0]
    with Image.open(sideways) as image:
        assert image.size == (40, 64)
        figure = attention_figure(image, ["a"], [[[1.0, 0.0], [0.0, 0.0]]])
    assert [ax.images[0].get_array().shape[:2] for ax in figure.axes[:2]] == [(40, 64)] * 2
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")


def test_the_gallery_adds_rows_of_another_held_out_set_and_photos(exports, tmp_path):
    from PIL import Image

    from training import gallery, second_renderer
    from training.shapes_dataset import generate

    data = generate(tmp_path / "shapes", train=1, val=3, seed=3, canvas=64)
    second = second_renderer.generate(tmp_path / "second", count=4, seed=7, quiet=True)
    args = ["--export-dir", str(exports["show_tell"]), "--annotations", str(data / "annotations" / "captions_val.json"),
            "--images", str(data / "images"), "--count", "3", "--attention-out", ""]
    gallery.main(gallery.get_args_parser().parse_args([*args, "--out", str(tmp_path / "plain.png")]))
    gallery.main(gallery.get_args_parser().parse_args([
        *args, "--held-out", "second renderer", str(second / "annotations" / "captions_val.json"),
        str(second / "images"), "--photos", "1", "--out", str(tmp_path / "more.png"),
    ]))
    with Image.open(tmp_path / "plain.png") as plain, Image.open(tmp_path / "more.png") as more:
        assert more.height > plain.height + 200, "two more rows: the second renderer's images, then a photo"


# --- training -----------------------------------------------------------------------------------


def test_soft_attention_trains_in_the_recipes_two_stages_on_cached_grid_features(tmp_path, monkeypatch):
    """Stage 1 fine-tunes the backbone; stage 2 trains on the frozen backbone's cached 2 x 2 grids."""
    from training import train
    from training.export import export_checkpoint
    from training.shapes_dataset import generate

    data = generate(tmp_path / "shapes", train=16, val=4, seed=3, canvas=64)
    common = [
        "--annotations", str(data / "annotations" / "captions_train.json"),
        "--val-annotations", str(data / "annotations" / "captions_val.json"), "--images", str(data / "images"),
        "--embed-size", "16", "--hidden-size", "32", "--batch-size", "8", "--min-word-count", "1", "--quiet",
    ]
    train.main(train.get_args_parser().parse_args([
        *common, "--output-dir", str(tmp_path / "finetune"), "--encoder-weights", "none", "--train-backbone",
        "--image-size", "64", "--decoder", "soft_attention", "--backbone", "resnet18", "--epochs", "1",
        "--concept-weight", "1.0",
    ]))
    cached = []
    original = train.compute_backbone_features
    monkeypatch.setattr(train, "compute_backbone_features", lambda *a, **k: cached.append(original(*a, **k)) or cached[-1])
    train.main(train.get_args_parser().parse_args([
        *common, "--output-dir", str(tmp_path / "decoder"), "--init-from", str(tmp_path / "finetune" / "checkpoint.pt"),
        "--epochs", "2", "--attention-reg", "1.0", "--concept-weight", "1.0",
    ]))
    assert {tuple(f.shape) for f in cached[0].values()} == {(4, 512)}, "each image's 2 x 2 grid of ResNet-18 features"
    history = json.loads((tmp_path / "decoder" / "history.json").read_text())
    assert len(history["val_loss"]) == 2 and all(v == v for v in history["val_loss"])
    model, vocab = load_exported_captioner(export_checkpoint(tmp_path / "decoder" / "checkpoint.pt", tmp_path / "export"))
    assert (model.config.backbone, model.config.decoder, model.config.attention_grid) == ("resnet18", "soft_attention", 2)
    caption = greedy_decode(model.decoder, model.encode(_images(1)), max_length=5, **_ids(vocab)).captions[0]
    assert caption.attention is not None and len(caption.attention) == len(caption.tokens)
