"""A picture of held-out images with the captions the exported model gives them.

    python -m training.gallery --export-dir build/export \
        --annotations data/shapes/annotations/captions_val.json --images data/shapes/images --out build/gallery.png

With `--held-out NAME ANNOTATIONS IMAGES` (make model: the second renderer's set) a
row of that set's images follows, and `--photos N` adds N photos shipped inside
installed packages with the domain score's verdict (`model/domain.py`), so the
picture shows what the model says, and what the service flags, outside its world.

For a model whose decoder attends (soft_attention) it also draws `--attention-out`:
for the first `--attention-count` held-out images, one panel per word with its
attention map over the image (`client.attention_maps`, as the demo page draws them).
"""

from __future__ import annotations

import argparse
import io
import textwrap
from collections.abc import Iterable
from pathlib import Path

import torch
from PIL import Image

from client.attention_maps import attention_figure
from model.captioner import Captioner
from model.decoding import greedy_decode
from model.detokenize import detokenize
from model.domain import domain_scorer
from model.export_format import load_exported_captioner, read_domain_statistics
from model.step_decoder import WithoutTokens
from model.transforms import eval_transform, to_rgb
from model.vocabulary import Vocabulary
from model.word_attention import word_maps
from training.cli import non_negative_int, positive_int, user_errors
from training.coco_data import load_coco
from training.domain_calibration import domain_features_of
from training.domain_report import picture_inputs
from training.evaluate import evaluate_model
from training.out_of_domain import package_photos
from training.shapes_dataset import names_every_object


def draw_gallery(entries: list[tuple[Path | Image.Image, str, bool | None]], out: Path, columns: int = 4) -> Path:
    """entries: (image path or picture, caption, correct or None when unknown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = (len(entries) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (path, caption, correct) in zip(axes.flat, entries):
        if isinstance(path, Image.Image):
            ax.imshow(to_rgb(path))
        else:
            with Image.open(path) as image:
                ax.imshow(to_rgb(image))  # as the model saw it: upright, transparency on white
        color = "black" if correct is None else ("darkgreen" if correct else "firebrick")
        ax.set_title("\n".join(textwrap.wrap(caption, 30)), fontsize=9, color=color)
    return save_figure(fig, "held-out images and predicted captions (green: every colour and shape right; "
                            "last rows: the second renderer, and photos with the domain flag)", out)


def save_figure(fig, title: str, out: Path, fontsize: int = 11) -> Path:
    """Title, lay out and write a gallery figure (the video gallery's too), then free it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    out = with_picture_suffix(out, fig.canvas.get_supported_filetypes())
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def with_picture_suffix(out: Path, known: Iterable[str]) -> Path:
    """`out`, with ".png" added when its name has no suffix the writer knows (`known`: "png", "pdf", ...).

    Given `--out build/gal3`, matplotlib writes `build/gal3.png` on its own and
    PIL refuses the name: the path the command prints is the file it wrote.
    """
    formats = {suffix.lower().lstrip(".") for suffix in known}
    return out if out.suffix.lower().lstrip(".") in formats else out.with_name(out.name + ".png")


def attention_path(args: argparse.Namespace, gallery: Path) -> Path | None:
    """Where the attention sheet goes: --attention-out, none for '', else beside the gallery it belongs to.

    Beside the gallery rather than in a fixed folder, so `--out /elsewhere/g.png`
    writes nothing into the directory the command happens to run from.
    """
    if args.attention_out == "":
        return None
    if args.attention_out is not None:
        return Path(args.attention_out)
    return gallery.with_name(f"{gallery.stem}_attention.png")


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
            image = to_rgb(image)  # the preprocessing of training and serving
        pixels = transform(image).unsqueeze(0).to(device)  # (1, 3, S, S)
        caption = greedy_decode(
            WithoutTokens(model.decoder, list(vocab.unwritten_ids)), model.encode(pixels),
            start_id=vocab.start_id_for(config.languages[0]), end_id=vocab.end_id, max_length=config.max_length,
        ).captions[0]  # the service's greedy caption: padding, start and language tokens are never chosen
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
    Image.init()  # every format plugin, so the suffixes PIL knows are all registered
    out = with_picture_suffix(out, Image.registered_extensions())
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def captioned_entries(model: Captioner, vocab: Vocabulary, annotations: str, images: str, count: int,
                      device: torch.device, label: str = "") -> list[tuple[Path, str, bool | None]]:
    """The first `count` images of a held-out set with their greedy captions and whether each is right."""
    _, predictions = evaluate_model(model, vocab, annotations, images, device=device, limit=count, quiet=True)
    coco = load_coco(annotations)
    entries = []
    for image_id, words in sorted(predictions.items()):
        info = coco.imgs[image_id]
        correct = names_every_object(words, info["objects"]) if "objects" in info else None
        entries.append((Path(images) / info["file_name"], label + detokenize(words), correct))
    return entries


def photo_entries(model: Captioner, vocab: Vocabulary, export_dir: str, count: int,
                  device: torch.device) -> list[tuple[Image.Image, str, bool | None]]:
    """Package-shipped photos, each with its caption and the domain score's verdict."""
    statistics = read_domain_statistics(export_dir, model.encoder.domain_layout)
    pictures = list(package_photos().items())[:count]
    inputs = picture_inputs(model, [picture for _, picture in pictures])
    verdicts = domain_scorer(statistics)(domain_features_of(model, inputs, device=device, quiet=True))
    entries = []
    for (name, picture), tensor, verdict in zip(pictures, inputs, verdicts):
        with torch.no_grad():
            caption = greedy_decode(
                model.decoder, model.encode(tensor[None].to(device)),
                start_id=vocab.start_id_for(model.config.languages[0]), end_id=vocab.end_id,
                max_length=model.config.max_length,
            ).captions[0]
        words = vocab.decode(caption.tokens)
        flag = "no domain statistics" if verdict.in_domain is None else (
            f"in domain ({verdict.score:.2f})" if verdict.in_domain else f"OUT OF DOMAIN ({verdict.score:.2f})")
        entries.append((picture, f"photo {name}: {flag}: {detokenize(words)}", None))
    return entries


def main(args: argparse.Namespace) -> Path:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, vocab = load_exported_captioner(args.export_dir, device)
    entries = captioned_entries(model, vocab, args.annotations, args.images, args.count, device)
    for name, set_annotations, set_images in args.held_out or ():
        entries += captioned_entries(model, vocab, set_annotations, set_images, args.held_out_count, device,
                                     f"{name}: ")
    if args.photos:
        entries += photo_entries(model, vocab, args.export_dir, args.photos, device)
    path = draw_gallery(entries, Path(args.out))
    print(f"wrote {path}")
    attention_out = attention_path(args, path)
    if model.config.attention_grid and attention_out is not None:
        paths = [entry[0] for entry in entries[: args.attention_count]]
        print(f"wrote {draw_attention_gallery(model, vocab, paths, attention_out, device)}")
    return path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Draw held-out images with their predicted captions.")
    parser.add_argument("--export-dir", default="build/export")
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--count", type=positive_int, default=12, help="images of the first held-out set")
    parser.add_argument("--held-out", nargs=3, action="append", metavar=("NAME", "ANNOTATIONS", "IMAGES"),
                        help="a row of another held-out set's images, labelled NAME; may be repeated")
    parser.add_argument("--held-out-count", type=positive_int, default=4, help="images of each --held-out set")
    parser.add_argument("--photos", type=non_negative_int, default=0,
                        help="add this many package-shipped photos with the domain flag (at most 3)")
    parser.add_argument("--out", default="build/gallery.png", help="the picture (.png added to a name without a "
                        "picture suffix)")
    parser.add_argument("--attention-out", default=None,
                        help="attention models: per-word attention maps of held-out images (default: beside --out, "
                             "OUT_attention.png, e.g. build/gallery_attention.png; '' for none)")
    parser.add_argument("--attention-count", type=positive_int, default=3, help="images in --attention-out")
    return parser


if __name__ == "__main__":
    with user_errors():
        main(get_args_parser().parse_args())
