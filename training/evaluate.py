"""Caption held-out images and score them: BLEU-1..4, CIDEr-D and, on the shapes set, attribute accuracy.

    python -m training.evaluate --export-dir build/export \
        --annotations data/shapes/annotations/captions_val.json --images data/shapes/images

Prints one JSON line of metrics. BLEU and CIDEr-D are pycocoevalcap's
corpus-level scorers (pure Python); captions are tokenised with the model's own
tokenizer instead of the Java PTB tokenizer. Attribute accuracy is the share of
images whose caption names exactly the scene's (colour, shape) pairs; it is
reported only when the annotation file carries scenes (the generated set does).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

import torch
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from tqdm import tqdm

from handler.model_loader import load_exported_captioner
from model.captioner import Captioner
from model.batch_captioning import DecodeSpec, decode_mixed
from model.transforms import eval_transform
from model.vocabulary import Vocabulary, tokenize
from training.coco_data import CocoCaptions, load_coco
from training.shapes_dataset import names_every_object


@torch.inference_mode()
def caption_dataset(
    model: Captioner,
    vocab: Vocabulary,
    dataset: CocoCaptions,
    *,
    device: torch.device,
    batch_size: int = 64,
    beam_size: int = 1,
    quiet: bool = False,
) -> dict[int, list[str]]:
    """Predicted caption words for every image of `dataset`, decoded in batches."""
    model.eval()
    predictions: dict[int, list[str]] = {}
    ids = dataset.image_ids
    for start in tqdm(range(0, len(ids), batch_size), desc="captioning", unit="batch", disable=quiet):
        chunk = ids[start : start + batch_size]
        images = torch.stack([dataset.transform(dataset.load_image(i)) for i in chunk]).to(device)
        embeddings = model.encode(images)
        specs = [DecodeSpec(model.config.max_length, beam_size)] * len(chunk)
        captions, _ = decode_mixed(
            model.decoder, embeddings, specs, start_id=vocab.start_id, end_id=vocab.end_id
        )  # the same dispatch (greedy or beam) the handler uses
        for image_id, caption in zip(chunk, captions):
            predictions[image_id] = vocab.decode(caption.tokens)
    return predictions


def scenes_of(dataset: CocoCaptions) -> dict[int, list[dict]] | None:
    """The generated set's scene per image, or None unless every image has one (real COCO has none)."""
    scenes = {i: dataset.coco.imgs[i].get("objects") for i in dataset.image_ids}
    return scenes if all(scenes.values()) else None


def score_captions(
    predictions: dict[int, list[str]], references: dict[int, list[str]], scenes: dict[int, list[dict]] | None = None
) -> dict[str, Any]:
    """Corpus-level BLEU-1..4 and CIDEr-D (and attribute accuracy when scenes are known)."""
    gts = {i: [" ".join(tokenize(r)) for r in references[i]] for i in predictions}
    res = {i: [" ".join(words) or "<empty>"] for i, words in predictions.items()}
    with contextlib.redirect_stdout(io.StringIO()):  # the scorers print their internals
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
    metrics: dict[str, Any] = {f"bleu{n + 1}": round(float(b), 4) for n, b in enumerate(bleu)}
    metrics["cider"] = round(float(cider), 4)
    if scenes:
        correct = sum(names_every_object(predictions[i], scenes[i]) for i in predictions)
        metrics["attribute_accuracy"] = round(correct / len(predictions), 4)
    metrics["images"] = len(predictions)
    return metrics


def evaluate_model(
    model: Captioner,
    vocab: Vocabulary,
    annotations: Path | str,
    images: Path | str,
    *,
    device: torch.device,
    limit: int | None = None,
    batch_size: int = 64,
    beam_size: int = 1,
    quiet: bool = False,
) -> tuple[dict[str, Any], dict[int, list[str]]]:
    """Metrics on a COCO-format caption file, and the predictions behind them."""
    coco = load_coco(annotations)
    image_ids = sorted(coco.imgs)[:limit]
    config = model.config
    transform = eval_transform(image_size=config.image_size, mean=config.mean, std=config.std)
    dataset = CocoCaptions(coco, images, vocab, transform, image_ids)
    started = time.perf_counter()
    predictions = caption_dataset(
        model, vocab, dataset, device=device, batch_size=batch_size, beam_size=beam_size, quiet=quiet
    )
    metrics = score_captions(predictions, dataset.references(), scenes_of(dataset))
    metrics["decoding"] = "greedy" if beam_size == 1 else f"beam{beam_size}"
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    return metrics, predictions


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate an exported captioner on a COCO-format caption file.")
    parser.add_argument("--export-dir", default="build/export")
    parser.add_argument("--annotations", required=True, help="held-out COCO caption file")
    parser.add_argument("--images", required=True, help="image folder")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--beam-size", type=int, default=1, help="1 = greedy")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--predictions-out", default=None, help="also write predictions as JSON here")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    model, vocab = load_exported_captioner(args.export_dir, device)
    metrics, predictions = evaluate_model(
        model, vocab, args.annotations, args.images,
        device=device, limit=args.limit, batch_size=args.batch_size, beam_size=args.beam_size, quiet=args.quiet,
    )
    if args.predictions_out:
        Path(args.predictions_out).write_text(json.dumps({str(k): " ".join(v) for k, v in predictions.items()}))
    print(json.dumps(metrics), flush=True)
    return metrics


if __name__ == "__main__":
    main(get_args_parser().parse_args())
