"""Request parsing on its own (no model): the forms clients send, and what a refusal echoes back."""

import base64
import json

import pytest

from handler.request_parsing import BadRequest, RequestLimits, decode_image, parse_request
from ops.request_corpus import encode, png_bytes, scene

LIMITS = RequestLimits()
JPEG = encode(scene(3), "JPEG", quality=90)


def _refusal(row, limits=LIMITS) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        parse_request(row, limits)
    return caught.value


@pytest.mark.parametrize("num_captions, n_best", [(2, 2.0), ("2", 2), (2, b"2")])
def test_num_captions_and_its_older_name_may_both_be_given_when_equal(num_captions, n_best):
    row = {"data": bytearray(JPEG), "beam_size": 3, "num_captions": num_captions, "n_best": n_best}
    assert parse_request(row, LIMITS).options.num_captions == 2
    row["n_best"] = 3
    assert "got num_captions=2, n_best=3" in _refusal(row).message


@pytest.mark.parametrize("encoded", [
    base64.encodebytes(JPEG).decode(),  # wrapped at 76 characters, as `base64 FILE` writes it
    base64.urlsafe_b64encode(JPEG).decode().rstrip("="),  # URL-safe, padding dropped
    "data:image/jpeg;base64," + base64.b64encode(JPEG).decode(),
])
def test_base64_as_tools_write_it_is_read(encoded):
    request = parse_request({"body": {"image": encoded}}, LIMITS)
    assert request.image.size == (128, 128)


def test_base64_text_sent_as_the_body_gets_a_415_that_says_so():
    error = _refusal({"body": bytearray(base64.encodebytes(JPEG))})
    assert error.status == 415 and "looks like base64 text" in error.message


def test_refusals_never_echo_a_long_field_name_or_value():
    long = "x" * 5000
    v2_image = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(JPEG).decode()]}
    bodies = [
        {"image": base64.b64encode(JPEG).decode(), long: 1},
        {"inputs": [v2_image], long: 1},
        {"inputs": [v2_image], "outputs": [{"name": long}]},
        {"inputs": [v2_image], "id": [long]},
        {"inputs": [v2_image, {**v2_image, "name": long}, {**v2_image, "name": long}]},
        {"inputs": [v2_image, {"name": "beam_size", "datatype": long, "shape": [1], "data": [2]}]},
        {"inputs": [v2_image, {"name": "beam_size", "datatype": "INT32", "shape": [1] * 3000 + [2], "data": [2]}]},
        {"image": base64.b64encode(JPEG).decode(), "max_length": 1e300},
    ]
    for body in bodies:
        error = _refusal({"body": body})
        assert error.status == 400 and len(error.message) < 400, error.message[:200]


def test_a_v2_datatype_refusal_names_the_datatype_sent():
    tensor = {"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}
    assert _refusal({"body": {"inputs": [tensor]}}).message == "input 'image' must have datatype BYTES, got 'FP32'"


def test_a_v2_shape_that_multiplies_to_one_only_by_its_signs_is_refused():
    tensor = {"name": "image", "datatype": "BYTES", "shape": [-1, -1], "data": [base64.b64encode(JPEG).decode()]}
    assert "shape [1]" in _refusal({"body": {"inputs": [tensor]}}).message


def test_the_service_limit_on_pixels_is_the_one_that_counts():
    """Pillow's own bomb warning (89 M pixels) neither refuses what the limit allows nor names a second limit."""
    header_only = png_bytes(10_000, 10_000, 1, 0, b"\x00" * 1251, rows=2)  # 100 M pixels, two rows of data
    with pytest.raises(BadRequest) as refused:
        decode_image(header_only, LIMITS)
    assert refused.value.status == 413 and "40000000" in refused.value.message
    assert "89478485" not in refused.value.message
    # Within a raised limit it is decoded (Pillow fills the rows the file lacks).
    assert decode_image(header_only, RequestLimits(max_image_pixels=120_000_000)).size == (10_000, 10_000)
    bomb = png_bytes(100_000, 100_000, 1, 0, b"\x00" * 12_501, rows=2)  # beyond what Pillow opens at all
    with pytest.raises(BadRequest) as refused:
        decode_image(bomb, RequestLimits(max_image_pixels=120_000_000))
    assert refused.value.status == 413 and "120000000 pixels" in refused.value.message


def test_a_json_body_is_parsed_the_same_as_bytes_or_as_an_object():
    body = {"image": base64.b64encode(JPEG).decode(), "beam_size": 2}
    as_bytes = parse_request({"body": bytearray(json.dumps(body).encode())}, LIMITS)
    as_object = parse_request({"body": body}, LIMITS)
    assert as_bytes.options == as_object.options and as_bytes.options.beam_size == 2
