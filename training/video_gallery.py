"""A picture of held-out clips: each row the frames the model sampled, and the caption it gave.

    python -m training.video_gallery --export-dir build/video-export \
        --annotations data/videos/annotations/captions_val.json --videos data/videos/clips \
        --out build/video_gallery.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model.export_format import load_exported_captioner
from model.transforms import eval_transform
from training.cli import positive_int, user_errors
from training.coco_data import caption_set, load_coco
from training.evaluate import evaluate_model
from training.gallery import save_figure
from training.video_data import MOTIONS, names_clip


def pick_clips(coco, count: int) -> list[int]:
    """The first held-out clip of each motion, in turn, until `count`: every motion appears."""
    by_motion = {motion: [i for i in sorted(coco.imgs) if coco.imgs[i]["motion"] == motion] for motion in MOTIONS}
    picked: list[int] = []
    while len(picked) < count and any(by_motion.values()):
        for motion in MOTIONS:
            if by_motion[motion] and len(picked) < count:
                picked.append(by_motion[motion].pop(0))
    return picked


def frame_strip(frames: list, gap: int = 4, scale: int = 2) -> "Image.Image":
    """The frames side by side, enlarged `scale` times (nearest neighbour: pixels stay visible), on white."""
    from PIL import Image

    width, height = frames[0].size
    strip = Image.new("RGB", (len(frames) * (width * scale + gap) - gap, height * scale), "white")
    for index, frame in enumerate(frames):
        strip.paste(frame.resize((width * scale, height * scale), Image.NEAREST), (index * (width * scale + gap), 0))
    return strip


def draw_strips(rows: list[tuple[list, str, bool]], out: Path) -> Path:
    """rows: (sampled frames, caption, right or not); one strip of frames per row, the caption above it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2
    lines = (len(rows) + columns - 1) // columns
    fig, axes = plt.subplots(lines, columns, figsize=(5.2 * columns, 1.9 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (frames, caption, correct) in zip(axes.flat, rows):
        ax.imshow(frame_strip(frames))
        ax.set_title(caption, fontsize=10, color="darkgreen" if correct else "firebrick")
    return save_figure(fig, "held-out clips: the sampled frames and the caption (green: object and motion right)",
                       out, fontsize=11)


def main(args: argparse.Namespace) -> Path:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, vocab = load_exported_captioner(args.export_dir, device)
    coco = load_coco(args.annotations)
    clip_ids = pick_clips(coco, args.count)
    _, predictions = evaluate_model(model, vocab, args.annotations, args.videos, device=device, quiet=True)
    config = model.config
    frame_transform = eval_transform(image_size=config.image_size, mean=config.mean, std=config.std)
    clips = caption_set(coco, args.videos, vocab, frame_transform, clip_ids, num_frames=config.num_frames)
    rows = []
    for clip_id in clip_ids:
        words = predictions[clip_id]
        rows.append((clips.load_image(clip_id), " ".join(words), names_clip(words, coco.imgs[clip_id])))
    path = draw_strips(rows, Path(args.out))
    print(f"wrote {path}")
    return path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Draw held-out clips' sampled frames with their predicted captions.")
    parser.add_argument("--export-dir", default="build/video-export")
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--videos", required=True, help="folder of the clip files")
    parser.add_argument("--count", type=positive_int, default=10)
    parser.add_argument("--out", default="build/video_gallery.png")
    return parser


if __name__ == "__main__":
    with user_errors():
        main(get_args_parser().parse_args())
