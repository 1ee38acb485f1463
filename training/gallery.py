"""A picture of held-out images with the captions the exported model gives them.

    python -m training.gallery --export-dir build/export \
        --annotations data/shapes/annotations/captions_val.json --images data/shapes/images --out build/gallery.png

For a model whose decoder attends (soft_attention) it also draws `--attention-out`:
for the first `--attention-count` held-out images, one panel per word with its
attention map over the image (`client.attention_maps`, as the demo page draws them).
"""

from __future__ import annotations

import argparse
import io
import textwrap
from pathlib import Path

import torch
from PIL import Image

from client.attention_maps import attention_figure
from model.captioner import Captioner
from model.decoding import greedy_decode
from model.detokenize import detokenize
from model.export_format import load_exported_captioner
from model.transforms import eval_transform
from model.vocabulary import Vocabulary
from model.word_attention import word_maps
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


@torch.inference_mode()
def draw_attention_gallery(
    model: Captioner, vocab: Vocabulary, image_paths: list[Path], out: Path, device: torch.device
) -> Path:
    """One row of panels per image (the image, then each word's map over it), stacked into one PNG."""
    import matplotlib.pyplot as plt

    config = model.config
    transform = eval_transform(image_size=config.image_size, mean=config.mean, std=config.std)
    pictures = []
    for path in image_paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
        pixels = transform(image).unsqueeze(0).to(device)  # (1, 3, S, S)
        caption = greedy_decode(
            model.decoder, model.encode(pixels), start_id=vocab.start_id, end_id=vocab.end_id,
            max_length=config.max_length,
        ).captions[0]
        words, maps = word_maps(caption, vocab, config.grid_size)
        figure = attention_figure(image, words, maps, columns=min(len(words) + 1, 8), title=path.name)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80)
        plt.close(figure)
        pictures.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    sheet = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), "white")
    top = 0
    for picture in pictures:
        sheet.paste(picture, (0, top))
        top += picture.height
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
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
        entries.append((Path(args.images) / info["file_name"], detokenize(words), correct))
    path = draw_gallery(entries, Path(args.out))
    print(f"wrote {path}")
    if model.config.attention_grid and args.attention_out:
        paths = [entry[0] for entry in entries[: args.attention_count]]
        print(f"wrote {draw_attention_gallery(model, vocab, paths, Path(args.attention_out), device)}")
    return path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Draw held-out images with their predicted captions.")
    parser.add_argument("--export-dir", default="build/export")
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--out", default="build/gallery.png")
    parser.add_argument("--attention-out", default="build/attention.png",
                        help="attention models: per-word attention maps of held-out images ('' for none)")
    parser.add_argument("--attention-count", type=int, default=3, help="images in --attention-out")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
