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
import secrets
import warnings
from dataclasses import dataclass, field as dataclass_field, fields as dataclass_fields
from typing import Any, Mapping, Sequence

from PIL import Image, UnidentifiedImageError

from model.batch_captioning import DecodeSpec
from model.domain import UNKNOWN, DomainVerdict
from model.transforms import to_rgb

IMAGE_FIELDS = ("data", "image", "file", "body")
OPTION_FIELDS = (
    "max_length", "beam_size", "num_captions", "n_best", "beam_groups", "diversity",
    "do_sample", "temperature", "top_k", "top_p", "seed", "stream", "language", "attention",
)
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "seed")  # meaningful only with do_sample=true
MAX_SEED = 2**32 - 1
DEFAULT_DIVERSITY = 0.5  # the penalty when beam_groups > 1 and none is asked for (the paper's usual value)
# The only decoders untrusted bytes reach. Pillow can open many more formats, and some
# are risky: EPS hands the file to Ghostscript, rarely used decoders see little fuzzing.
# "JPEG" includes the multi-picture JPEGs (MPO) many cameras write.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
# KServe v2 requests: option inputs (also accepted as request `parameters`) with the
# datatypes each may have, and the outputs a request may ask for by name (handler/open_inference.py
# writes them). Every option of /predictions but `stream`: v2 has no streaming.
V2_INTEGER_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
V2_NUMBER_TYPES = V2_INTEGER_TYPES | {"FP32", "FP64"}
V2_OPTION_TYPES: dict[str, frozenset[str]] = {
    **dict.fromkeys(("max_length", "beam_size", "num_captions", "n_best", "beam_groups", "top_k", "seed"),
                    V2_INTEGER_TYPES),
    **dict.fromkeys(("diversity", "temperature", "top_p"), V2_NUMBER_TYPES),
    **dict.fromkeys(("do_sample", "attention"), frozenset({"BOOL"})),
    "language": frozenset({"BYTES"}),
}
V2_OPTIONS = tuple(V2_OPTION_TYPES)
V2_OUTPUTS = ("caption", "score", "tokens", "scores", "ended", "alternatives", "alternative_scores", "domain_score",
              "in_domain", "language", "seed", "attention")
V2_NO_STREAM = ("there is no streaming over v2: stream the caption from /predictions (\"stream\": true) "
                "or gRPC StreamPredictions")
# model_name and model_version: TorchServe's OIP gRPC service (ModelInfer) adds them to the body.
V2_BODY_FIELDS = ("id", "inputs", "outputs", "parameters", "model_name", "model_version")
Image.init()  # register every plugin now: `Image.open(formats=...)` looks the names up

logger = logging.getLogger(__name__)

# Option text is plain ASCII digits: int() and float() alone would also take "1_0" (10) and other
# scripts' digits.
INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
NUMBER_TEXT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
WHITESPACE = re.compile(r"\s+")
# A body of base64 text sent where the file's bytes belong (e.g. `base64 img.jpg | curl --data-binary @-`).
BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\r\n_-]{16,}")
BASE64_BODY_HINT = ('; this body looks like base64 text: send the file itself, or JSON {"image": "<base64>"} '
                    "with Content-Type application/json")
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
    """What a single request may ask for; comes from the `captioner:` section of `model-config.yaml`."""

    max_length: int = 20
    max_beam_size: int = 8
    max_num_captions: int = 8  # sampled captions per request (beam search gives at most beam_size)
    min_temperature: float = 0.05
    max_temperature: float = 2.0
    max_top_k: int = 100
    max_diversity: float = 10.0
    max_image_pixels: int = 40_000_000
    # The model's, not settings: its caption languages (the first is the default), G when its decoder
    # attends over a G x G grid (0 when it has no attention), and its decoder, named when `attention` is refused.
    languages: tuple[str, ...] = ("en",)
    attention_grid: int = 0
    decoder: str = "show_tell"

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, Any], max_length: int, languages: Sequence[str] = ("en",), *,
        attention_grid: int = 0, decoder: str = "show_tell",
    ) -> "RequestLimits":
        """The limits the settings name, defaults for the others (`max_length` and the fields above: the model's)."""
        model_fields = {"languages": tuple(languages), "attention_grid": attention_grid, "decoder": decoder}
        values: dict[str, Any] = {"max_length": max_length, **model_fields}
        for field in dataclass_fields(cls):
            if field.name in settings and field.name not in model_fields:
                values[field.name] = type(field.default)(settings[field.name])
        return cls(**values)


@dataclass(frozen=True)
class CaptionOptions:
    """A request's options, validated by `parse_options` (the one place that checks them).

    `decoding` holds every strategy's settings in one object, as Hugging Face's
    `GenerationConfig` does: greedy (the default), beam search (`beam_size`),
    diverse beam search (`beam_groups`, `diversity`), sampling (`sample` with
    `temperature`, `top_k`, `top_p`, `seed`), and how many captions come back.
    """

    decoding: DecodeSpec
    stream: bool = False
    language: str = "en"  # ISO 639-1 code of the caption's language
    attention: bool = False  # the reply carries each token's attention map (models that attend only)

    @property
    def max_length(self) -> int:
        return self.decoding.max_length

    @property
    def beam_size(self) -> int:
        return self.decoding.beam_size

    @property
    def num_captions(self) -> int:
        return self.decoding.n_best

    @property
    def method(self) -> str:
        return self.decoding.method

    def in_reply(self) -> dict[str, Any]:
        """The settings a reply echoes besides method, beam_size and max_length: the seed to reproduce it."""
        spec = self.decoding
        if spec.sample:
            return {"temperature": spec.temperature, "top_k": spec.top_k, "top_p": spec.top_p, "seed": spec.seed}
        if spec.beam_groups > 1:
            return {"beam_groups": spec.beam_groups, "diversity": spec.diversity}
        return {}


@dataclass(frozen=True)
class OpenInferenceCall:
    """What a KServe v2 request asked of its answer: the `id` to echo and the outputs to send."""

    request_id: str | None = None
    outputs: tuple[str, ...] = V2_OUTPUTS


@dataclass
class CaptionRequest:
    image: Any  # upright 8-bit RGB PIL image (a video model: a list of them); dropped once `pixels` is made
    options: CaptionOptions
    pixels: Any = None  # the model input (3, S, S), made by the handler's preprocess
    in_reply: dict[str, Any] = dataclass_field(default_factory=dict)  # added to the reply (a clip: its frames)
    v2: OpenInferenceCall | None = None  # set for a KServe v2 body: answer in v2 form
    domain: DomainVerdict = UNKNOWN  # how much the image looks like the training images, set by the handler


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


def _int_option(name: str, value: Any, low: int, high: int, hint: str = "") -> int:
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
        raise BadRequest(f"{name} must be between {low} and {high}, got {_shown_number(value)}{hint}")
    return value


def _shown_number(value: int) -> str:
    """An integer for an error message: 1e300 sent as a number is a 301-digit int, not worth echoing whole."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"


def _float_option(name: str, value: Any, low: float, high: float, *, above_low: bool = False) -> float:
    """A number in [low, high] (or (low, high] with `above_low`), from JSON or from text."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = _as_text(value)
        if not NUMBER_TEXT.fullmatch(text) or len(text) > 40:
            raise BadRequest(f"{name} must be a number, got {text[:40]!r}")
        value = float(text)
    value = float(value)
    inside = (low < value if above_low else low <= value) and value <= high
    if not math.isfinite(value) or not inside:
        allowed = f"greater than {low} and at most {high}" if above_low else f"between {low} and {high}"
        raise BadRequest(f"{name} must be {allowed}, got {value}")
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


def _sampling_options(given: Mapping[str, Any], limits: RequestLimits) -> dict[str, Any]:
    """temperature, top_k, top_p and seed for a sampling request (a fresh seed when none is given)."""
    values: dict[str, Any] = {}
    if "temperature" in given:
        values["temperature"] = _float_option(
            "temperature", given["temperature"], limits.min_temperature, limits.max_temperature
        )
    if "top_k" in given:
        values["top_k"] = _int_option("top_k", given["top_k"], 0, limits.max_top_k, " (0: no limit)")
    if "top_p" in given:
        values["top_p"] = _float_option("top_p", given["top_p"], 0.0, 1.0, above_low=True)
    values["seed"] = _int_option("seed", given["seed"], 0, MAX_SEED) if "seed" in given else secrets.randbelow(MAX_SEED + 1)
    return values


def _beam_group_options(given: Mapping[str, Any], beam_size: int, limits: RequestLimits) -> dict[str, Any]:
    """beam_groups (dividing beam_size) and diversity, which only several groups use."""
    groups = _int_option("beam_groups", given["beam_groups"], 1, beam_size) if "beam_groups" in given else 1
    if beam_size % groups:
        divisors = ", ".join(str(d) for d in range(1, beam_size + 1) if beam_size % d == 0)
        raise BadRequest(f"beam_groups must divide beam_size ({beam_size}): one of {divisors}; got {groups}")
    if "diversity" in given and groups == 1:
        raise BadRequest("diversity applies only to diverse beam search: add beam_groups > 1 (dividing beam_size)")
    if groups == 1:
        return {}
    diversity = DEFAULT_DIVERSITY
    if "diversity" in given:
        diversity = _float_option("diversity", given["diversity"], 0.0, limits.max_diversity)
    return {"beam_groups": groups, "diversity": diversity}


def _num_captions(given: Mapping[str, Any], beam_size: int, do_sample: bool, limits: RequestLimits) -> int:
    """How many captions to return: `num_captions`, or `n_best`, its older name (not both, unless equal)."""
    counts = {name: _caption_count(name, given[name], beam_size, do_sample, limits)
              for name in ("num_captions", "n_best") if name in given}
    if len(set(counts.values())) > 1:
        raise BadRequest(
            f"n_best is the older name of num_captions; give one of them "
            f"(got num_captions={counts['num_captions']}, n_best={counts['n_best']})"
        )
    return next(iter(counts.values()), 1)


def _caption_count(name: str, value: Any, beam_size: int, do_sample: bool, limits: RequestLimits) -> int:
    if beam_size > 1:
        return _int_option(name, value, 1, beam_size, " (at most beam_size)")
    if do_sample:
        return _int_option(name, value, 1, limits.max_num_captions, " (max_num_captions of this model)")
    return _int_option(
        name, value, 1, 1, "; greedy decoding gives one caption: for more, ask beam_size >= that many "
        "or do_sample=true",
    )


def parse_options(fields: Mapping[str, Any], limits: RequestLimits) -> CaptionOptions:
    """Validate decoding options; absent ones take defaults (greedy, the model's max length).

    Every check of a request's options is here, each refusal naming the option
    and what it may be; settings that would do nothing (temperature without
    do_sample, diversity with one beam group) are refused rather than ignored.
    """
    given = {name: fields[name] for name in OPTION_FIELDS if fields.get(name) is not None}
    values: dict[str, Any] = {}
    values["max_length"] = (
        _int_option("max_length", given["max_length"], 1, limits.max_length)
        if "max_length" in given else limits.max_length
    )
    beam_size = _int_option("beam_size", given["beam_size"], 1, limits.max_beam_size) if "beam_size" in given else 1
    do_sample = _bool_option("do_sample", given["do_sample"]) if "do_sample" in given else False
    if do_sample and beam_size > 1:
        raise BadRequest(
            f"beam_size must be 1 with do_sample=true, got {beam_size}: sampling draws its captions one by one "
            "(ask num_captions for several)"
        )
    for name in SAMPLING_OPTIONS:
        if name in given and not do_sample:
            raise BadRequest(f"{name} applies only to sampling: add do_sample=true")
    if do_sample:
        values.update(_sampling_options(given, limits))
    values.update(_beam_group_options(given, beam_size, limits))
    values["n_best"] = _num_captions(given, beam_size, do_sample, limits)
    stream = _bool_option("stream", given["stream"]) if "stream" in given else False
    language = _language_option(given["language"], limits) if "language" in given else limits.languages[0]
    attention = _bool_option("attention", given["attention"]) if "attention" in given else False
    if attention and not limits.attention_grid:
        raise BadRequest(
            f"attention maps need a model whose decoder attends over the image; this model's decoder is "
            f"{limits.decoder}, which has none: drop attention, or call a soft_attention model"
        )
    return CaptionOptions(DecodeSpec(beam_size=beam_size, sample=do_sample, **values), stream, language, attention)


def _language_option(value: Any, limits: RequestLimits) -> str:
    """An ISO 639-1 code among the model's languages."""
    code = _as_text(value).strip()
    if code not in limits.languages:
        shown = code if len(code) <= 20 else code[:20] + "..."
        raise BadRequest(
            f"language must be one of this model's languages ({', '.join(limits.languages)}), got {shown!r}"
        )
    return code


def decode_image(data: bytes, limits: RequestLimits) -> Image.Image:
    """Bytes -> upright RGB PIL image, refusing what cannot or should not be decoded.

    The size check comes before any pixel is decoded, so a decompression bomb
    (a small file declaring enormous dimensions) costs nothing but its header.
    """
    if not data:
        raise BadRequest("empty image: send the image file's bytes")
    try:
        with warnings.catch_warnings():
            # This service's own limit, checked next, is the one that counts; Pillow's warning (at 89 M
            # pixels) would refuse what `max_image_pixels` allows, and name a second limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
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
    except Image.DecompressionBombError:
        # Above twice Pillow's MAX_IMAGE_PIXELS it refuses to open at all, whatever this service allows.
        most = min(limits.max_image_pixels, 2 * (Image.MAX_IMAGE_PIXELS or 0)) or limits.max_image_pixels
        raise BadRequest(f"image is over {most} pixels, the most this service decodes", status=413) from None
    except UnidentifiedImageError:
        hint = BASE64_BODY_HINT if BASE64_TEXT.fullmatch(bytes(data[:64])) else ""
        raise BadRequest(
            f"body is not an image this service reads ({len(data)} bytes starting {bytes(data[:8])!r}): "
            f"unknown or corrupt header; send JPEG, PNG, GIF, BMP, TIFF or WebP bytes{hint}",
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
    """The file in a base64 string, as tools write it: line-wrapped (`base64 FILE`), URL-safe, or unpadded."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{where} must be a non-empty base64 string")
    if value.startswith("data:") and "," in value:  # a data URL from a browser
        value = value.split(",", 1)[1]
    text = WHITESPACE.sub("", value)
    if "-" in text or "_" in text:  # the URL-safe alphabet (RFC 4648 section 5)
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRequest(f"{where} is not valid base64 ({error}): send the file's bytes base64-encoded") from error


class ImageInput:
    """How an image model reads a request's picture: the file's bytes, or JSON "image" (base64).

    The video model's reader (`handler/video_input.py`) has the same members, and
    `parse_request` takes either, so both models parse requests and options alike.
    """

    json_fields: tuple[str, ...] = ("image",)
    missing_json: str = 'JSON body lacks "image" (the image file, base64-encoded)'
    v2_inputs: tuple[str, ...] = ("image",)  # the KServe v2 input that holds the file (BYTES, base64)

    def from_bytes(self, data: bytes, limits: RequestLimits) -> Image.Image:
        return decode_image(data, limits)

    def from_json(self, document: dict[str, Any], limits: RequestLimits) -> Image.Image:
        return decode_image(_base64_image(document["image"]), limits)


IMAGE_INPUT = ImageInput()


def _from_json(document: Any, limits: RequestLimits, media: ImageInput = IMAGE_INPUT) -> CaptionRequest:
    if not isinstance(document, dict):
        raise BadRequest(f'JSON body must be an object like {{"{media.json_fields[0]}": "<base64>"}}')
    unknown = sorted(set(document) - {*media.json_fields, *OPTION_FIELDS})
    if unknown:
        raise BadRequest(
            f"unknown JSON fields {_shown(unknown)}; allowed: {', '.join(media.json_fields)}, "
            f"{', '.join(OPTION_FIELDS)}"
        )
    if not any(name in document for name in media.json_fields):
        raise BadRequest(media.missing_json)
    options = parse_options(document, limits)
    return CaptionRequest(media.from_json(document, limits), options)


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


def _v2_tensors(inputs: Any, media_names: tuple[str, ...]) -> tuple[dict[str, dict[str, Any]], str]:
    """The request's input tensors by name and the name its picture came under (one of `media_names`).

    Unknown, unnamed and repeated inputs are refused, and so is a request with no picture or two.
    """
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
            raise BadRequest(f"input {_shown([tensor['name']])} is given twice")
        tensors[tensor["name"]] = tensor
    if "stream" in tensors:
        raise BadRequest(V2_NO_STREAM)
    unknown = sorted(set(tensors) - {*media_names, *V2_OPTIONS})
    if unknown:
        raise BadRequest(
            f"unknown inputs {_shown(unknown)}; send {media_names[0]!r} (BYTES, base64) and optionally "
            f"the options {', '.join(V2_OPTIONS)}"
        )
    given = [name for name in media_names if name in tensors]
    if not given:
        raise BadRequest(f'no {media_names[0]!r} input: add {{"name": "{media_names[0]}", "datatype": "BYTES", '
                         f'"shape": [1], "data": ["<base64 of the {media_names[0]} file>"]}}')
    if len(given) > 1:
        raise BadRequest(f"give one of the inputs {', '.join(given)}, not both")
    return tensors, given[0]


def _v2_element(tensor: dict[str, Any], datatypes: frozenset[str] | set[str]) -> Any:
    """The one element of a shape-[1] tensor (its `data` flat, [x], or nested, [[x]])."""
    name, datatype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
    if datatype not in datatypes:
        raise BadRequest(f"input {name!r} must have datatype {' or '.join(sorted(datatypes))}, "
                         f"got {_shown([str(datatype)])[1:-1]}")
    if (
        not isinstance(shape, list)
        or not all(isinstance(size, int) and not isinstance(size, bool) and size == 1 for size in shape)
    ):
        raise BadRequest(
            f"input {name!r} must hold one element (shape [1]), got shape {str(shape)[:40]}; "
            "send one image per request (TorchServe batches concurrent requests)"
        )
    data = tensor.get("data")
    while isinstance(data, list) and len(data) == 1:
        data = data[0]
    if data is None or isinstance(data, (list, dict)):
        raise BadRequest(f'input {name!r} must hold one element in "data", got {str(data)[:40]}')
    return data


def _v2_text(value: Any, known: Sequence[str]) -> Any:
    """A BYTES option input's text, as sent over REST or through TorchServe's OIP gRPC service.

    That service (ModelInfer) base64-encodes every BYTES input before the handler
    sees it, so b"fr" arrives as "ZnI="; REST sends the text itself. A value the
    model knows is taken as it is; else valid base64 of printable text is read as
    that text, so a refusal names what the client sent. (No two-letter code is
    valid base64, whose length is a multiple of 4.)
    """
    if not isinstance(value, str) or value in known:
        return value
    try:
        decoded = base64.b64decode(value, validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        return value
    return decoded if decoded and decoded.isprintable() else value


def _v2_options(tensors: dict[str, dict[str, Any]], parameters: Any, limits: RequestLimits) -> dict[str, Any]:
    """Option values from the option inputs and the request's `parameters`, which may not both set one."""
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise BadRequest('"parameters" must be an object, e.g. {"beam_size": 3}')
    if "stream" in parameters:
        raise BadRequest(V2_NO_STREAM)
    unknown = sorted(set(parameters) - set(V2_OPTIONS))
    if unknown:
        raise BadRequest(f"unknown parameters {_shown(unknown)}; allowed: {', '.join(V2_OPTIONS)}")
    options = dict(parameters)
    for name, datatypes in V2_OPTION_TYPES.items():
        if name in tensors:
            if name in parameters:
                raise BadRequest(f"{name} is given both as an input and as a parameter; give it once")
            options[name] = _v2_element(tensors[name], datatypes)
    if "language" in tensors:
        options["language"] = _v2_text(options["language"], limits.languages)
    return options


def _v2_call(document: dict[str, Any]) -> OpenInferenceCall:
    """The `id` to echo and the outputs asked for (all of them when "outputs" is absent)."""
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f'"id" must be a string, got {JSON_SCALAR_NAMES.get(type(request_id), "a JSON value")}')
    requested = document.get("outputs")
    if requested is None:
        return OpenInferenceCall(request_id or None)
    if not isinstance(requested, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                  for o in requested):
        raise BadRequest('"outputs" must be a list like [{"name": "caption"}]')
    names = tuple(o["name"] for o in requested)
    unknown = sorted(set(names) - set(V2_OUTPUTS))
    if unknown:
        raise BadRequest(f"unknown outputs {_shown(unknown)}; this model answers {', '.join(V2_OUTPUTS)}")
    return OpenInferenceCall(request_id or None, tuple(name for name in V2_OUTPUTS if name in names))


def parse_v2_body(document: dict[str, Any], limits: RequestLimits, media: ImageInput = IMAGE_INPUT) -> CaptionRequest:
    """A KServe v2 inference request -> image + options, remembering what its answer must hold.

    TorchServe's own kservev2 envelope is not used: in 0.12 it applies to every
    request of the server (raw image bytes on /predictions fail in it), turns each
    input tensor into a request of its own, reads only the first request of a
    batch (pytorch/serve#2158) and drops `parameters`. Read here, each request of
    a batch is parsed, answered and refused on its own.
    """
    unknown = sorted(set(document) - set(V2_BODY_FIELDS))
    if unknown:
        raise BadRequest(f"unknown fields {_shown(unknown)} in the v2 request; allowed: {', '.join(V2_BODY_FIELDS)}")
    tensors, picture = _v2_tensors(document["inputs"], media.v2_inputs)
    call = _v2_call(document)
    options = parse_options(_v2_options(tensors, document.get("parameters"), limits), limits)
    if "attention" in call.outputs and document.get("outputs") is not None and not options.attention:
        raise BadRequest('output "attention" comes with the attention option: add the input '
                         '{"name": "attention", "datatype": "BOOL", "shape": [1], "data": [true]}')
    image_data = _v2_element(tensors[picture], {"BYTES"})
    image = media.from_bytes(_base64_image(image_data, where=f"input {picture!r}"), limits)
    return CaptionRequest(image, options, v2=call)


# What a client that posts a file without a Content-Type gets wrong: TorchServe parses such a body as an
# HTML form, so the image's bytes turn into field names (or into nothing at all).
FORM_BODY_HINT = ("curl --data-binary or -d without a Content-Type sends application/x-www-form-urlencoded, "
                  "which the server parses as HTML form fields")
_SHOWN_FIELDS, _SHOWN_CHARACTERS = 5, 40


def _looks_like_bytes(name: str) -> bool:
    """A field name no client would choose: long, or with characters that are not printable."""
    return len(name) > 64 or any(not character.isprintable() for character in name)


def _shown(names: list[str]) -> str:
    """Field names for an error message, each cut to a few characters, a few of them: never the whole body back."""
    shown = [name if len(name) <= _SHOWN_CHARACTERS else name[:_SHOWN_CHARACTERS] + "..."
             for name in names[:_SHOWN_FIELDS]]
    more = f" and {len(names) - _SHOWN_FIELDS} more" if len(names) > _SHOWN_FIELDS else ""
    return f"[{', '.join(ascii(name) for name in shown)}]{more}"


def parse_request(row: Mapping[str, Any], limits: RequestLimits, media: ImageInput = IMAGE_INPUT) -> CaptionRequest:
    """One TorchServe request dict -> image (or clip, as `media` reads it) + options, or `BadRequest`."""
    if not isinstance(row, Mapping) or not row:
        raise BadRequest(
            "empty request: send image bytes with a Content-Type (e.g. image/jpeg), "
            'a multipart file field "data", or JSON {"image": "<base64>"} '
            f"({FORM_BODY_HINT}, and a form body without fields arrives empty)"
        )
    image_fields = [name for name in IMAGE_FIELDS if name in row]
    unknown = sorted(set(row) - set(IMAGE_FIELDS) - set(OPTION_FIELDS))
    if unknown and any(_looks_like_bytes(name) for name in unknown):
        raise BadRequest(f"the body arrived as form fields named {_shown(unknown)}: {FORM_BODY_HINT}; "
                         "send image bytes with a Content-Type such as image/jpeg (curl -T FILE, or "
                         "--data-binary @FILE -H 'Content-Type: image/jpeg')", status=415)
    if unknown:
        raise BadRequest(f"unknown fields {_shown(unknown)}; send the image as 'data' and options "
                         f"{', '.join(OPTION_FIELDS)}")
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
        return CaptionRequest(media.from_bytes(bytes(value), limits), options)
    if any(name in row for name in OPTION_FIELDS):
        raise BadRequest("put options inside the JSON body, not beside it")
    if is_v2_body(document):
        try:
            return parse_v2_body(document, limits, media)
        except BadRequest as error:
            request_id = document.get("id")
            error.v2 = OpenInferenceCall(request_id if isinstance(request_id, str) and request_id else None)
            raise
    return _from_json(document, limits, media)
