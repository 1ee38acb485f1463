"""Hypothesis strategies that break valid image files in the ways decoders get attacked.

Each strategy starts from a small valid file of one format and damages it:
truncation, bit flips, overwritten runs, and format-aware edits that reach
past the first sanity checks: PNG chunk lengths, CRCs, types and IHDR fields;
JPEG marker bytes and segment lengths, dropped or repeated segments; GIF
screen and image-descriptor sizes, flags and the LZW code size.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from hypothesis import strategies as st

from ops.request_corpus import encode, scene

FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")


@lru_cache(maxsize=None)
def base_images() -> dict[str, bytes]:
    """One small valid file per format served (a generated scene, 48 px, so decoding stays cheap)."""
    image = scene(5, canvas=48)
    files = {fmt: encode(image, fmt) for fmt in FORMATS if fmt != "GIF"}
    files["GIF"] = encode(image.convert("P"), "GIF")
    files["PNG-PALETTE"] = encode(image.convert("P"), "PNG")
    files["JPEG-PROGRESSIVE"] = encode(image, "JPEG", progressive=True)
    return files


def _with(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


@st.composite
def truncated(draw, data: bytes) -> bytes:
    return data[: draw(st.integers(0, len(data) - 1))]


@st.composite
def bit_flips(draw, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(out) - 1))
        out[at] ^= 1 << draw(st.integers(0, 7))
    return bytes(out)


@st.composite
def overwritten(draw, data: bytes) -> bytes:
    at = draw(st.integers(0, len(data) - 1))
    return _with(data, at, draw(st.binary(min_size=1, max_size=64)))[: len(data)]


def png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset, data length) of each chunk of a PNG, in file order."""
    chunks, at = [], 8
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at: at + 4])
        chunks.append((at, length))
        at += 12 + length
    return chunks


@st.composite
def png_chunk_edits(draw, data: bytes) -> bytes:
    at, length = draw(st.sampled_from(png_chunks(data)))
    end = at + 12 + length
    edit = draw(st.sampled_from(["length", "crc", "type", "data", "drop", "repeat", "ihdr-field"]))
    if edit == "length":
        return _with(data, at, struct.pack(">I", draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 64)))))
    if edit == "crc":
        return _with(data, end - 4, draw(st.binary(min_size=4, max_size=4)))
    if edit == "type":
        return _with(data, at + 4, draw(st.sampled_from([b"IHDR", b"IDAT", b"IEND", b"PLTE", b"tRNS", b"zTXt",
                                                          b"iCCP", b"acTL", b"fcTL", b"xxxx"])))
    if edit == "data" and length:
        return _with(data, at + 8 + draw(st.integers(0, length - 1)), draw(st.binary(min_size=1, max_size=8)))
    if edit == "drop":
        return data[:at] + data[end:]
    if edit == "repeat":
        return data[:end] + data[at:]
    # IHDR: width, height (4 bytes each), bit depth, colour type, compression, filter, interlace.
    field = draw(st.sampled_from([(16, 4), (20, 4), (24, 1), (25, 1), (26, 1), (27, 1), (28, 1)]))
    return _with(data, field[0], draw(st.binary(min_size=field[1], max_size=field[1])))


def jpeg_segments(data: bytes) -> list[int]:
    """Offsets of the JPEG markers up to and including the start of scan."""
    offsets, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        offsets.append(at)
        if data[at + 1] == 0xDA:
            break
        at += 2 + struct.unpack(">H", data[at + 2: at + 4])[0]
    return offsets


@st.composite
def jpeg_marker_edits(draw, data: bytes) -> bytes:
    offsets = jpeg_segments(data)
    at = draw(st.sampled_from(offsets))
    following = [o for o in offsets if o > at]
    end = following[0] if following else at + 4 + struct.unpack(">H", data[at + 2: at + 4])[0]
    edit = draw(st.sampled_from(["marker", "length", "drop", "repeat", "fill-bytes", "segment-data"]))
    if edit == "marker":
        return _with(data, at + 1, bytes([draw(st.integers(0, 255))]))
    if edit == "length":
        return _with(data, at + 2, struct.pack(">H", draw(st.integers(0, 65535))))
    if edit == "drop":
        return data[:at] + data[end:]
    if edit == "repeat":
        return data[:end] + data[at:]
    if edit == "fill-bytes":
        return data[:at] + b"\xff" * draw(st.integers(1, 16)) + data[at:]
    span = max(end - at - 4, 1)
    return _with(data, at + 4 + draw(st.integers(0, span - 1)), draw(st.binary(min_size=1, max_size=8)))


def gif_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the GIF header fields worth damaging: screen, flags, image descriptor, LZW size."""
    fields = [(6, 2), (8, 2), (10, 1), (11, 1)]
    at = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while at < len(data) and data[at] == 0x21:  # extension blocks: label, then sub-blocks
        at += 2
        while at < len(data) and data[at]:
            at += data[at] + 1
        at += 1
    if at + 10 <= len(data) and data[at] == 0x2C:
        fields += [(at + 1, 2), (at + 3, 2), (at + 5, 2), (at + 7, 2), (at + 9, 1)]
        table = 3 << ((data[at + 9] & 7) + 1) if data[at + 9] & 0x80 else 0
        fields.append((at + 10 + table, 1))  # LZW minimum code size
    return fields


@st.composite
def gif_header_edits(draw, data: bytes) -> bytes:
    at, size = draw(st.sampled_from(gif_fields(data)))
    value = draw(st.one_of(st.integers(0, 2 ** (8 * size) - 1), st.sampled_from([0, 1, 2 ** (8 * size) - 1])))
    return _with(data, at, value.to_bytes(size, "little"))


GENERIC = {"truncated": truncated, "bit-flips": bit_flips, "overwritten": overwritten}
FORMAT_AWARE = {"png-chunks": ("PNG", png_chunk_edits), "png-palette-chunks": ("PNG-PALETTE", png_chunk_edits),
                "jpeg-markers": ("JPEG", jpeg_marker_edits),
                "jpeg-progressive-markers": ("JPEG-PROGRESSIVE", jpeg_marker_edits),
                "gif-header": ("GIF", gif_header_edits)}


def mutation_names() -> list[str]:
    return [f"{kind}-{fmt.lower()}" for kind in GENERIC for fmt in base_images()] + list(FORMAT_AWARE)


def mutated_image(name: str) -> st.SearchStrategy[bytes]:
    """The mutation called `name` (one of `mutation_names()`), e.g. "bit-flips-tiff" or "png-chunks"."""
    if name in FORMAT_AWARE:
        fmt, strategy = FORMAT_AWARE[name]
        return strategy(base_images()[fmt])
    kind, fmt = next((k, name[len(k) + 1:].upper()) for k in GENERIC if name.startswith(k + "-"))
    return GENERIC[kind](base_images()[fmt])


def any_mutated_image() -> st.SearchStrategy[bytes]:
    return st.sampled_from(mutation_names()).flatmap(mutated_image)
