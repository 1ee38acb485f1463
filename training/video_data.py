"""Generated video set: short clips of one shape that moves, grows, shrinks, changes colour,
appears, disappears or stays still, written as real MP4 (H.264) files, with five true captions each.

    python -m training.video_data --out data/videos --train 600 --val 100 --seed 0

Writes `clips/videoN.mp4` and `annotations/captions_{train,val}.json` in a format
modelled on MSR-VTT:

    {"info": {...},
     "videos": [{"video_id": "video7", "id": 7, "file_name": "video7.mp4", "frame_count": 24,
                 "fps": 12, "width": 64, "height": 64, "duration": 2.0, "split": "train",
                 "colour": "red", "shape": "circle", "motion": "moves_right", "to_colour": null}],
     "sentences": [{"sen_id": 35, "video_id": "video7", "caption": "a red circle moves from left to right"}]}

`training.coco_data.load_coco` reads it like the image set's COCO files. The
same seed writes the same annotations and clips whose decoded frames are the same
(x264 now and then encodes equal frames as other bytes).
"""

from __future__ import annotations

import argparse
import json
import random
from fractions import Fraction
from pathlib import Path

from PIL import Image, ImageDraw

from training.cli import int_between, non_negative_int

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230), "yellow": (235, 205, 30)}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (235, 235, 235)
# Each motion's five captions; {o} is "<colour> <shape>", {c2} the colour it turns into.
MOTION_CAPTIONS = {
    "moves_right": ("a {o} moves from left to right", "a {o} moves to the right", "the {o} slides from the left "
                    "to the right", "a {o} travels to the right", "there is a {o} moving right"),
    "moves_left": ("a {o} moves from right to left", "a {o} moves to the left", "the {o} slides from the right "
                   "to the left", "a {o} travels to the left", "there is a {o} moving left"),
    "moves_up": ("a {o} moves up", "a {o} moves from the bottom to the top", "the {o} rises",
                 "a {o} travels upward", "there is a {o} moving up"),
    "moves_down": ("a {o} moves down", "a {o} moves from the top to the bottom", "the {o} falls",
                   "a {o} travels downward", "there is a {o} moving down"),
    "grows": ("a {o} grows", "a {o} gets bigger", "the {o} grows larger", "a {o} expands",
              "there is a {o} growing"),
    "shrinks": ("a {o} shrinks", "a {o} gets smaller", "the {o} shrinks", "a {o} contracts",
                "there is a {o} shrinking"),
    "changes_colour": ("a {o} turns {c2}", "a {o} changes colour to {c2}", "the {o} becomes {c2}",
                       "a {o} turns into a {c2} one", "there is a {o} turning {c2}"),
    "appears": ("a {o} appears", "a {o} shows up", "the {o} appears", "a {o} pops up",
                "there is a {o} appearing"),
    "disappears": ("a {o} disappears", "a {o} vanishes", "the {o} disappears", "a {o} fades away",
                   "there is a {o} disappearing"),
    "stays_still": ("a {o} stays still", "a {o} does not move", "the {o} stays in place", "a {o} stands still",
                    "there is a {o} staying still"),
}
MOTIONS = tuple(MOTION_CAPTIONS)
# Words that say which motion a caption describes (the last direction word decides left/right/up/down).
MOTION_WORDS = {
    "right": "moves_right", "left": "moves_left", "up": "moves_up", "top": "moves_up", "rises": "moves_up",
    "upward": "moves_up", "down": "moves_down", "bottom": "moves_down", "falls": "moves_down",
    "downward": "moves_down",
}
OTHER_MOTION_WORDS = {
    **dict.fromkeys(("grows", "bigger", "larger", "expands", "growing"), "grows"),
    **dict.fromkeys(("shrinks", "smaller", "contracts", "shrinking"), "shrinks"),
    **dict.fromkeys(("turns", "becomes", "colour", "turning", "into"), "changes_colour"),
    **dict.fromkeys(("appears", "shows", "pops", "appearing"), "appears"),
    **dict.fromkeys(("disappears", "vanishes", "fades", "disappearing"), "disappears"),
    **dict.fromkeys(("still", "not", "place", "staying"), "stays_still"),
}
# Class ids of a clip's (colour, shape, motion, colour it turns into or none), for the auxiliary head.
MOTION_ATTRIBUTE_CLASSES = (len(COLOURS), len(SHAPES), len(MOTIONS), len(COLOURS) + 1)


def random_clip(rng: random.Random, frame_size: int = 64) -> dict:
    """A clip's record: object, motion, frame rate and length (1 to 3 s at 8, 12 or 16 fps)."""
    colour = rng.choice(list(COLOURS))
    motion = rng.choice(MOTIONS)
    fps = rng.choice((8, 12, 16))
    frames = max(8, round(fps * rng.uniform(1.0, 3.0)))
    return {
        "colour": colour,
        "shape": rng.choice(SHAPES),
        "motion": motion,
        "to_colour": rng.choice([c for c in COLOURS if c != colour]) if motion == "changes_colour" else None,
        "fps": fps,
        "frame_count": frames,
        "width": frame_size,
        "height": frame_size,
        "duration": round(frames / fps, 4),
        # Where the still parts of the path lie, and when an object appears/disappears/changes.
        "anchor": [rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)],
        "event": rng.uniform(0.35, 0.65),
    }


def frame_state(record: dict, t: float) -> tuple[float, float, float, str | None]:
    """(x, y, radius as a share of the frame, colour or None when absent) at time t in [0, 1]."""
    x, y = record["anchor"]
    # Shapes span about 40% of the frame: at the model's 48 px a circle, square and triangle
    # still differ by several pixels (at 0.14 the model named the shape in 66 of 100 clips).
    radius, colour = 0.19, record["colour"]
    motion, event = record["motion"], record["event"]
    travel = 0.22 + 0.56 * t  # from near one edge to near the other
    if motion == "moves_right":
        x = travel
    elif motion == "moves_left":
        x = 1 - travel
    elif motion == "moves_up":
        y = 1 - travel
    elif motion == "moves_down":
        y = travel
    elif motion == "grows":
        radius = 0.08 + 0.17 * t
    elif motion == "shrinks":
        radius = 0.25 - 0.17 * t
    elif motion == "changes_colour" and t >= event:
        colour = record["to_colour"]
    elif (motion == "appears" and t < event) or (motion == "disappears" and t >= event):
        colour = None
    return x, y, radius, colour


def render_frame(record: dict, t: float) -> Image.Image:
    """One RGB frame of the clip at time t in [0, 1]."""
    size = record["width"]
    image = Image.new("RGB", (size, size), BACKGROUND)
    x, y, radius, colour = frame_state(record, t)
    if colour is None:
        return image
    draw = ImageDraw.Draw(image)
    cx, cy, r = x * size, y * size, radius * size
    fill = COLOURS[colour]
    if record["shape"] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif record["shape"] == "square":
        side = r * 0.9
        draw.rectangle([cx - side, cy - side, cx + side, cy + side], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    return image


def frame_time(record: dict, index: int) -> float:
    """Frame `index`'s time in [0, 1]: the first frame is 0, the last 1."""
    return index / max(record["frame_count"] - 1, 1)


def clip_frames(record: dict) -> list[Image.Image]:
    return [render_frame(record, frame_time(record, i)) for i in range(record["frame_count"])]


def frame_objects(record: dict, index: int) -> list[dict]:
    """What frame `index` shows, as the image set's object records (colour, shape, box in pixels): none or one.

    The box is the shape's circumscribing square (centre +- radius), as the image
    set's boxes are, so `training.auxiliary_losses.object_map_labels` reads a frame
    as it reads a generated image.
    """
    x, y, radius, colour = frame_state(record, frame_time(record, index))
    if colour is None:
        return []
    cx, cy, r = x * record["width"], y * record["height"], radius * min(record["width"], record["height"])
    return [{"color": colour, "shape": record["shape"], "box": [cx - r, cy - r, cx + r, cy + r]}]


def write_video(frames: list[Image.Image], path: Path, fps: int, codec: str = "libx264") -> Path:
    """Encode RGB frames as a real video file (the container follows the suffix: .mp4, .webm, .mkv)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def describe(record: dict) -> list[str]:
    """The clip's five true captions."""
    thing = f"{record['colour']} {record['shape']}"
    return [t.format(o=thing, c2=record["to_colour"]) for t in MOTION_CAPTIONS[record["motion"]]]


def caption_motion(tokens: list[str]) -> str | None:
    """Which motion a caption says (None if it names none): the words after the object decide."""
    direction = None
    for word in tokens:
        if word in OTHER_MOTION_WORDS:
            return OTHER_MOTION_WORDS[word]
        direction = MOTION_WORDS.get(word, direction)
    return direction


def names_clip(tokens: list[str], record: dict) -> bool:
    """True when the caption names the clip's colour and shape, its motion, and the colour it turns into."""
    colours = [w for w in tokens if w in COLOURS]
    shapes = [w for w in tokens if w in SHAPES]
    if not colours or not shapes or colours[0] != record["colour"] or shapes[0] != record["shape"]:
        return False
    if caption_motion(tokens) != record["motion"]:
        return False
    return record["to_colour"] is None or colours[-1] == record["to_colour"]


def motion_labels(record: dict) -> list[list[int]]:
    """[[colour, shape, motion, turned-into colour or none]] class ids (one "column": the whole clip)."""
    colours = list(COLOURS)
    to_colour = len(colours) if record["to_colour"] is None else colours.index(record["to_colour"])
    return [[colours.index(record["colour"]), SHAPES.index(record["shape"]), MOTIONS.index(record["motion"]),
             to_colour]]


def write_split(out: Path, split: str, first_id: int, count: int, rng: random.Random, frame_size: int) -> Path:
    clips = out / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    videos, sentences = [], []
    for video_id in range(first_id, first_id + count):
        record = random_clip(rng, frame_size)
        name = f"video{video_id}"
        write_video(clip_frames(record), clips / f"{name}.mp4", record["fps"])
        videos.append({"video_id": name, "id": video_id, "file_name": f"{name}.mp4", "split": split, **record})
        for caption in describe(record):
            sentences.append({"sen_id": len(sentences) + first_id * 5, "video_id": name, "caption": caption})
    info = {"description": "generated moving shapes, MSR-VTT-style annotations", "split": split}
    path = out / "annotations" / f"captions_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": info, "videos": videos, "sentences": sentences}))
    return path


def generate(out: Path | str, train: int, val: int, seed: int = 0, frame_size: int = 64) -> tuple[Path, Path]:
    """Write both splits; the same seed gives the same clips."""
    out, rng = Path(out), random.Random(seed)
    return (write_split(out, "train", 0, train, rng, frame_size),
            write_split(out, "val", train, val, rng, frame_size))


# `--frame-size`: H.264's 4:2:0 frames need an even side, and below 16 px a shape spans a few pixels
# that x264 smears; above 1024 px each clip is megabytes and the model reads frames at 48 px.
MIN_FRAME_SIZE, MAX_FRAME_SIZE = 16, 1024


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate the moving-shapes video set.")
    parser.add_argument("--out", default="data/videos")
    parser.add_argument("--train", type=non_negative_int, default=600)
    parser.add_argument("--val", type=non_negative_int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frame-size", type=int_between(MIN_FRAME_SIZE, MAX_FRAME_SIZE, even=True), default=64,
                        help=f"frame side in pixels: even (H.264's 4:2:0 halves it), {MIN_FRAME_SIZE} to "
                             f"{MAX_FRAME_SIZE}")
    return parser


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    for written in generate(args.out, args.train, args.val, args.seed, args.frame_size):
        print(f"wrote {written}")
