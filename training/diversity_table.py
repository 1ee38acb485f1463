"""The README's diversity table: one exported model, the held-out set, several decoding settings.

    python -m training.diversity_table --export-dir build/export \
        --annotations data/shapes/annotations/captions_val.json --images data/shapes/images

Each row is `training.evaluate` with that setting (n captions per image where the
method gives several): BLEU-4 and attribute accuracy of the best caption, and
over all n the diversity figures (distinct-1/2, mBLEU-4) and the oracle ones.
Prints a markdown table and writes every figure as JSON (`--out`); each pass's
progress goes to stderr (`--quiet` for none).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Sequence

import torch

from model.batch_captioning import DecodeSpec
from model.export_format import load_exported_captioner
from training.cli import torch_device, user_errors
from training.coco_data import NoCaptionsInLanguage, caption_language, caption_languages, load_captions
from training.evaluate import evaluate_model

NUM_CAPTIONS = 5


def settings(max_length: int, seed: int) -> list[tuple[str, DecodeSpec]]:
    """The table's rows: (label, decoding)."""
    n = NUM_CAPTIONS
    return [
        ("greedy", DecodeSpec(max_length)),
        ("beam 3", DecodeSpec(max_length, beam_size=3, n_best=3)),
        (f"beam 5, n = {n}", DecodeSpec(max_length, beam_size=5, n_best=n)),
        (f"sampling, temperature 0.7, n = {n}", DecodeSpec(max_length, n_best=n, sample=True, temperature=0.7, seed=seed)),
        (f"sampling, temperature 1.0, n = {n}", DecodeSpec(max_length, n_best=n, sample=True, seed=seed)),
        (f"sampling, top-p 0.9, n = {n}", DecodeSpec(max_length, n_best=n, sample=True, top_p=0.9, seed=seed)),
        (f"diverse beam search, 5 groups, diversity 0.5, n = {n}",
         DecodeSpec(max_length, beam_size=5, n_best=n, beam_groups=5, diversity=0.5)),
    ]


COLUMNS = (
    ("captions", "captions_per_image"), ("BLEU-4", "bleu4"), ("attribute accuracy", "attribute_accuracy"),
    ("distinct-1", "distinct1"), ("distinct-2", "distinct2"), ("mBLEU-4", "mbleu4"),
    ("oracle BLEU-4", "oracle_bleu4"), ("oracle attribute accuracy", "oracle_attribute_accuracy"),
    ("attribute accuracy, all n", "attribute_accuracy_all"),
)


def markdown(rows: list[tuple[str, dict]]) -> str:
    def cell(metrics: dict, key: str) -> str:
        value = metrics.get(key, 1 if key == "captions_per_image" else None)
        return "-" if value is None else f"{value:g}"

    lines = ["| decoding | " + " | ".join(name for name, _ in COLUMNS) + " |",
             "| --- |" + " --- |" * len(COLUMNS)]
    lines += [f"| {label} | " + " | ".join(cell(m, key) for _, key in COLUMNS) + " |" for label, m in rows]
    return "\n".join(lines)


def check_language(language: str, model_languages: Sequence[str], annotations: Path | str) -> None:
    """Refuse, before the first of the passes, a language the model or the caption file lacks.

    `evaluate_model` scores a language only where every image has a reference in
    it, and says nothing of which side lacked the one asked for.
    """
    if language not in model_languages:
        raise NoCaptionsInLanguage(f"--language {language}: the model captions in {', '.join(model_languages)} "
                                   "only; choose one of those")
    coco = load_captions([annotations])
    lacking = [i for i in coco.imgs if not any(caption_language(a) == language for a in coco.imgToAnns[i])]
    if lacking:
        raise NoCaptionsInLanguage(
            f"{annotations} has no captions in {language} for {len(lacking)} of its {len(coco.imgs)} images, e.g. "
            f"image id {lacking[0]} (its captions are in {', '.join(caption_languages(coco))}); choose a --language "
            "every image has captions in")


def main(args: argparse.Namespace) -> list[tuple[str, dict]]:
    device = torch.device(args.device)
    model, vocab = load_exported_captioner(args.export_dir, device)
    language = args.language or model.config.languages[0]
    check_language(language, model.config.languages, args.annotations)
    rows = []
    passes = settings(model.config.max_length, args.seed)
    for number, (label, spec) in enumerate(passes, 1):
        if not args.quiet:  # each pass has its own bar: say which setting it belongs to
            print(f"pass {number} of {len(passes)}: {label}", file=sys.stderr, flush=True)
        metrics, _ = evaluate_model(model, vocab, args.annotations, args.images, device=device, spec=spec,
                                    quiet=args.quiet, languages=[language])
        rows.append((label, metrics))
        print(f"{label}: {json.dumps(metrics)}", flush=True)
    table = markdown(rows)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "export_dir": str(args.export_dir), "language": language, "cpu": platform.processor() or platform.machine(),
            "rows": [{"setting": label, **metrics} for label, metrics in rows],
        }, indent=1))
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Diversity of several decoding settings on the held-out set.")
    parser.add_argument("--export-dir", default="build/export")
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--language", default=None, help="one of the model's languages (default: its first)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (image i uses seed + its id)")
    parser.add_argument("--device", type=torch_device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="build/diversity.json")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


if __name__ == "__main__":
    with user_errors():
        main(get_args_parser().parse_args())
