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
from model.export_format import export_captioner


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
        # An image posted as an HTML form (curl --data-binary without a Content-Type): its bytes become a
        # field name. The reply says why, and does not echo the body back.
        ({JPEG[:3000].decode("latin-1"): bytearray(b"")}, 415, "arrived as form fields"),
    ],
)
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(export_dir, row, status, words):
    out, statuses, _, _ = run(export_dir, [row, {"body": bytearray(JPEG)}])
    assert statuses == [status, 200]
    assert words in json.loads(out[0])["error"] and len(out[0]) < 1000


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


def _json_row(**options):
    return {"body": {"image": base64.b64encode(JPEG).decode(), **options}}


@pytest.mark.parametrize(
    "options, words",
    [
        ({"do_sample": True, "temperature": 0}, "temperature must be between 0.05 and 2.0"),
        ({"do_sample": True, "temperature": 9.5}, "temperature must be between 0.05 and 2.0"),
        ({"do_sample": True, "temperature": "hot"}, "temperature must be a number"),
        ({"do_sample": True, "temperature": "nan"}, "temperature must be a number"),
        ({"do_sample": True, "top_k": -1}, "top_k must be between 0 and 100"),
        ({"do_sample": True, "top_p": 0}, "top_p must be greater than 0.0 and at most 1.0"),
        ({"do_sample": True, "top_p": 1.5}, "top_p must be greater than 0.0 and at most 1.0"),
        ({"do_sample": True, "seed": -3}, "seed must be between 0 and 4294967295"),
        ({"do_sample": True, "num_captions": 9}, "num_captions must be between 1 and 8"),
        ({"do_sample": True, "beam_size": 3}, "beam_size must be 1 with do_sample=true"),
        ({"do_sample": "maybe"}, "do_sample must be true or false"),
        ({"temperature": 0.7}, "temperature applies only to sampling"),
        ({"seed": 1}, "seed applies only to sampling"),
        ({"num_captions": 2}, "num_captions must be between 1 and 1"),
        ({"beam_size": 3, "num_captions": 4}, "num_captions must be between 1 and 3"),
        ({"beam_size": 3, "n_best": 2, "num_captions": 3}, "n_best is the older name of num_captions"),
        ({"beam_size": 4, "beam_groups": 3}, "beam_groups must divide beam_size (4): one of 1, 2, 4"),
        ({"beam_size": 4, "beam_groups": 5}, "beam_groups must be between 1 and 4"),
        ({"beam_size": 4, "beam_groups": 2, "diversity": -1}, "diversity must be between 0.0 and 10.0"),
        ({"beam_size": 4, "diversity": 1.0}, "diversity applies only to diverse beam search"),
    ],
)
def test_out_of_range_decoding_options_get_a_400_naming_the_option(export_dir, options, words):
    out, statuses, _, _ = run(export_dir, [_json_row(**options), {"body": bytearray(JPEG)}])
    assert statuses == [400, 200]
    assert words in json.loads(out[0])["error"]


def test_several_captions_come_back_in_a_captions_list(export_dir):
    rows = [
        _json_row(do_sample=True, temperature=2.0, num_captions=3, seed=4),
        _json_row(beam_size=4, beam_groups=2, diversity=1.0, num_captions=4),
        _json_row(beam_size=3, n_best=2),
        _json_row(),
    ]
    out, statuses, _, _ = run(export_dir, rows)
    assert statuses == [200] * 4
    sampled, diverse, beam, greedy = (json.loads(o) for o in out)
    assert sampled["method"] == "sample" and sampled["seed"] == 4 and sampled["temperature"] == 2.0
    assert diverse["method"] == "diverse_beam" and diverse["beam_groups"] == 2 and diverse["diversity"] == 1.0
    for body, n in ((sampled, 3), (diverse, 4), (beam, 2)):
        assert len(body["captions"]) == n
        assert len({c["caption"] for c in body["captions"]}) == n, "distinct captions"
        assert body["captions"][0] == {"caption": body["caption"], "tokens": body["tokens"], "score": body["score"]}
        assert all(set(c) == {"caption", "tokens", "score"} for c in body["captions"])
        assert body["alternatives"] == [{"caption": c["caption"], "score": c["score"]} for c in body["captions"][1:]]
    assert "captions" not in greedy and "seed" not in greedy


def test_a_sampled_request_without_a_seed_reports_the_one_that_reproduces_it(export_dir):
    first = json.loads(run(export_dir, [_json_row(do_sample=True, temperature=2.0)])[0][0])
    again = json.loads(run(export_dir, [_json_row(do_sample=True, temperature=2.0, seed=first["seed"])])[0][0])
    assert again["tokens"] == first["tokens"]


def test_every_reply_has_one_score_per_word(export_dir):
    """Sampling hot draws every token now and then; padding, start and language tokens are never chosen."""
    rows = [_json_row(do_sample=True, temperature=2.0, num_captions=2, seed=seed) for seed in range(12)]
    rows += [_json_row(beam_size=3, num_captions=3), _json_row()]
    out, statuses, _, _ = run(export_dir, rows)
    assert statuses == [200] * len(rows)
    for body in map(json.loads, out):
        assert len(body["tokens"]) == len(body["scores"])
        assert not {"<pad>", "<start>"} & set(body["tokens"])


def test_every_decoding_method_in_one_batch_matches_single_requests(export_dir):
    options = [
        {},
        {"beam_size": 3, "max_length": 6},
        {"do_sample": True, "top_k": 5, "seed": 1},
        {"do_sample": True, "temperature": 1.5, "top_p": 0.9, "num_captions": 2, "seed": 2},
        {"beam_size": 4, "beam_groups": 2, "num_captions": 3},
    ]
    rows = [_json_row(**o) for o in options]
    together, _, _, _ = run(export_dir, rows)
    for row, joint in zip(rows, together):
        alone = json.loads(run(export_dir, [row])[0][0])
        joint = json.loads(joint)
        assert alone["tokens"] == joint["tokens"]
        assert alone.get("captions") == joint.get("captions")


def test_multipart_and_grpc_style_text_options_are_read(export_dir):
    row = {"data": bytearray(JPEG), "do_sample": bytearray(b"true"), "temperature": bytearray(b"0.5"),
           "num_captions": bytearray(b"2"), "seed": bytearray(b"9")}
    out, statuses, _, _ = run(export_dir, [row])
    body = json.loads(out[0])
    assert statuses == [200] and body["temperature"] == 0.5 and body["seed"] == 9 and len(body["captions"]) >= 1


def test_sampling_limits_come_from_model_config_yaml(export_dir):
    rows = [_json_row(do_sample=True, num_captions=3), _json_row(do_sample=True, temperature=1.9)]
    out, statuses, _, _ = run(export_dir, rows, {"captioner": {"max_num_captions": 2, "max_temperature": 1.0}})
    assert statuses == [400, 400]
    assert "num_captions must be between 1 and 2" in json.loads(out[0])["error"]
    assert "temperature must be between 0.05 and 1.0" in json.loads(out[1])["error"]


def test_a_sampled_request_streams_its_words(long_caption_export):
    rows = [_json_row(do_sample=True, seed=3, stream=True)]
    handler, context, reader = make_handler(long_caption_export, 1)
    assert handler.handle(rows, context) == [""]
    chunks = _streamed_chunks(reader)
    result = chunks[-1]
    assert result["method"] == "sample"
    assert [c["token"] for c in chunks[:-1]] == result["tokens"]
