"""Turn one TorchServe request into a decoded image and validated decoding options.

TorchServe hands the handler one dict per request, shaped by how it arrived:

- raw bytes (`curl --data-binary @img.jpg -H 'Content-Type: image/jpeg'`): {"body": bytearray}
- JSON (`Content-Type: application/json`): {"body": {"image": "<base64>", "beam_size": 3, ...}}
- multipart form: one key per field, e.g. {"data": bytearray, "max_length": bytearray(b"12")}
- gRPC: one key per entry of the `input` map, every value bytes
- KServe v2 / Open Inference Protocol (`POST /v2/models/<name>/infer`): the JSON body
  {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["<base64>"]}, ...]},
  read here rather than by TorchServe's kservev2 envelope (see `parse_v2_body`)

Everything here is plain Python (no TorchServe import), so it is unit tested
directly. Problems raise `BadRequest` with an HTTP status and a message that
says what to fix; the handler answers that request alone with it.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import io
import json
import logging
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

from PIL import Image, UnidentifiedImageError

from model.transforms import to_rgb

IMAGE_FIELDS = ("data", "image", "file", "body")
OPTION_FIELDS = ("max_length", "beam_size", "n_best", "stream")
# The only decoders untrusted bytes reach. Pillow can open many more formats, and some
# are risky: EPS hands the file to Ghostscript, rarely used decoders see little fuzzing.
# "JPEG" includes the multi-picture JPEGs (MPO) many cameras write.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
# KServe v2 requests: the image input, option inputs (also accepted as request `parameters`),
# and the outputs a request may ask for by name (handler/open_inference.py writes them).
V2_IMAGE_INPUT = "image"
V2_OPTIONS = ("max_length", "beam_size", "n_best")
V2_INTEGER_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
V2_OUTPUTS = ("caption", "score", "tokens", "scores", "ended", "alternatives", "alternative_scores")
# model_name and model_version: TorchServe's OIP gRPC service (ModelInfer) adds them to the body.
V2_BODY_FIELDS = ("id", "inputs", "outputs", "parameters", "model_name", "model_version")
Image.init()  # register every plugin now: `Image.open(formats=...)` looks the names up

logger = logging.getLogger(__name__)

# Option text is plain ASCII digits: int() alone would also take "1_0" (10) and other scripts' digits.
INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
# What TorchServe's worker makes of an application/json body that holds a JSON scalar.
JSON_SCALAR_NAMES = {bool: "true or false", int: "a number", float: "a number", type(None): "null"}


class BadRequest(ValueError):
    """A request the handler refuses; `status` is the HTTP code sent back."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.v2: OpenInferenceCall | None = None  # set when the refused body was a KServe v2 request


@dataclass(frozen=True)
class RequestLimits:
    """What a single request may ask for; comes from the model's `model-config.yaml`."""

    max_length: int = 20
    max_beam_size: int = 8
    max_image_pixels: int = 40_000_000


@dataclass(frozen=True)
class CaptionOptions:
    max_length: int
    beam_size: int = 1
    n_best: int = 1
    stream: bool = False

    @property
    def method(self) -> str:
        return "greedy" if self.beam_size == 1 else "beam"


@dataclass(frozen=True)
class OpenInferenceCall:
    """What a KServe v2 request asked of its answer: the `id` to echo and the outputs to send."""

    request_id: str | None = None
    outputs: tuple[str, ...] = V2_OUTPUTS


@dataclass
class CaptionRequest:
    image: Image.Image | None  # upright 8-bit RGB; the handler drops it once `pixels` is made
    options: CaptionOptions
    pixels: Any = None  # the model input (3, S, S), made by the handler's preprocess
    v2: OpenInferenceCall | None = None  # set for a KServe v2 body: answer in v2 form


@dataclass
class Failed:
    """A request refused before decoding, with the error to answer it with."""

    error: BadRequest


def _as_text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8").strip()
        except UnicodeDecodeError as error:
            raise BadRequest(f"option value is not UTF-8 text: {error}") from error
    return str(value).strip()


def _int_option(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise BadRequest(f"{name} must be an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        text = _as_text(value)
        if not INTEGER_TEXT.fullmatch(text) or len(text) > 20:
            raise BadRequest(f"{name} must be an integer, got {text[:40]!r}")
        value = int(text)
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, got {value}")
    return value


def _bool_option(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _as_text(value).lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise BadRequest(f"{name} must be true or false, got {text[:40]!r}")


def parse_options(fields: Mapping[str, Any], limits: RequestLimits) -> CaptionOptions:
    """Validate decoding options; absent ones take defaults (greedy, the model's max length)."""
    max_length = limits.max_length
    if fields.get("max_length") is not None:
        max_length = _int_option("max_length", fields["max_length"], 1, limits.max_length)
    beam_size = 1
    if fields.get("beam_size") is not None:
        beam_size = _int_option("beam_size", fields["beam_size"], 1, limits.max_beam_size)
    n_best = 1
    if fields.get("n_best") is not None:
        n_best = _int_option("n_best", fields["n_best"], 1, beam_size)
    stream = _bool_option("stream", fields["stream"]) if fields.get("stream") is not None else False
    return CaptionOptions(max_length=max_length, beam_size=beam_size, n_best=n_best, stream=stream)


def decode_image(data: bytes, limits: RequestLimits) -> Image.Image:
    """Bytes -> upright RGB PIL image, refusing what cannot or should not be decoded.

    The size check comes before any pixel is decoded, so a decompression bomb
    (a small file declaring enormous dimensions) costs nothing but its header.
    """
    if not data:
        raise BadRequest("empty image: send the image file's bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            width, height = image.size
            if width < 1 or height < 1:
                raise BadRequest(f"image has no pixels ({width}x{height})")
            if width * height > limits.max_image_pixels:
                raise BadRequest(
                    f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_image_pixels}",
                    status=413,
                )
            image.load()
            return to_rgb(image)
    except BadRequest:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadRequest(f"image refused as a decompression bomb: {error}", status=413) from error
    except UnidentifiedImageError:
        raise BadRequest(
            f"body is not an image this service reads ({len(data)} bytes starting {bytes(data[:8])!r}): "
            "unknown or corrupt header; send JPEG, PNG, GIF, BMP, TIFF or WebP bytes",
            status=415,
        ) from None
    except MemoryError:
        raise BadRequest("image is too large to decode", status=413) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise BadRequest(f"image could not be decoded (truncated or corrupt?): {error}") from error
    except Exception as error:  # noqa: BLE001 - decoders fed crafted bytes raise all kinds of errors
        logger.warning("image decoder raised an unexpected error", exc_info=True)
        raise BadRequest(f"image could not be decoded: {type(error).__name__}: {error}") from error


def _base64_image(value: Any, where: str = 'JSON field "image"') -> bytes:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{where} must be a non-empty base64 string")
    if value.startswith("data:") and "," in value:  # a data URL from a browser
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRequest(f"{where} is not valid base64: {error}") from error


def _from_json(document: Any, limits: RequestLimits) -> CaptionRequest:
    if not isinstance(document, dict):
        raise BadRequest('JSON body must be an object like {"image": "<base64>"}')
    unknown = sorted(set(document) - {"image", *OPTION_FIELDS})
    if unknown:
        raise BadRequest(f"unknown JSON fields {unknown}; allowed: image, {', '.join(OPTION_FIELDS)}")
    if "image" not in document:
        raise BadRequest('JSON body lacks "image" (the image file, base64-encoded)')
    options = parse_options(document, limits)
    return CaptionRequest(decode_image(_base64_image(document["image"]), limits), options)


def _json_document(data: bytes) -> Any | None:
    """The JSON in a bytes body (gRPC and untyped bodies carry JSON as bytes), or None for image bytes."""
    # Leading whitespace and a UTF-8 byte order mark (Windows tools write one) are still JSON;
    # TorchServe's worker leaves a body with a BOM undecoded even under application/json.
    text = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    if text.lstrip(b" \t\r\n")[:1] not in (b"{", b"["):
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise BadRequest("body starts like JSON but is not valid JSON") from None
    except RecursionError:  # e.g. 100,000 nested brackets
        raise BadRequest("JSON body is nested too deeply") from None


# --- KServe v2 / Open Inference Protocol bodies ---------------------------------------------------


def is_v2_body(document: Any) -> bool:
    """A JSON object with "inputs" is a v2 inference request (the service's own JSON has "image")."""
    return isinstance(document, dict) and "inputs" in document


def _v2_tensors(inputs: Any) -> dict[str, dict[str, Any]]:
    """The request's input tensors by name, refusing unknown, unnamed and repeated ones."""
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest(
            '"inputs" must be a non-empty list of tensors, e.g. '
            '[{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["<base64>"]}]'
        )
    tensors: dict[str, dict[str, Any]] = {}
    for position, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadRequest(f'input {position} must be an object with a string "name"')
        if tensor["name"] in tensors:
            raise BadRequest(f"input {tensor['name']!r} is given twice")
        tensors[tensor["name"]] = tensor
    unknown = sorted(set(tensors) - {V2_IMAGE_INPUT, *V2_OPTIONS})
    if unknown:
        raise BadRequest(
            f"unknown inputs {unknown}; send {V2_IMAGE_INPUT!r} (BYTES, base64) and optionally "
            f"{', '.join(V2_OPTIONS)} (INT32)"
        )
    if V2_IMAGE_INPUT not in tensors:
        raise BadRequest(f'no {V2_IMAGE_INPUT!r} input: add {{"name": "image", "datatype": "BYTES", '
                         '"shape": [1], "data": ["<base64 of the image file>"]}')
    return tensors


def _v2_element(tensor: dict[str, Any], datatypes: frozenset[str] | set[str]) -> Any:
    """The one element of a shape-[1] tensor (its `data` flat, [x], or nested, [[x]])."""
    name, datatype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
    if datatype not in datatypes:
        raise BadRequest(f"input {name!r} must have datatype {' or '.join(sorted(datatypes))}, got {datatype!r}")
    if (
        not isinstance(shape, list)
        or not all(isinstance(size, int) and not isinstance(size, bool) for size in shape)
        or math.prod(shape) != 1
    ):
        raise BadRequest(
            f"input {name!r} must hold one element (shape [1]), got shape {shape!r}; "
            "send one image per request (TorchServe batches concurrent requests)"
        )
    data = tensor.get("data")
    while isinstance(data, list) and len(data) == 1:
        data = data[0]
    if data is None or isinstance(data, (list, dict)):
        raise BadRequest(f'input {name!r} must hold one element in "data", got {str(data)[:40]}')
    return data


def _v2_options(tensors: dict[str, dict[str, Any]], parameters: Any) -> dict[str, Any]:
    """Option values from the option inputs and the request's `parameters`, which may not both set one."""
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise BadRequest('"parameters" must be an object, e.g. {"beam_size": 3}')
    unknown = sorted(set(parameters) - set(V2_OPTIONS))
    if unknown:
        raise BadRequest(f"unknown parameters {unknown}; allowed: {', '.join(V2_OPTIONS)}")
    options = dict(parameters)
    for name in V2_OPTIONS:
        if name in tensors:
            if name in parameters:
                raise BadRequest(f"{name} is given both as an input and as a parameter; give it once")
            options[name] = _v2_element(tensors[name], V2_INTEGER_TYPES)
    return options


def _v2_call(document: dict[str, Any]) -> OpenInferenceCall:
    """The `id` to echo and the outputs asked for (all of them when "outputs" is absent)."""
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f'"id" must be a string, got {request_id!r}')
    requested = document.get("outputs")
    if requested is None:
        return OpenInferenceCall(request_id or None)
    if not isinstance(requested, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                  for o in requested):
        raise BadRequest('"outputs" must be a list like [{"name": "caption"}]')
    names = tuple(o["name"] for o in requested)
    unknown = sorted(set(names) - set(V2_OUTPUTS))
    if unknown:
        raise BadRequest(f"unknown outputs {unknown}; this model answers {', '.join(V2_OUTPUTS)}")
    return OpenInferenceCall(request_id or None, tuple(name for name in V2_OUTPUTS if name in names))


def parse_v2_body(document: dict[str, Any], limits: RequestLimits) -> CaptionRequest:
    """A KServe v2 inference request -> image + options, remembering what its answer must hold.

    TorchServe's own kservev2 envelope is not used: in 0.12 it applies to every
    request of the server (raw image bytes on /predictions fail in it), turns each
    input tensor into a request of its own, reads only the first request of a
    batch (pytorch/serve#2158) and drops `parameters`. Read here, each request of
    a batch is parsed, answered and refused on its own.
    """
    unknown = sorted(set(document) - set(V2_BODY_FIELDS))
    if unknown:
        raise BadRequest(f"unknown fields {unknown} in the v2 request; allowed: {', '.join(V2_BODY_FIELDS)}")
    tensors = _v2_tensors(document["inputs"])
    call = _v2_call(document)
    options = parse_options(_v2_options(tensors, document.get("parameters")), limits)
    image_data = _v2_element(tensors[V2_IMAGE_INPUT], {"BYTES"})
    image = decode_image(_base64_image(image_data, where=f"input {V2_IMAGE_INPUT!r}"), limits)
    return CaptionRequest(image, options, v2=call)


def parse_request(row: Mapping[str, Any], limits: RequestLimits) -> CaptionRequest:
    """One TorchServe request dict -> image + options, or `BadRequest`."""
    if not isinstance(row, Mapping) or not row:
        raise BadRequest(
            "empty request: send image bytes with a Content-Type (e.g. image/jpeg), "
            'a multipart file field "data", or JSON {"image": "<base64>"}'
        )
    image_fields = [name for name in IMAGE_FIELDS if name in row]
    unknown = sorted(set(row) - set(IMAGE_FIELDS) - set(OPTION_FIELDS))
    if unknown:
        raise BadRequest(f"unknown fields {unknown}; send the image as 'data' and options {', '.join(OPTION_FIELDS)}")
    if not image_fields:
        raise BadRequest("no image in the request: add a file field named 'data'")
    if len(image_fields) > 1:
        raise BadRequest(f"one image per request, got fields {image_fields}")
    value = row[image_fields[0]]
    if isinstance(value, str):
        raise BadRequest(
            "got text where an image was expected: send image bytes with an image/* Content-Type, "
            'or JSON {"image": "<base64>"} with Content-Type application/json',
            status=415,
        )
    if isinstance(value, (bytes, bytearray, memoryview)):
        document = _json_document(bytes(value))
    elif isinstance(value, (dict, list)):
        document = value
    else:
        # TorchServe's worker turns an application/json body into whatever JSON it holds, so a
        # scalar arrives here; `bytes(10_000_000_000)` would have asked for 10 GB of zeros.
        kind = JSON_SCALAR_NAMES.get(type(value), type(value).__name__)
        raise BadRequest(f'JSON body must be an object like {{"image": "<base64>"}}, got {kind}')
    if document is None:
        options = parse_options(row, limits)
        return CaptionRequest(decode_image(bytes(value), limits), options)
    if any(name in row for name in OPTION_FIELDS):
        raise BadRequest("put options inside the JSON body, not beside it")
    if is_v2_body(document):
        try:
            return parse_v2_body(document, limits)
        except BadRequest as error:
            request_id = document.get("id")
            error.v2 = OpenInferenceCall(request_id if isinstance(request_id, str) and request_id else None)
            raise
    return _from_json(document, limits)
