"""A picture of held-out images with the captions the exported model gives them.

    python -m training.gallery --export-dir build/export \
        --annotations data/shapes/annotations/captions_val.json --images data/shapes/images --out build/gallery.png
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import torch

from handler.model_loader import load_exported_captioner
from training.coco_data import load_coco
from training.evaluate import evaluate_model
from training.shapes_dataset import names_every_object


def draw_gallery(entries: list[tuple[Path, str, bool | None]], out: Path, columns: int = 4) -> Path:
    """entries: (image path, caption, correct or None when unknown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = (len(entries) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (path, caption, correct) in zip(axes.flat, entries):
        with Image.open(path) as image:
            ax.imshow(image.convert("RGB"))
        color = "black" if correct is None else ("darkgreen" if correct else "firebrick")
        ax.set_title("\n".join(textwrap.wrap(caption, 30)), fontsize=9, color=color)
    return save_figure(fig, "held-out images and predicted captions (green: every colour and shape right)", out)


def save_figure(fig, title: str, out: Path, fontsize: int = 11) -> Path:
    """Title, lay out and write a gallery figure (the video gallery's too), then free it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(args: argparse.Namespace) -> Path:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, vocab = load_exported_captioner(args.export_dir, device)
    _, predictions = evaluate_model(
        model, vocab, args.annotations, args.images, device=device, limit=args.count, quiet=True
    )
    coco = load_coco(args.annotations)
    entries = []
    for image_id, words in sorted(predictions.items()):
        info = coco.imgs[image_id]
        correct = names_every_object(words, info["objects"]) if "objects" in info else None
        entries.append((Path(args.images) / info["file_name"], " ".join(words), correct))
    path = draw_gallery(entries, Path(args.out))
    print(f"wrote {path}")
    return path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Draw held-out images with their predicted captions.")
    parser.add_argument("--export-dir", default="build/export")
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--out", default="build/gallery.png")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
