"""The generated video set, the video reader and frame sampling, on real MP4, WebM and GIF files."""

import io
import json
import random

import numpy as np
import pytest
from PIL import Image

from model.video import sample_frame_indices
from model.video_frames import VideoLimits, VideoReadError, read_clip
from model.vocabulary import tokenize
from training.auxiliary_losses import clip_object_map_labels
from training.coco_data import is_video_set, load_coco
from training.shapes_world import COLORS, SHAPES
from training.video_data import (
    COLOURS, MOTIONS, caption_motion, clip_frames, describe, generate, names_clip, random_clip, write_video,
)


def _object_pixels(frame: Image.Image, colour: str) -> np.ndarray:
    """(row, column) of the pixels close to `colour` (the codec blurs edges a little)."""
    pixels = np.asarray(frame, dtype=np.int16)
    close = np.abs(pixels - np.array(COLOURS[colour])).sum(axis=-1) < 90
    return np.argwhere(close)


def _record(motion: str, seed: int = 0) -> dict:
    rng = random.Random(seed)
    while True:
        record = random_clip(rng)
        if record["motion"] == motion:
            return record


def test_generated_set_is_msr_vtt_style_deterministic_and_read_by_the_coco_loader(tmp_path):
    first = generate(tmp_path / "a", train=6, val=2, seed=5)
    second = generate(tmp_path / "b", train=6, val=2, seed=5)
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()
    document = json.loads(first[0].read_text())
    assert set(document) == {"info", "videos", "sentences"}
    video = document["videos"][0]
    for key in ("video_id", "id", "file_name", "frame_count", "fps", "duration", "motion"):
        assert key in video
    # The same pictures: x264 sometimes writes the same frames as other bytes, so compare the frames.
    for record in document["videos"]:
        first_clip, second_clip = (read_clip((tmp_path / run / "clips" / record["file_name"]).read_bytes(),
                                             record["frame_count"]) for run in ("a", "b"))
        assert [np.asarray(f).tobytes() for f in first_clip.frames] == \
            [np.asarray(f).tobytes() for f in second_clip.frames]
    coco = load_coco(first[0])
    assert is_video_set(coco) and len(coco.imgs) == 6
    for clip_id, record in coco.imgs.items():
        captions = [a["caption"] for a in coco.imgToAnns[clip_id]]
        assert captions == describe(record) and len(set(captions)) == 5
    assert not set(load_coco(first[1]).imgs) & set(coco.imgs), "no clip in both splits"


@pytest.mark.parametrize("motion", MOTIONS)
def test_each_caption_names_its_clip_and_no_other_motion(motion):
    record = _record(motion)
    for caption in describe(record):
        words = tokenize(caption)
        assert caption_motion(words) == motion, caption
        assert names_clip(words, record), caption
        for other in MOTIONS:
            if other != motion:
                assert not names_clip(words, {**_record(other), "colour": record["colour"],
                                              "shape": record["shape"]}), (caption, other)


@pytest.mark.parametrize("motion", MOTIONS)
def test_the_written_clip_shows_what_its_captions_say(tmp_path, motion):
    """Read back from the MP4, the object moves, grows, changes or (dis)appears as the record says."""
    record = _record(motion, seed=1)
    path = write_video(clip_frames(record), tmp_path / "clip.mp4", record["fps"])
    clip = read_clip(path.read_bytes(), record["frame_count"])
    first, last = clip.frames[0], clip.frames[-1]
    start, end = _object_pixels(first, record["colour"]), _object_pixels(last, record["colour"])
    if motion == "appears":
        assert len(start) == 0 and len(end) > 20
    elif motion == "disappears":
        assert len(start) > 20 and len(end) == 0
    elif motion == "changes_colour":
        assert len(end) == 0 and len(_object_pixels(last, record["to_colour"])) > 20
    else:
        (y0, x0), (y1, x1) = start.mean(axis=0), end.mean(axis=0)
        expected = {
            "moves_right": x1 - x0 > 20, "moves_left": x0 - x1 > 20, "moves_up": y0 - y1 > 20,
            "moves_down": y1 - y0 > 20, "grows": len(end) > 3 * len(start), "shrinks": len(start) > 3 * len(end),
            "stays_still": abs(x1 - x0) < 1 and abs(y1 - y0) < 1 and abs(len(end) - len(start)) < 5,
        }
        assert expected[motion], (motion, (x0, y0, len(start)), (x1, y1, len(end)))


@pytest.mark.parametrize("motion", ["moves_right", "appears", "changes_colour"])
def test_object_map_labels_follow_the_sampled_frames(motion):
    """Each sampled frame's cells: the object's colour x shape class where the drawn frame shows it."""
    record = _record(motion, seed=2)
    grid, num_frames = 4, 4
    labels = clip_object_map_labels(record, num_frames, grid)
    assert labels.shape == (num_frames, grid, grid)
    frames = clip_frames(record)
    for index, frame_labels in zip(sample_frame_indices(record["frame_count"], num_frames), labels):
        pixels = np.concatenate([_object_pixels(frames[index], c) for c in COLOURS])
        classes = set(frame_labels.flatten().tolist()) - {0, -100}
        if len(pixels) == 0:  # not there yet
            assert classes == set()
            continue
        ((label,),) = [classes]
        colour, shape = COLORS[(label - 1) // len(SHAPES)], SHAPES[(label - 1) % len(SHAPES)]
        assert shape == record["shape"] and len(_object_pixels(frames[index], colour)) == len(pixels)
        row, column = (pixels.mean(axis=0) / record["width"] * grid).astype(int)  # the drawn object's centre cell
        assert frame_labels[row, column] == label
    if motion == "moves_right":  # the labelled cells travel left to right
        columns = [(frame == frame.max()).nonzero()[:, 1].float().mean() for frame in labels]
        assert columns[0] < columns[-1]
    if motion == "appears":
        assert (labels[0] == 0).all() and (labels[-1] > 0).any()


def _numbered_frames(count: int, size: int = 32) -> list[Image.Image]:
    """Frame i is a flat grey of level 8 * i, so a decoded frame tells which one it was."""
    return [Image.new("RGB", (size, size), (8 * i,) * 3) for i in range(count)]


def _frame_number(frame: Image.Image) -> int:
    return round(float(np.asarray(frame, dtype=np.float32).mean()) / 8)


@pytest.mark.parametrize("suffix,codec", [(".mp4", "libx264"), (".webm", "libvpx")])
def test_a_written_clip_reads_back_with_its_frame_count(tmp_path, suffix, codec):
    path = write_video(_numbered_frames(20), tmp_path / f"clip{suffix}", fps=10, codec=codec)
    clip = read_clip(path.read_bytes(), num_frames=20)
    assert clip.total_frames == 20
    assert clip.container == suffix[1:]
    assert clip.duration == pytest.approx(2.0, abs=0.11)
    assert [_frame_number(f) for f in clip.frames] == list(range(20))


def test_an_animated_gif_reads_back_with_its_frame_count():
    buffer = io.BytesIO()
    frames = _numbered_frames(12)
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    clip = read_clip(buffer.getvalue(), num_frames=12)
    assert clip.total_frames == 12 and clip.container == "gif"
    assert [_frame_number(f) for f in clip.frames] == list(range(12))


def test_frame_sampling_picks_the_middle_of_equal_segments():
    assert sample_frame_indices(16, 8) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert sample_frame_indices(10, 5) == [1, 3, 5, 7, 9]
    assert sample_frame_indices(8, 8) == list(range(8))
    assert sample_frame_indices(3, 8) == [0, 0, 0, 1, 1, 2, 2, 2], "a short clip repeats frames in order"
    assert sample_frame_indices(1, 4) == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        sample_frame_indices(0, 4)


def test_the_reader_returns_the_sampled_frames(tmp_path):
    path = write_video(_numbered_frames(30), tmp_path / "clip.mp4", fps=15)
    clip = read_clip(path.read_bytes(), num_frames=6)
    assert clip.indices == sample_frame_indices(30, 6) == [2, 7, 12, 17, 22, 27]
    assert [_frame_number(f) for f in clip.frames] == clip.indices


def test_the_reader_refuses_what_it_should(tmp_path):
    data = write_video(_numbered_frames(30), tmp_path / "clip.mp4", fps=15).read_bytes()
    cases = {
        "corrupt": data[: len(data) // 2],
        "unsupported": b"just some text, not a video at all",
    }
    for kind, body in cases.items():
        with pytest.raises(VideoReadError) as caught:
            read_clip(body, 4)
        assert caught.value.kind == kind
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16)).save(jpeg, format="JPEG")
    with pytest.raises(VideoReadError, match="still JPEG") as caught:
        read_clip(jpeg.getvalue(), 4)
    assert caught.value.kind == "unsupported"
    for limits, named in [
        (VideoLimits(max_video_frames=29), "max_video_frames=29"),
        (VideoLimits(max_video_seconds=1.5), "max_video_seconds=1.5"),
        (VideoLimits(max_frame_pixels=1000), "max_frame_pixels=1000"),
        (VideoLimits(max_video_bytes=len(data) - 1), f"max_video_bytes={len(data) - 1}"),
    ]:
        with pytest.raises(VideoReadError, match=named) as caught:
            read_clip(data, 4, limits)
        assert caught.value.kind == "too_large"


def test_a_truncated_clip_of_the_set_is_named_with_its_id_by_the_dataset_and_the_training_command(tmp_path):
    import subprocess
    import sys

    from model.transforms import eval_transform
    from model.vocabulary import Vocabulary
    from training.coco_data import UnreadableImage, caption_set

    train_json, val_json = generate(tmp_path / "videos", train=3, val=1, seed=3, frame_size=32)
    coco = load_coco(train_json)
    broken = sorted(coco.imgs)[1]
    clip = tmp_path / "videos" / "clips" / coco.imgs[broken]["file_name"]
    clip.write_bytes(clip.read_bytes()[:300])  # a download cut short
    vocab = Vocabulary.build([a["caption"] for a in coco.anns.values()], min_count=1)
    dataset = caption_set(coco, tmp_path / "videos" / "clips", vocab,
                          eval_transform(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3), num_frames=2)
    assert dataset[0][0].shape == (2, 3, 32, 32)
    with pytest.raises(UnreadableImage, match=rf"clip {clip} \(id {broken}\) cannot be read: .*drop the clip"):
        dataset[1]

    run = subprocess.run([
        sys.executable, "-m", "training.train", "--annotations", str(train_json), "--val-annotations", str(val_json),
        "--images", str(tmp_path / "videos" / "clips"), "--output-dir", str(tmp_path / "run"), "--encoder-weights",
        "none", "--backbone", "resnet18", "--num-frames", "2", "--embed-size", "16", "--hidden-size", "16",
        "--image-size", "32", "--min-word-count", "1", "--epochs", "1", "--quiet",
    ], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: clip {clip} (id {broken}) cannot be read"), run.stderr
