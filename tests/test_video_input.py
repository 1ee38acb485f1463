"""Request parsing for the video model: every way a clip arrives, and the limits, without a server."""

import base64
import io
import re
import struct
from fractions import Fraction
from pathlib import Path

import pytest
from PIL import Image

from handler.request_parsing import BadRequest, RequestLimits, parse_request
from handler.video_input import VideoInput, video_limits
from model.video_frames import VideoLimits, read_clip
from training.video_data import write_video

LIMITS = RequestLimits()


def _frames(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), (8 * i,) * 3) for i in range(count)]


def _level(frame: Image.Image) -> int:
    return round(frame.getpixel((16, 16))[0] / 8)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> bytes:
    return write_video(_frames(20), tmp_path_factory.mktemp("clip") / "clip.mp4", fps=10).read_bytes()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return _b64(buffer.getvalue())


MEDIA = VideoInput(num_frames=4, limits=VideoLimits(max_video_frames=30))


def test_raw_multipart_json_and_v2_clips_give_the_same_sampled_frames(mp4):
    rows = [
        {"body": bytearray(mp4)},
        {"data": bytearray(mp4), "beam_size": bytearray(b"2")},
        {"body": {"video": _b64(mp4), "max_length": 5}},
        {"body": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(mp4)]}]}},
        {"body": {"inputs": [{"name": "video", "datatype": "BYTES", "shape": [1], "data": [_b64(mp4)]},
                             {"name": "beam_size", "datatype": "INT32", "shape": [1], "data": [2]}]}},
    ]
    for row in rows:
        request = parse_request(row, LIMITS, MEDIA)
        assert request.image.indices == [2, 7, 12, 17] and request.image.total_frames == 20
        assert [_level(f) for f in request.image] == [2, 7, 12, 17]
        assert request.image.in_reply() == {"frames_sampled": [2, 7, 12, 17], "frames_total": 20}


def test_json_frames_are_sampled_in_order_and_one_frame_is_a_one_frame_clip():
    request = parse_request({"body": {"frames": [_png(f) for f in _frames(8)]}}, LIMITS, MEDIA)
    assert request.image.indices == [1, 3, 5, 7] and [_level(f) for f in request.image] == [1, 3, 5, 7]
    single = parse_request({"body": {"frames": [_png(_frames(4)[3])]}}, LIMITS, MEDIA)
    assert single.image.indices == [0, 0, 0, 0] and [_level(f) for f in single.image] == [3, 3, 3, 3]


@pytest.mark.parametrize("body,status,words", [
    ({"video": "AAAA", "frames": ["AAAA"]}, 400, "give one of the fields video, frames, not 2"),
    ({"video": "AAAA", "image": "AAAA"}, 400, "give one of the fields video, image, not 2"),
    ({"frames": []}, 400, "non-empty list"),
    ({"frames": "not a list"}, 400, "non-empty list"),
    ({"frames": ["%%%"]}, 400, "frame 0 is not valid base64"),
    ({"frames": [_png(Image.new("RGB", (8, 8)))] * 31}, 413, "max_video_frames=30"),
    ({"image": _b64(b"not a video")}, 415, "not a video container"),  # "image": the clip file, as "video"
    ({"clip": "AAAA"}, 400, "unknown JSON fields ['clip']; allowed: video, frames, image"),
    ({"beam_size": 2}, 400, 'lacks "video"'),
    ({"video": _b64(b"not a video")}, 415, "not a video container"),
])
def test_bad_json_clips_say_what_is_wrong(body, status, words):
    with pytest.raises(BadRequest) as caught:
        parse_request({"body": body}, LIMITS, MEDIA)
    assert caught.value.status == status and words in caught.value.message


def test_a_clip_sent_as_json_image_is_read_as_the_clip_file():
    """A client that sends every file as "image" (the image model's field) gets the video model's caption."""
    data = _clip("mp4", _frames(20))
    by_image = parse_request({"body": {"image": _b64(data), "max_length": 3}}, LIMITS, MEDIA)
    by_video = parse_request({"body": {"video": _b64(data)}}, LIMITS, MEDIA)
    assert by_image.image.indices == by_video.image.indices and by_image.options.max_length == 3
    assert [_level(f) for f in by_image.image] == [_level(f) for f in by_video.image]


def test_frame_pixel_limit_applies_to_json_frames():
    media = VideoInput(num_frames=2, limits=VideoLimits(max_frame_pixels=100))
    with pytest.raises(BadRequest) as caught:
        parse_request({"body": {"frames": [_png(Image.new("RGB", (11, 10)))]}}, LIMITS, media)
    assert caught.value.status == 413


def test_limits_come_from_the_model_config_settings():
    limits = video_limits({"max_video_frames": "12", "max_video_seconds": 2, "torch_threads": 2})
    assert limits == VideoLimits(max_video_frames=12, max_video_seconds=2.0)


def test_a_v2_clip_comes_as_one_input_named_video_or_image():
    clip = {"datatype": "BYTES", "shape": [1], "data": [_b64(b"any")]}
    for inputs, words in (([{"name": "video", **clip}, {"name": "image", **clip}], "give one of the inputs video, image"),
                          ([{"name": "frames", **clip}], "unknown inputs ['frames']; send 'video'"),
                          ([{"name": "beam_size", "datatype": "INT32", "shape": [1], "data": [2]}], "no 'video' input")):
        with pytest.raises(BadRequest, match=re.escape(words)):
            parse_request({"body": {"inputs": inputs}}, LIMITS, MEDIA)


def _clip(fmt: str, frames: list[Image.Image], start: int = 0, rotation: int | None = None,
          hflip: bool = False, vflip: bool = False) -> bytes:
    """A real clip at 10 fps ("mp4": H.264, "webm": VP9) whose first frame is at `start` tenths of a second."""
    import av

    codec = {"mp4": "libx264", "webm": "libvpx-vp9"}[fmt]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        if rotation is not None:
            # degrees counter-clockwise, as frame.rotation reads it; the mirror after the turn
            stream.set_display_rotation(rotation, hflip=hflip, vflip=vflip)
        for number, image in enumerate(frames):
            frame = av.VideoFrame.from_image(image)
            frame.pts, frame.time_base = start + number, Fraction(1, 10)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def _tkhd_matrix(mp4: bytes) -> list[int]:
    """The 3x3 display matrix of an MP4's (only) track header, 16.16 fixed point, as stored."""
    at = mp4.index(b"tkhd") + 4
    at += 4 + (32 if mp4[at] == 1 else 20) + 16  # version, flags, times, id, duration; reserved, layer, group, volume
    return list(struct.unpack(">9i", mp4[at:at + 36]))


def _red_top_half(size=(96, 48)) -> Image.Image:
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0], size[1] // 2))
    return image


def _reddest_side(frame: Image.Image) -> str:
    width, height = frame.size
    probes = {"top": (width // 2, height // 5), "bottom": (width // 2, height * 4 // 5),
              "left": (width // 5, height // 2), "right": (width * 4 // 5, height // 2)}
    return max(probes, key=lambda side: frame.getpixel(probes[side])[0])


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
@pytest.mark.parametrize("rotation,size,red_side", [
    (-90, (48, 96), "right"),  # a phone's portrait clip (MP4 `rotate=90`): turned a quarter clockwise
    (90, (48, 96), "left"),
    (180, (96, 48), "bottom"),
    (None, (96, 48), "top"),
])
def test_a_rotated_clip_is_read_upright_as_a_player_shows_it(fmt, rotation, size, red_side):
    import av

    data = _clip(fmt, [_red_top_half()] * 5, rotation=rotation)
    with av.open(io.BytesIO(data)) as container:  # the metadata survived the round trip
        assert next(container.decode(video=0)).rotation == {None: 0, 180: -180}.get(rotation, rotation)
    if fmt == "mp4" and rotation == -90:  # the track matrix a phone writes for a portrait clip: x' = -y, y' = x
        assert _tkhd_matrix(data)[:5] == [0, 0x10000, 0, -0x10000, 0]
    clip = read_clip(data, 2)
    assert (clip.width, clip.height) == size
    assert all(frame.size == size and _reddest_side(frame) == red_side for frame in clip.frames)
    frames = parse_request({"body": bytearray(data)}, LIMITS, MEDIA).image
    assert [frame.size for frame in frames] == [size] * 4


def _corner_marked(size=(96, 48)) -> Image.Image:
    """Blue, with a red top-left corner block and a green top-right one: each of the 8 orientations differs."""
    image = Image.new("RGB", size, (0, 0, 255))
    width, height = size
    image.paste((255, 0, 0), (0, 0, width // 3, height // 2))
    image.paste((0, 255, 0), (width * 2 // 3, 0, width, height // 2))
    return image


def _corners(frame: Image.Image) -> tuple[str, ...]:
    """Which colour each corner (top-left, top-right, bottom-right, bottom-left) shows."""
    width, height = frame.size
    points = ((width // 10, height // 10), (width * 9 // 10, height // 10), (width * 9 // 10, height * 9 // 10),
              (width // 10, height * 9 // 10))
    names = {0: "red", 1: "green", 2: "blue"}
    return tuple(names[max(range(3), key=lambda k, p=p: frame.getpixel(p)[k])] for p in points)


@pytest.mark.parametrize("rotation,hflip,vflip,corners", [
    # a mirror: a front camera's clip, or an editor's flip
    (0, True, False, ("green", "red", "blue", "blue")),
    (0, False, True, ("blue", "blue", "green", "red")),
    (-90, True, False, ("red", "blue", "blue", "green")),  # a front camera's portrait clip: transposed
    (90, True, False, ("blue", "green", "red", "blue")),
    (180, True, False, ("blue", "blue", "green", "red")),  # turned and mirrored: a vertical flip
    # plain quarter turns, for comparison
    (-90, False, False, ("blue", "red", "green", "blue")),
    (90, False, False, ("green", "blue", "blue", "red")),
    (180, False, False, ("blue", "blue", "red", "green")),
])
def test_a_mirrored_clip_is_shown_as_a_player_shows_it(rotation, hflip, vflip, corners):
    """The picture a player shows: the coded picture turned `rotation` degrees counter-clockwise, then
    mirrored left-right (hflip) or top-bottom (vflip)."""
    coded = _corner_marked()
    expected = coded.rotate(rotation, expand=True)
    if hflip:
        expected = expected.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if vflip:
        expected = expected.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    assert _corners(expected) == corners  # the table above is what that means
    clip = read_clip(_clip("mp4", [coded] * 5, rotation=rotation, hflip=hflip, vflip=vflip), 2)
    assert (clip.width, clip.height) == expected.size
    assert all(frame.size == expected.size and _corners(frame) == corners for frame in clip.frames)


@pytest.mark.parametrize("fmt,start", [("mp4", 6_000), ("webm", 36_000)])  # 10 minutes, 1 hour (tenths of a s)
def test_a_clip_whose_timestamps_start_late_lasts_as_long_as_its_frames(fmt, start):
    import av

    data = _clip(fmt, _frames(20), start=start)
    with av.open(io.BytesIO(data)) as container:  # the late start survived the round trip
        assert container.streams.video[0].start_time * container.streams.video[0].time_base == start / 10
    clip = read_clip(data, 4, VideoLimits(max_video_seconds=3.0))
    assert clip.duration == pytest.approx(2.0) and clip.total_frames == 20
    request = parse_request({"body": bytearray(data)}, LIMITS, VideoInput(4, VideoLimits(max_video_seconds=3.0)))
    assert request.image.indices == [2, 7, 12, 17] and [_level(f) for f in request.image] == [2, 7, 12, 17]
    with pytest.raises(BadRequest, match=re.escape("clip lasts 2.0 s; the limit is max_video_seconds=1.5")):
        parse_request({"body": bytearray(data)}, LIMITS, VideoInput(4, VideoLimits(max_video_seconds=1.5)))


def _webp(frames: list[Image.Image], duration: int = 100, **options) -> bytes:
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], duration=duration, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("options", [{"lossless": True}, {"quality": 90}])
def test_an_animated_webp_is_read_as_a_clip_like_an_animated_gif(options):
    data = _webp(_frames(20), **options)
    assert data[12:16] == b"VP8X" and data[20] & 0x02  # an animated WebP, as Pillow writes one
    for body in (bytearray(data), {"video": _b64(data)}):
        request = parse_request({"body": body}, LIMITS, MEDIA)
        assert request.image.indices == [2, 7, 12, 17] and request.image.total_frames == 20
        assert [_level(f) for f in request.image] == [2, 7, 12, 17]
    clip = read_clip(data, 4)
    assert (clip.container, clip.duration, clip.fps, clip.width, clip.height) == ("webp", 2.0, 10.0, 32, 32)


def test_an_animated_webp_is_held_to_the_clip_limits_and_its_transparency_shows_white():
    half_clear = [Image.new("RGBA", (32, 32), (200, 0, 0, 255)) for _ in range(3)]
    for number, image in enumerate(half_clear):
        image.paste((0, 0, 0, 0), (0, 0, 16, 32))
        image.putpixel((31, 31), (number, 0, 0, 255))  # frames differ, so Pillow keeps all three
    frames = read_clip(_webp(half_clear, lossless=True), 3).frames
    assert [(f.mode, f.getpixel((4, 16)), f.getpixel((24, 16))) for f in frames] == \
        [("RGB", (255, 255, 255), (200, 0, 0))] * 3
    for data, limits, words in (
        (_webp(_frames(31)), VideoLimits(max_video_frames=30), "more than max_video_frames=30"),
        (_webp(_frames(20), duration=250), VideoLimits(max_video_seconds=4.0), "clip lasts 5.0 s"),
        (_webp(_frames(3)), VideoLimits(max_frame_pixels=1000), "32x32 = 1024 pixels"),
    ):
        with pytest.raises(BadRequest) as caught:
            parse_request({"body": bytearray(data)}, LIMITS, VideoInput(4, limits))
        assert caught.value.status == 413 and words in caught.value.message


def test_a_still_webp_is_still_refused_as_an_image():
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, format="WEBP")
    with pytest.raises(BadRequest) as caught:
        parse_request({"body": bytearray(buffer.getvalue())}, LIMITS, MEDIA)
    assert caught.value.status == 415 and "got a still WebP image" in caught.value.message


def test_the_video_limits_default_to_the_shipped_settings():
    """An archive whose model-config.yaml leaves a limit out gets what README and the shipped file say."""
    import yaml

    shipped = yaml.safe_load((Path(__file__).parents[1] / "handler" / "model-config.yaml").read_text())["captioner"]
    defaults = VideoLimits()
    for name in ("max_video_bytes", "max_video_seconds", "max_video_frames", "max_frame_pixels"):
        assert getattr(defaults, name) == shipped.get(name, getattr(defaults, name)), name
    assert defaults.max_video_bytes < 10 * 1024 * 1024, "below config.properties' max_request_size"
