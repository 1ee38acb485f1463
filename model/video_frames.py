"""Read a video container's bytes into the frames the video captioner samples (PyAV).

The one definition of frame reading, used by training (clip files), evaluation
and the handler (request bytes), as `model/transforms.py` is for pixels.

Untrusted bytes are handled with care: the container is recognised by its
magic bytes (MP4/MOV, WebM/Matroska, GIF) and PyAV is told that format, so no
other demuxer ever sees them (an animated WebP, which FFmpeg does not decode,
is read by Pillow's WebP reader alone, its frame count and length taken from
its chunks); the frame size, duration and frame count are
checked against `VideoLimits` from the headers and a packet pass before a
single frame is decoded; and only the sampled frames are kept as pictures,
turned upright (and mirrored back) as a player shows them when the stream's
display matrix says the clip is rotated (a phone's portrait clip) or mirrored.
"""

from __future__ import annotations

import io
import math
import sys
from dataclasses import dataclass, field

from PIL import Image

from model.video import sample_frame_indices

# magic bytes -> the PyAV (FFmpeg) input format that reads them
CONTAINERS = {"mp4": "mp4", "webm": "matroska", "gif": "gif"}  # "webp" (animated) is read by Pillow
STILL_IMAGE_MAGIC = {
    b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
}


class VideoReadError(ValueError):
    """Bytes that are not a clip this service reads. `kind`: "too_large", "unsupported" or "corrupt"."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


@dataclass(frozen=True)
class VideoLimits:
    """What one clip may hold (the handler's come from model-config.yaml; these defaults are the shipped ones).

    An archive packed with a model-config.yaml that leaves a limit out gets the value
    README documents, and `max_video_bytes` stays below `max_request_size` (10 MiB),
    so an oversized clip is refused with a message naming the limit.
    """

    max_video_bytes: int = 8_000_000
    max_video_seconds: float = 20.0
    max_video_frames: int = 600
    max_frame_pixels: int = 2_073_600  # 1920 x 1080


class SampledFrames(list):
    """The frames a clip was captioned from (a list of RGB images), remembering which they were.

    `in_reply()` is what the service adds to its answer, so a caller can show the
    very frames the caption describes.
    """

    def __init__(self, frames: list[Image.Image], indices: list[int], total_frames: int) -> None:
        super().__init__(frames)
        self.indices = list(indices)
        self.total_frames = total_frames

    def in_reply(self) -> dict[str, object]:
        return {"frames_sampled": self.indices, "frames_total": self.total_frames}


@dataclass
class Clip:
    """The sampled frames of a clip and what its container said about it."""

    frames: SampledFrames
    total_frames: int
    fps: float | None
    duration: float | None
    width: int  # as a player shows the frames (after the display matrix's rotation)
    height: int
    container: str
    indices: list[int] = field(default_factory=list)


def container_of(data: bytes) -> str:
    """"mp4", "webm", "gif" or "webp" (an animated one) from the magic bytes, or `VideoReadError` ("unsupported")."""
    if data[4:8] == b"ftyp":
        return "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    still = next((name for magic, name in STILL_IMAGE_MAGIC.items() if data.startswith(magic)), None)
    if still is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        if _webp_is_animated(data):
            return "webp"
        still = "WebP"
    if still is not None:
        raise VideoReadError(
            f"got a still {still} image; this model captions clips: send an MP4, WebM, animated GIF or WebP, "
            'or JSON {"frames": ["<base64 image>", ...]} (one frame is a one-frame clip)',
            "unsupported",
        )
    raise VideoReadError(
        f"body is not a video container this service reads ({len(data)} bytes starting {bytes(data[:8])!r}); "
        "send MP4 (H.264), WebM (VP8/VP9) or an animated GIF or WebP",
        "unsupported",
    )


def read_clip(data: bytes, num_frames: int, limits: VideoLimits = VideoLimits()) -> Clip:
    """Bytes of an MP4, WebM, GIF or animated WebP -> its `num_frames` uniformly sampled frames as RGB images."""
    import av  # imported here: only video models need PyAV

    if not data:
        raise VideoReadError("empty body: send the video file's bytes", "corrupt")
    if len(data) > limits.max_video_bytes:
        raise VideoReadError(
            f"clip is {len(data)} bytes; the limit is max_video_bytes={limits.max_video_bytes}", "too_large"
        )
    container_name = container_of(data)
    try:
        if container_name == "webp":
            total, fps, duration, width, height = _survey_webp(data, limits)
            indices = sample_frame_indices(total, num_frames)
            frames, swapped = _decode_webp(data, set(indices)), False
        else:
            fmt = CONTAINERS[container_name]
            total, fps, duration, width, height = _survey(av, data, fmt, limits)
            indices = sample_frame_indices(total, num_frames)
            frames, swapped = _decode_frames(av, data, fmt, set(indices))
    except VideoReadError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError, OSError, EOFError, SyntaxError) as error:
        raise VideoReadError(f"{container_name} could not be read (truncated or corrupt?): {error}", "corrupt") from error
    if not frames:
        raise VideoReadError(f"no frame of the {container_name} could be decoded (truncated or corrupt?)", "corrupt")
    # A decoder can yield fewer frames than the container has packets; the last good frame stands in.
    picked = [frames[max((k for k in frames if k <= i), default=min(frames))] for i in indices]
    if swapped:
        width, height = height, width  # the size a player shows
    return Clip(SampledFrames(picked, indices, total), total, fps, duration, width, height, container_name, indices)


def _survey(av, data: bytes, fmt: str, limits: VideoLimits) -> tuple[int, float | None, float | None, int, int]:
    """Frame count, fps, duration and size from the headers and the packets, checked against the limits."""
    with av.open(io.BytesIO(data), mode="r", format=fmt) as container:
        if not container.streams.video:
            raise VideoReadError("the container holds no video stream", "corrupt")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width < 1 or height < 1:
            raise VideoReadError(f"video frames have no pixels ({width}x{height})", "corrupt")
        if width * height > limits.max_frame_pixels:
            raise VideoReadError(
                f"frames are {width}x{height} = {width * height} pixels; the limit is "
                f"max_frame_pixels={limits.max_frame_pixels}", "too_large",
            )
        fps = float(stream.average_rate) if stream.average_rate else None
        # The span from the first frame's time to the last one's end: a clip cut from a longer
        # recording (or a live stream) starts at 10 minutes or 1 hour, not at 0.
        total, first_time, last_time = 0, None, None
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the flush packet at the end
            total += 1
            if total > limits.max_video_frames:
                raise VideoReadError(
                    f"clip has more than max_video_frames={limits.max_video_frames} frames", "too_large"
                )
            if packet.pts is not None and packet.time_base is not None:
                start = float(packet.pts * packet.time_base)
                end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                first_time = start if first_time is None else min(first_time, start)
                last_time = end if last_time is None else max(last_time, end)
        if first_time is not None and last_time > first_time:
            duration = last_time - first_time
        else:
            duration = container.duration / 1e6 if container.duration else None
        if duration is not None and duration > limits.max_video_seconds:
            raise VideoReadError(
                f"clip lasts {duration:.1f} s; the limit is max_video_seconds={limits.max_video_seconds:g}",
                "too_large",
            )
    if total == 0:
        raise VideoReadError("the video stream holds no frames (truncated or corrupt?)", "corrupt")
    return total, fps, duration, width, height


def _decode_frames(av, data: bytes, fmt: str, wanted: set[int]) -> tuple[dict[int, Image.Image], bool]:
    """Decode every frame in order (each may depend on the ones before), keeping only the wanted ones, upright.

    Also returns whether the display matrix swapped width and height (a quarter turn, or a transpose).
    """
    kept: dict[int, Image.Image] = {}
    swapped = False
    with av.open(io.BytesIO(data), mode="r", format=fmt) as container:
        stream = container.streams.video[0]
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                orientation = display_orientation(_display_matrix(frame))
                image = frame.to_image().convert("RGB")
                kept[index] = image.transpose(orientation) if orientation is not None else image
                swapped = orientation in SWAPS_SIDES
            if index >= max(wanted):
                break
    return kept, swapped


SWAPS_SIDES = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE,
               Image.Transpose.TRANSVERSE)


def _display_matrix(frame) -> tuple[int, ...] | None:
    """The frame's 3x3 display matrix (FFmpeg's layout, 16.16 fixed point), or None when it has none."""
    for side_data in frame.side_data:
        if side_data.type.name == "DISPLAYMATRIX":
            raw = bytes(side_data)
            return tuple(int.from_bytes(raw[i:i + 4], sys.byteorder, signed=True) for i in range(0, 36, 4))
    return None


def display_orientation(matrix: tuple[int, ...] | None) -> Image.Transpose | None:
    """The PIL transpose that shows the coded picture as players do, for one of the eight orientations.

    FFmpeg's own autorotation (fftools) reads the display matrix so: its clockwise angle
    theta, then the signs of the matrix's entries for a mirror. A phone's portrait clip
    (MP4 `rotate=90`, matrix [0 1; -1 0]) is turned a quarter clockwise; a front camera's
    mirrored one ([0 1; 1 0]) is transposed. Angles between quarter turns are rounded to
    the nearest one (phones write only quarter turns; FFmpeg would turn by the exact
    angle and fill the corners).
    """
    if matrix is None:
        return None
    a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]
    if not (math.hypot(a, c) and math.hypot(b, d)):
        return None  # a degenerate matrix: show the picture as coded
    theta = round(math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c))) / 90) % 4 * 90  # clockwise
    if theta == 90:
        return Image.Transpose.TRANSPOSE if c > 0 else Image.Transpose.ROTATE_270
    if theta == 270:
        return Image.Transpose.TRANSVERSE if c < 0 else Image.Transpose.ROTATE_90
    if theta == 180:
        return {(True, True): Image.Transpose.ROTATE_180, (True, False): Image.Transpose.FLIP_LEFT_RIGHT,
                (False, True): Image.Transpose.FLIP_TOP_BOTTOM}.get((a < 0, d < 0))
    return Image.Transpose.FLIP_TOP_BOTTOM if d < 0 else None


def _webp_is_animated(data: bytes) -> bool:
    """A WebP whose extended header (VP8X) sets the animation flag."""
    return data[12:16] == b"VP8X" and len(data) > 20 and bool(data[20] & 0x02)


def _survey_webp(data: bytes, limits: VideoLimits) -> tuple[int, float | None, float | None, int, int]:
    """An animated WebP's frame count, fps, duration and canvas size from its chunks, checked against the limits.

    Nothing is decoded: the canvas size is the VP8X header's, and each frame is an ANMF
    chunk whose header holds its duration in milliseconds.
    """
    if len(data) < 30:
        raise VideoReadError("the WebP header is cut short (truncated or corrupt?)", "corrupt")
    width = 1 + int.from_bytes(data[24:27], "little")
    height = 1 + int.from_bytes(data[27:30], "little")
    if width * height > limits.max_frame_pixels:
        raise VideoReadError(
            f"frames are {width}x{height} = {width * height} pixels; the limit is "
            f"max_frame_pixels={limits.max_frame_pixels}", "too_large",
        )
    total, milliseconds, at = 0, 0, 12
    while at + 8 <= len(data):
        tag, size = data[at:at + 4], int.from_bytes(data[at + 4:at + 8], "little")
        if tag == b"ANMF":
            if size < 16 or at + 24 > len(data):
                raise VideoReadError("a WebP frame header is cut short (truncated or corrupt?)", "corrupt")
            total += 1
            if total > limits.max_video_frames:
                raise VideoReadError(
                    f"clip has more than max_video_frames={limits.max_video_frames} frames", "too_large"
                )
            milliseconds += int.from_bytes(data[at + 20:at + 23], "little")
        at += 8 + size + (size & 1)  # chunks are padded to an even size
    if total == 0:
        raise VideoReadError("the animated WebP holds no frames (truncated or corrupt?)", "corrupt")
    duration = milliseconds / 1000 if milliseconds else None
    if duration is not None and duration > limits.max_video_seconds:
        raise VideoReadError(
            f"clip lasts {duration:.1f} s; the limit is max_video_seconds={limits.max_video_seconds:g}",
            "too_large",
        )
    return total, (total / duration if duration else None), duration, width, height


def _decode_webp(data: bytes, wanted: set[int]) -> dict[int, Image.Image]:
    """Decode an animated WebP's frames in order with Pillow (libwebp composites each onto the canvas).

    Transparency is flattened onto white, as a browser shows it and `model/transforms.to_rgb`
    does for a still image.
    """
    kept: dict[int, Image.Image] = {}
    with Image.open(io.BytesIO(data), formats=["WEBP"]) as image:
        for index in range(min(getattr(image, "n_frames", 1), max(wanted) + 1)):
            image.seek(index)
            if index in wanted:
                rgba = image.convert("RGBA")
                flat = Image.new("RGB", rgba.size, (255, 255, 255))
                flat.paste(rgba, mask=rgba.getchannel("A"))
                kept[index] = flat
    return kept
