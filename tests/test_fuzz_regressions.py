"""What fuzzing found, kept as plain cases: each failed before the fix in handler/request_parsing.py.

The requests go through TorchServe's own frame reader (`ops.fuzzing.frames`),
because the first finding only exists there: the worker decodes an
application/json body into whatever JSON it holds.
"""

from __future__ import annotations

import base64
import json

import pytest

from handler.request_parsing import BadRequest, RequestLimits, parse_request
from ops.fuzzing.cases import Part, Request
from ops.fuzzing.in_process import InProcessService
from ops.fuzzing.images import base_images
from tests.helpers import write_tiny_export

JPEG = base_images()["JPEG"]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    service = InProcessService(write_tiny_export(tmp_path_factory.mktemp("regression-export"), seed=1, image_size=16))
    yield service
    service.close()


def _answer(service, request):
    (answer,), _ = service.answer([request])
    return answer.status, json.loads(answer.text)


@pytest.mark.parametrize("body, kind", [
    (b"1", "a number"),  # was read as 1 zero byte: 415 "not an image"
    (b"10000000000", "a number"),  # was bytes(10**10): 10 GB of zeros asked for
    (b"-1", "a number"),  # was ValueError "negative count" out of bytes()
    (b"2.5", "a number"),  # was TypeError out of bytes()
    (b"null", "null"),  # was TypeError out of bytes()
    (b"true", "true or false"),
])
def test_a_json_scalar_body_is_refused_as_json(service, body, kind):
    status, error = _answer(service, Request.raw(body, "application/json"))
    assert (status, error["status"]) == (400, 400)
    assert error["error"] == f'JSON body must be an object like {{"image": "<base64>"}}, got {kind}'


def test_a_json_scalar_file_field_is_refused_as_json(service):
    status, error = _answer(service, Request.form(Part("data", "application/json", b"7")))
    assert status == 400 and "got a number" in error["error"]


@pytest.mark.parametrize("text", ["1_0", "٣", "+1_2", "1" * 25])
def test_option_text_must_be_ascii_digits(text):
    """int() alone took "1_0" as 10 and Arabic-Indic digits as numbers."""
    row = {"data": bytearray(JPEG), "max_length": bytearray(text.encode())}
    with pytest.raises(BadRequest, match="max_length must be an integer"):
        parse_request(row, RequestLimits())


@pytest.mark.parametrize("text", ["1_0", "٣", "0x1", "nan", "inf", "1" * 41])
def test_number_option_text_must_be_ascii_decimal(text):
    """float() alone took "1_0" as 10, other scripts' digits, and nan/inf spelled out."""
    row = {"data": bytearray(JPEG), "do_sample": bytearray(b"true"), "temperature": bytearray(text.encode())}
    with pytest.raises(BadRequest, match="temperature must be a number"):
        parse_request(row, RequestLimits())


@pytest.mark.parametrize("text, value", [("0.7", 0.7), (" .5 ", 0.5), ("1e-1", 0.1), ("+1", 1.0)])
def test_plain_number_text_is_still_read(text, value):
    row = {"data": bytearray(JPEG), "do_sample": bytearray(b"true"), "temperature": bytearray(text.encode())}
    assert parse_request(row, RequestLimits()).options.decoding.temperature == value


@pytest.mark.parametrize("text, value", [("7", 7), (" 3 ", 3), ("+2", 2)])
def test_plain_option_text_is_still_read(text, value):
    row = {"data": bytearray(JPEG), "max_length": bytearray(text.encode())}
    assert parse_request(row, RequestLimits()).options.max_length == value


def test_json_after_leading_whitespace_is_read_as_json(service):
    """A JSON body without its Content-Type was recognised only when "{" was its first byte."""
    body = b'\n  {"image": "' + base64.b64encode(JPEG) + b'", "max_length": 3}'
    status, reply = _answer(service, Request.raw(body, ""))
    assert status == 200 and reply["max_length"] == 3


@pytest.mark.parametrize("content_type", ["application/json", ""])
def test_json_after_a_byte_order_mark_is_read_as_json(service, content_type):
    """Found by `make fuzz`: TorchServe's worker leaves a body starting with a UTF-8 BOM undecoded,
    and the handler then took it for image bytes (415 "not an image")."""
    body = b"\xef\xbb\xbf" + json.dumps({"image": base64.b64encode(JPEG).decode(), "beam_size": 2}).encode()
    status, reply = _answer(service, Request.raw(body, content_type))
    assert status == 200 and reply["beam_size"] == 2
    status, error = _answer(service, Request.raw(b"\xef\xbb\xbf{}", content_type))
    assert status == 400 and "lacks" in error["error"]
