"""Requests with known answers: generated scenes, and a corpus of bad or unusual inputs.

Every probe is built here from nothing (no downloads) and carries the answer
the service must give: 200 with a caption, or a 4xx whose JSON error names the
problem. The robustness tests send the whole corpus to a real TorchServe, over
REST and over gRPC `Predictions` (`Probe.over_grpc`), and `ops.soak` mixes it
into its load.

    from ops.request_corpus import bad_input_corpus, scene_images
    for probe in bad_input_corpus():
        response = client.post(**probe.request_kwargs())  # a client.rest.CaptionClient
        assert probe.check(response.status_code, response.text) is None
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import random
import struct
import zlib
from dataclasses import dataclass, field
from math import isqrt
from typing import Any

import numpy as np
from PIL import Image

from training.shapes_dataset import random_scene, render_scene

# The defaults of config.properties (max_request_size) and handler/model-config.yaml (captioner:).
MAX_REQUEST_SIZE = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
MAX_LENGTH = 20
MAX_BEAM_SIZE = 8


@dataclass(frozen=True)
class Probe:
    """One request and the answer it must get.

    Args:
        kind: a short name for what is special about the request.
        status: the HTTP status it must get.
        words: for a 4xx, text the JSON `error` must contain (case-insensitive).
        body / content_type: a raw body; json: a JSON body; files / form: a multipart body.
        json_error: False where TorchServe's frontend answers before the handler sees the
            request (a body over `max_request_size` gets 413 with an empty body).
    """

    kind: str
    status: int
    words: str = ""
    body: bytes | None = None
    content_type: str | None = None
    json: Any = None
    files: dict[str, tuple] | None = None
    form: dict[str, str] | None = None
    json_error: bool = True
    headers: dict[str, str] = field(default_factory=dict)

    def request_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `CaptionClient.post` (or `requests.post`, less `extra_headers`)."""
        headers = dict(self.headers)
        kwargs: dict[str, Any] = {}
        if self.body is not None:
            kwargs["data"] = self.body
            if self.content_type:
                headers["Content-Type"] = self.content_type
        elif self.files is not None or self.form is not None:
            kwargs["files"] = {**(self.files or {}), **{k: (None, v) for k, v in (self.form or {}).items()}}
        else:
            kwargs["json"] = self.json
        return {"extra_headers": headers, **kwargs}

    def check(self, status: int, text: str) -> str | None:
        """None when (status, body text) is the answer this probe must get, else what is wrong."""
        if status != self.status:
            return f"{self.kind}: expected {self.status}, got {status}: {text[:200]!r}"
        if self.status >= 400 and not self.json_error:
            return None
        try:
            body = json.loads(text)
        except ValueError:
            return f"{self.kind}: answer is not JSON: {text[:200]!r}"
        if self.status == 200:
            return None if isinstance(body, dict) and body.get("caption") else f"{self.kind}: no caption in {body}"
        if not isinstance(body, dict) or body.get("status") != self.status:
            return f"{self.kind}: error body lacks status {self.status}: {body}"
        if self.words.lower() not in str(body.get("error", "")).lower():
            return f"{self.kind}: error does not mention {self.words!r}: {body.get('error')!r}"
        return None

    # --- the same request over gRPC ---------------------------------------------------------

    def grpc_inputs(self) -> dict[str, bytes]:
        """The request as the `input` map of a gRPC `PredictionsRequest`: one bytes value per field.

        A raw or JSON body becomes `data` (what the HTTP body is to the handler); a
        multipart form keeps its field names. The Content-Type has no gRPC counterpart.
        """
        if self.body is not None:
            return {"data": self.body}
        if self.files is not None or self.form is not None:
            fields = {name: part[1] for name, part in (self.files or {}).items()}
            return {**fields, **{name: value.encode() for name, value in (self.form or {}).items()}}
        return {"data": json.dumps(self.json).encode()}

    def over_grpc(self) -> "Probe":
        """This probe with the answer it must get over gRPC, where requests carry no headers.

        TorchServe's HTTP frontend hands a text/* body to the handler as text, which
        is refused as text; over gRPC the same bytes reach the image decoder and are
        refused as not an image (415 either way). A body over `max_request_size` is
        refused by the gRPC server itself (RESOURCE_EXHAUSTED), as it is by the HTTP
        frontend (`json_error` False either way).
        """
        if self.content_type and self.content_type.startswith("text/"):
            return dataclasses.replace(self, words="not an image")
        return self

    def check_grpc_reply(self, prediction: bytes) -> str | None:
        """`check` for a gRPC reply, which has no status of its own: its JSON `status` is it (200 for a caption)."""
        text = prediction.decode("utf-8", errors="replace")
        try:
            body = json.loads(text)
        except ValueError:
            return f"{self.kind}: gRPC reply is not JSON: {text[:200]!r}"
        refused = isinstance(body, dict) and "error" in body
        return self.check(body.get("status") if refused else 200, text)


# --- images -----------------------------------------------------------------------------------


def scene(seed: int, canvas: int = 128) -> Image.Image:
    """A generated scene of one to three coloured shapes (the kind of image the default model knows), canvas x canvas."""
    rng = random.Random(seed)
    return render_scene(random_scene(rng), rng).resize((canvas, canvas))


def encode(image: Image.Image, fmt: str, **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def scene_images(count: int, seed: int = 0) -> list[bytes]:
    """`count` different valid JPEG scenes."""
    return [encode(scene(seed + i), "JPEG", quality=90) for i in range(count)]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, row: bytes, rows: int | None = None) -> bytes:
    """A PNG written by hand: `rows` copies of `row` (filter byte included), for what PIL cannot save."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _sixteen_bit_rgb_png(image: Image.Image) -> bytes:
    """48-bit RGB PNG (Pillow can read these but not write them)."""
    pixels = np.asarray(image.convert("RGB"), dtype=">u2") * 257  # (H, W, 3) big-endian 16-bit
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", image.width, image.height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def _with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its frame header (SOF0) claiming another size."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def _with_garbage_scan(jpeg: bytes, seed: int) -> bytes:
    """The same JPEG with its compressed pixels (after the start-of-scan header) replaced by noise."""
    start = jpeg.index(b"\xff\xda") + 20
    return jpeg[:start] + random.Random(seed).randbytes(len(jpeg) - start - 20) + jpeg[-20:]


def _with_gif_size(gif: bytes, width: int, height: int) -> bytes:
    """The same GIF with its logical screen claiming another size."""
    return gif[:6] + struct.pack("<HH", width, height) + gif[10:]


def exif_rotated(image: Image.Image, fmt: str) -> bytes:
    """`image` stored turned 90 degrees, with EXIF orientation 6 saying how to turn it back upright."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return encode(image.transpose(Image.Transpose.ROTATE_90), fmt, exif=exif.tobytes())


def _animated(fmt: str, frames: list[Image.Image]) -> bytes:
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- the corpus -------------------------------------------------------------------------------


def bad_input_corpus(
    *,
    max_request_size: int = MAX_REQUEST_SIZE,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    max_length: int = MAX_LENGTH,
    max_beam_size: int = MAX_BEAM_SIZE,
    seed: int = 7,
) -> list[Probe]:
    """Bad, broken, hostile and merely unusual requests, each with the answer it must get."""
    upright = scene(seed)
    jpeg = encode(upright, "JPEG", quality=90)
    png = encode(upright, "PNG")
    gif = encode(upright.convert("P"), "GIF")
    webp = encode(upright, "WEBP")
    b64 = _b64(jpeg)
    side = isqrt(max_image_pixels) + 1000  # just over the pixel limit
    over_limit_png = png_bytes(side, side, 8, 0, b"\x00" * (side + 1))  # every row filter 0, all black
    corrupt_png_header = png[:29] + bytes([png[29] ^ 0xFF]) + png[30:]  # IHDR's CRC broken
    frames = [scene(seed + i) for i in range(3)]
    raw = lambda data, ctype="image/jpeg": dict(body=data, content_type=ctype)  # noqa: E731

    probes = [
        # --- not an image at all
        Probe("empty-body", 400, "empty", **raw(b"")),
        Probe("plain-text", 415, "text", **raw(b"a picture of a cat", "text/plain")),
        Probe("html", 415, "text", **raw(b"<html><body><img src=x></body></html>", "text/html")),
        Probe("html-as-jpeg", 415, "not an image", **raw(b"<html><body>hello</body></html>")),
        Probe("svg", 415, "not an image", **raw(b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml")),
        Probe("pdf", 415, "not an image", **raw(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "application/pdf")),
        Probe("postscript-eps", 415, "not an image",
              **raw(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "application/postscript")),
        Probe("ico-not-served", 415, "not an image", **raw(encode(upright, "ICO"), "image/x-icon")),
        Probe("random-bytes", 415, "not an image", **raw(random.Random(seed).randbytes(4096),
                                                       "application/octet-stream")),
        # --- broken images
        Probe("truncated-jpeg", 400, "truncated", **raw(jpeg[: len(jpeg) // 2])),
        Probe("truncated-png", 400, "truncated", **raw(png[: len(png) // 2], "image/png")),
        Probe("truncated-gif", 400, "truncated", **raw(gif[: len(gif) // 2], "image/gif")),
        Probe("truncated-webp", 400, "decoded", **raw(webp[: len(webp) // 2], "image/webp")),
        Probe("jpeg-header-only", 415, "corrupt header", **raw(jpeg[:20])),
        Probe("jpeg-garbage-after-marker", 415, "corrupt header",
              **raw(jpeg[:3] + random.Random(seed).randbytes(2000))),
        Probe("jpeg-garbage-scan-data", 400, "corrupt", **raw(_with_garbage_scan(jpeg, seed))),
        Probe("png-corrupt-header", 415, "corrupt header", **raw(corrupt_png_header, "image/png")),
        Probe("png-signature-only", 415, "not an image", **raw(png[:8], "image/png")),
        Probe("png-zero-width", 415, "not an image", **raw(png_bytes(0, 10, 8, 0, b"", rows=0), "image/png")),
        # --- too big
        Probe("decompression-bomb-png", 413, "pixels", **raw(over_limit_png, "image/png")),
        Probe("decompression-bomb-png-header", 413, "the most this service decodes",
              **raw(png_bytes(100_000, 100_000, 8, 0, b"\x00" * 100_001, rows=4), "image/png")),
        Probe("decompression-bomb-jpeg-header", 413, "the most this service decodes", **raw(_with_jpeg_size(jpeg, 65500, 65500))),
        Probe("decompression-bomb-gif-header", 413, "the most this service decodes",
              **raw(_with_gif_size(gif, 65535, 65535), "image/gif")),
        Probe("body-over-max-request-size", 413, json_error=False,
              **raw(jpeg + b"\x00" * (max_request_size + 1 - len(jpeg)))),
        # --- unusual but valid images: all get a caption
        Probe("one-pixel-png", 200, **raw(encode(upright.resize((1, 1)), "PNG"), "image/png")),
        Probe("one-pixel-gif", 200, **raw(encode(upright.resize((1, 1)).convert("P"), "GIF"), "image/gif")),
        Probe("thin-strip-1x4000", 200, **raw(encode(upright.resize((1, 4000)), "PNG"), "image/png")),
        Probe("large-legal-jpeg", 200, **raw(encode(upright.resize((5000, 4000)), "JPEG", quality=80))),
        Probe("png-16-bit-grey", 200, **raw(encode(upright.convert("L").convert("I;16"), "PNG"), "image/png")),
        Probe("png-16-bit-rgb", 200, **raw(_sixteen_bit_rgb_png(upright), "image/png")),
        Probe("jpeg-cmyk", 200, **raw(encode(upright.convert("CMYK"), "JPEG"))),
        Probe("jpeg-greyscale", 200, **raw(encode(upright.convert("L"), "JPEG"))),
        Probe("jpeg-progressive", 200, **raw(encode(upright, "JPEG", progressive=True))),
        Probe("png-rgba", 200, **raw(encode(upright.convert("RGBA"), "PNG"), "image/png")),
        Probe("png-la", 200, **raw(encode(upright.convert("LA"), "PNG"), "image/png")),
        Probe("png-palette-transparency", 200,
              **raw(encode(upright.convert("P"), "PNG", transparency=0), "image/png")),
        Probe("png-bilevel", 200, **raw(encode(upright.convert("1"), "PNG"), "image/png")),
        Probe("gif-animated", 200, **raw(_animated("GIF", [f.convert("P") for f in frames]), "image/gif")),
        Probe("webp", 200, **raw(webp, "image/webp")),
        Probe("webp-animated", 200, **raw(_animated("WEBP", frames), "image/webp")),
        Probe("tiff", 200, **raw(encode(upright, "TIFF"), "image/tiff")),
        Probe("tiff-multipage-cmyk", 200,
              **raw(_animated("TIFF", [f.convert("CMYK") for f in frames]), "image/tiff")),
        Probe("tiff-float", 200, **raw(encode(upright.convert("F"), "TIFF"), "image/tiff")),
        Probe("bmp", 200, **raw(encode(upright, "BMP"), "image/bmp")),
        Probe("jpeg-exif-rotated", 200, **raw(exif_rotated(upright, "JPEG"))),
        Probe("jpeg-corrupt-exif", 200,
              **raw(encode(upright, "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"))),
        Probe("png-sent-as-jpeg", 200, **raw(png, "image/jpeg")),
        Probe("no-content-type", 200, body=jpeg),
        # --- JSON bodies
        Probe("json-not-an-object", 400, "must be an object", json=[b64]),
        Probe("json-without-image", 400, "lacks", json={"max_length": 5}),
        Probe("json-wrong-field-name", 400, "unknown JSON fields", json={"img": b64}),
        Probe("json-image-not-a-string", 400, "base64 string", json={"image": 12345}),
        Probe("json-image-null", 400, "base64 string", json={"image": None}),
        Probe("json-invalid-base64", 400, "base64", json={"image": "%%% not base64 %%%"}),
        Probe("json-base64-of-text", 415, "not an image", json={"image": _b64(b"hello, world")}),
        Probe("json-base64-data-url", 200, json={"image": "data:image/jpeg;base64," + b64}),
        Probe("json-malformed", 400, "not valid JSON", **raw(b'{"image": "abc', "application/json")),
        Probe("json-deeply-nested", 400, "nested too deeply", **raw(b"[" * 100_000, "application/json")),
        Probe("json-deeply-nested-closed", 400, "nested too deeply",
              **raw(b"[" * 50_000 + b"]" * 50_000, "application/json")),
        # --- options out of range, of the wrong type, or unknown
        Probe("max-length-zero", 400, "max_length", json={"image": b64, "max_length": 0}),
        Probe("max-length-too-long", 400, "max_length", json={"image": b64, "max_length": max_length + 1}),
        Probe("max-length-negative", 400, "max_length", json={"image": b64, "max_length": -3}),
        Probe("max-length-not-a-number", 400, "integer", json={"image": b64, "max_length": "ten"}),
        Probe("max-length-fraction", 400, "integer", json={"image": b64, "max_length": 2.5}),
        Probe("max-length-boolean", 400, "integer", json={"image": b64, "max_length": True}),
        Probe("max-length-huge-number", 400, "max_length", json={"image": b64, "max_length": 10**30}),
        Probe("beam-size-zero", 400, "beam_size", json={"image": b64, "beam_size": 0}),
        Probe("beam-size-too-large", 400, "beam_size", json={"image": b64, "beam_size": max_beam_size + 1}),
        Probe("n-best-over-beam-size", 400, "n_best", json={"image": b64, "beam_size": 2, "n_best": 3}),
        Probe("stream-not-a-boolean", 400, "stream", json={"image": b64, "stream": "maybe"}),
        Probe("unknown-json-option", 400, "unknown JSON fields", json={"image": b64, "colour": "red"}),
        Probe("temperature-out-of-range", 400, "temperature",
              json={"image": b64, "do_sample": True, "temperature": 1e9}),
        Probe("temperature-not-finite", 400, "temperature",
              json={"image": b64, "do_sample": True, "temperature": "inf"}),
        Probe("sampling-option-without-do-sample", 400, "do_sample", json={"image": b64, "top_p": 0.9}),
        Probe("beam-groups-not-dividing", 400, "beam_groups", json={"image": b64, "beam_size": 4, "beam_groups": 3}),
        Probe("num-captions-over-beam-size", 400, "num_captions",
              json={"image": b64, "beam_size": 2, "num_captions": 3}),
        # --- multipart forms
        Probe("multipart-no-file", 400, "no image", form={"beam_size": "2"}),
        Probe("multipart-empty-file", 400, "empty", files={"data": ("empty.jpg", b"", "image/jpeg")}),
        Probe("multipart-two-images", 400, "one image per request",
              files={"data": ("a.jpg", jpeg, "image/jpeg"), "file": ("b.jpg", jpeg, "image/jpeg")}),
        Probe("multipart-unknown-field", 400, "unknown fields",
              files={"data": ("a.jpg", jpeg, "image/jpeg")}, form={"colour": "red"}),
        Probe("multipart-option-not-utf8", 400, "UTF-8",
              files={"data": ("a.jpg", jpeg, "image/jpeg"), "beam_size": (None, b"\xff\xfe")}),
        Probe("multipart-option-out-of-range", 400, "beam_size",
              files={"data": ("a.jpg", jpeg, "image/jpeg")}, form={"beam_size": "99"}),
        Probe("multipart-valid-with-options", 200,
              files={"data": ("a.jpg", jpeg, "image/jpeg")}, form={"beam_size": "2", "max_length": "6"}),
        Probe("multipart-valid-sampling", 200,
              files={"data": ("a.jpg", jpeg, "image/jpeg")}, form={"do_sample": "true", "top_k": "5", "seed": "1"}),
    ]
    kinds = [p.kind for p in probes]
    assert len(kinds) == len(set(kinds)), "probe kinds are unique"
    return probes
