"""The handler driven through `handle()` with a real TorchServe `Context`, no server.

A tiny random model is exported to a temp folder, as `make model` would, and
the handler loads it from there the way a worker does.
"""

import base64
import io
import json
import re

import pytest
from PIL import Image

from handler.caption_handler import CaptionHandler
from tests.helpers import shape_image_bytes, tiny_captioner, torchserve_context, write_tiny_export
from training.export import export_captioner


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return write_tiny_export(tmp_path_factory.mktemp("export"), seed=1)


def make_handler(export_dir, batch_size, yaml_config=None):
    context, reader = torchserve_context(export_dir, batch_size, yaml_config)
    handler = CaptionHandler()
    handler.initialize(context)
    return handler, context, reader


def run(export_dir, rows, yaml_config=None):
    handler, context, reader = make_handler(export_dir, len(rows), yaml_config)
    out = handler.handle(rows, context)
    statuses = [context.get_response_status(i)[0] for i in range(len(rows))]
    return out, statuses, context, reader


JPEG, _ = shape_image_bytes(1)


def test_raw_json_and_form_requests_get_captions(export_dir):
    rows = [
        {"body": bytearray(JPEG)},
        {"body": {"image": base64.b64encode(JPEG).decode(), "max_length": 4}},
        {"data": bytearray(JPEG), "beam_size": bytearray(b"3"), "n_best": bytearray(b"2")},
    ]
    out, statuses, context, _ = run(export_dir, rows)
    assert statuses == [200, 200, 200]
    bodies = [json.loads(o) for o in out]
    assert all(set(b) >= {"caption", "tokens", "scores", "method", "model", "version"} for b in bodies)
    assert bodies[0]["method"] == "greedy" and bodies[2]["method"] == "beam"
    assert bodies[0]["model"] == "captioner" and bodies[0]["version"] == "1.0"
    assert len(bodies[1]["tokens"]) <= 4
    assert len(bodies[0]["tokens"]) == len(bodies[0]["scores"])
    assert bodies[0]["caption"] == " ".join(bodies[0]["tokens"])
    assert len(bodies[2]["alternatives"]) == 1
    assert context.get_response_content_type(0) == "application/json"


def test_one_bad_request_fails_alone(export_dir):
    rows = [{"body": bytearray(JPEG)} for _ in range(8)]
    rows[3] = {"body": bytearray(JPEG[: len(JPEG) // 3])}  # truncated JPEG
    out, statuses, _, _ = run(export_dir, rows)
    assert statuses[3] == 400 and statuses[:3] + statuses[4:] == [200] * 7
    assert "error" in json.loads(out[3])
    good = {json.loads(o)["caption"] for i, o in enumerate(out) if i != 3}
    assert len(good) == 1, "the same image gets the same caption in every slot"


@pytest.mark.parametrize(
    "row, status, words",
    [
        ({"body": bytearray(b"")}, 400, "empty"),
        ({"body": "hello"}, 415, "text"),
        ({"body": bytearray(b"<html>not an image</html>")}, 415, "not an image"),
        ({"body": {"image": "%%%not-base64%%%"}}, 400, "base64"),
        ({"body": {"picture": "abc"}}, 400, "unknown JSON fields"),
        ({"body": {"image": base64.b64encode(JPEG).decode(), "max_length": 0}}, 400, "max_length"),
        ({"body": {"image": base64.b64encode(JPEG).decode(), "beam_size": 99}}, 400, "beam_size"),
        ({"body": {"image": base64.b64encode(JPEG).decode(), "beam_size": "two"}}, 400, "integer"),
        ({"data": bytearray(JPEG), "color": bytearray(b"red")}, 400, "unknown fields"),
        ({"note": bytearray(b"x")}, 400, "unknown fields"),
        ({}, 400, "empty request"),
    ],
)
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(export_dir, row, status, words):
    out, statuses, _, _ = run(export_dir, [row, {"body": bytearray(JPEG)}])
    assert statuses == [status, 200]
    assert words in json.loads(out[0])["error"]


def test_mixed_options_in_one_batch_match_single_requests(export_dir):
    options = [{}, {"max_length": 3}, {"beam_size": 3}, {"beam_size": 2, "max_length": 5}]
    rows = [{"body": {"image": base64.b64encode(JPEG).decode(), **o}} for o in options]
    together, _, _, _ = run(export_dir, rows)
    for row, joint in zip(rows, together):
        alone, _, _, _ = run(export_dir, [row])
        assert json.loads(alone[0])["tokens"] == json.loads(joint)["tokens"]


def _image_bytes(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def test_any_image_mode_is_captioned(export_dir):
    base = Image.open(io.BytesIO(JPEG)).convert("RGB")
    images = [
        _image_bytes(base.convert("L"), "PNG"),
        _image_bytes(base.convert("RGBA"), "PNG"),
        _image_bytes(base.convert("P"), "GIF"),
        _image_bytes(base.convert("CMYK"), "JPEG"),
        _image_bytes(base.convert("I;16"), "PNG"),
        _image_bytes(base, "WEBP"),
        _image_bytes(base, "TIFF"),
        _image_bytes(base.resize((1, 1)), "PNG"),
    ]
    _, statuses, _, _ = run(export_dir, [{"body": bytearray(b)} for b in images])
    assert statuses == [200] * len(images)


def test_oversized_image_is_refused_with_413(export_dir):
    huge = _image_bytes(Image.new("L", (9000, 9000)), "PNG")  # small file, 81 M pixels
    out, statuses, _, _ = run(export_dir, [{"body": bytearray(huge)}])
    assert statuses == [413] and "pixels" in json.loads(out[0])["error"]


def test_limits_come_from_model_config_yaml(export_dir):
    rows = [{"body": {"image": base64.b64encode(JPEG).decode(), "beam_size": 3}}]
    _, statuses, _, _ = run(export_dir, rows, {"captioner": {"max_beam_size": 2}})
    assert statuses == [400]


def _streamed_chunks(reader) -> list[dict]:
    data = b""
    try:
        while True:
            piece = reader.recv(65536)
            if not piece:
                break
            data += piece
    except TimeoutError:
        pass
    return [json.loads(m) for m in re.findall(rb'\{"(?:index|caption)".*?\}\n', data)]


@pytest.fixture(scope="module")
def long_caption_export(tmp_path_factory):
    """A tiny model that almost never says `<end>`, so its captions are long enough to stream."""
    model, vocab = tiny_captioner(1)
    model.decoder.linear.bias.data[vocab.end_id] = -50.0
    return export_captioner(model, vocab, tmp_path_factory.mktemp("long-export"))


def test_streaming_sends_words_then_the_result(long_caption_export):
    rows = [
        {"body": bytearray(JPEG)},
        {"body": {"image": base64.b64encode(JPEG).decode(), "stream": True}},
        {"data": bytearray(JPEG), "stream": bytearray(b"true"), "beam_size": bytearray(b"2")},
    ]
    handler, context, reader = make_handler(long_caption_export, 3)
    out = handler.handle(rows, context)
    assert json.loads(out[0])["caption"], "plain requests still get their JSON"
    assert out[1] == "" and out[2] == "", "streamed requests end with an empty closing chunk"
    chunks = _streamed_chunks(reader)
    tokens = [c["token"] for c in chunks if "token" in c]
    results = [c for c in chunks if "caption" in c]
    assert len(results) == 2
    greedy = next(r for r in results if r["method"] == "greedy")
    beam = next(r for r in results if r["method"] == "beam")
    assert len(tokens) == len(greedy["tokens"]) + len(beam["tokens"])
    assert len(greedy["tokens"]) > 3


def test_handler_records_custom_metrics(export_dir):
    handler, context, _ = make_handler(export_dir, 2)
    handler.handle([{"body": bytearray(JPEG)}, {"body": bytearray(b"junk")}], context)
    names = {name for by_type in context.metrics.cache.values() for name in by_type}
    assert {"CaptionDecodeSteps", "CaptionInferenceTime", "CaptionRequestErrors"} <= names, names
