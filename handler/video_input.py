"""How the video model reads a request's clip: container bytes, or JSON with a clip or its frames.

- raw bytes or a multipart `data` field: an MP4 (H.264), WebM (VP8/VP9), animated GIF or animated WebP file
- JSON `{"video": "<base64 of the file>"}`, or `{"frames": ["<base64 image>", ...]}` (JPEG, PNG, ...
  frames in order; one frame is a one-frame clip)
- KServe v2: the file, base64, as the BYTES input `video` (or `image`)

A still image (a WebP without animation too) sent as a file gets 415 (send it as `frames` to caption it as a
one-frame clip). Limits come from the `captioner:` section of model-config.yaml;
a clip over one gets 413 naming it, a corrupt or truncated clip 400, bytes in no
container read here 415. Frames are decoded and sampled by `model/video_frames.py`,
the reader training uses too.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from PIL import Image

from handler.request_parsing import BadRequest, RequestLimits, _base64_image, decode_image
from model.video import sample_frame_indices
from model.video_frames import SampledFrames, VideoLimits, VideoReadError, read_clip

STATUS_OF = {"too_large": 413, "unsupported": 415, "corrupt": 400}


def video_limits(settings: Mapping[str, Any]) -> VideoLimits:
    """The limits model-config.yaml names (`max_video_bytes`, ...), defaults for the others."""
    values = {f.name: type(f.default)(settings[f.name]) for f in fields(VideoLimits) if f.name in settings}
    return VideoLimits(**values)


@dataclass(frozen=True)
class VideoInput:
    """The video model's reader for `parse_request` (the image model's is `request_parsing.ImageInput`)."""

    num_frames: int
    limits: VideoLimits
    # "image" too: the clip file under the image model's name, as KServe v2's input may be (below), so a
    # client that sends every file as "image" works with both models.
    json_fields: tuple[str, ...] = ("video", "frames", "image")
    missing_json: str = ('JSON body lacks "video" (the clip file, base64-encoded) or "frames" '
                         '(a list of base64 images, in order)')
    # KServe v2: the clip file as input "video", or as "image" (the name it had before "video" was read).
    v2_inputs: tuple[str, ...] = ("video", "image")

    def from_bytes(self, data: bytes, limits: RequestLimits) -> list[Image.Image]:
        """A container's bytes -> its `num_frames` sampled frames."""
        try:
            return read_clip(data, self.num_frames, self.limits).frames
        except VideoReadError as error:
            raise BadRequest(error.message, status=STATUS_OF[error.kind]) from error

    def from_json(self, document: dict[str, Any], limits: RequestLimits) -> list[Image.Image]:
        given = [name for name in self.json_fields if name in document]
        if len(given) > 1:
            raise BadRequest(f"give one of the fields {', '.join(given)}, not {len(given)}")
        if given[0] == "frames":
            return self._frames(document["frames"], limits)
        return self.from_bytes(_base64_image(document[given[0]], where=f'JSON field "{given[0]}"'), limits)

    def _frames(self, frames: Any, limits: RequestLimits) -> list[Image.Image]:
        """Decode the sampled ones of a list of base64 frames (the others are never decoded)."""
        if not isinstance(frames, list) or not frames:
            raise BadRequest('"frames" must be a non-empty list of base64 images, in order')
        if len(frames) > self.limits.max_video_frames:
            raise BadRequest(
                f"{len(frames)} frames; the limit is max_video_frames={self.limits.max_video_frames}", status=413
            )
        frame_limits = replace(limits, max_image_pixels=min(limits.max_image_pixels, self.limits.max_frame_pixels))
        indices = sample_frame_indices(len(frames), self.num_frames)
        decoded = [decode_image(_base64_image(frames[i], where=f"frame {i}"), frame_limits) for i in indices]
        return SampledFrames(decoded, indices, len(frames))
