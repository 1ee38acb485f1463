"""How well the domain score tells held-out scenes from images that are not scenes: shares and AUROC.

    python -m training.domain_report --export-dir build/export \
        --held-out data/shapes/annotations/captions_val.json --images data/shapes/images   # the export's statistics
    python -m training.domain_report --export-dir build/export \
        --fit-annotations data/shapes/annotations/captions_train.json \
        --held-out data/shapes/annotations/captions_val.json --images data/shapes/images   # fitted here, not written

In domain: each held-out set (the threshold's calibration images) and freshly
generated scenes (`--fresh-scenes`, drawn by the shapes generator from a seed no
set used, so the share in domain is measured on images the threshold never saw).
Out of domain: `training.out_of_domain` (package photos, graphics, noise,
textures, text). For each it reports the share in domain / flagged and the AUROC
of the score between the in-domain and the out-of-domain images (1: every
out-of-domain image scores below every in-domain one; 0.5: chance), from the
distances r, each the largest of the blocks' distance over its threshold (the
score is a decreasing function of r, so the AUROC is the same, and far images
do not tie at a score rounded to 0). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from bench.environment import cpu_model
from model.captioner import Captioner
from model.domain import DomainScorer, DomainStatistics
from model.export_format import load_exported_captioner, read_domain_statistics
from model.transforms import eval_transform, to_rgb
from model.vocabulary import Vocabulary
from training.cli import non_negative_int, positive_int, user_errors
from training.domain_calibration import (
    add_domain_arguments,
    domain_features_of,
    domain_sources,
    fit_export_domain,
    held_out_sets,
    model_inputs,
)
from training.out_of_domain import out_of_domain_images
from training.shapes_dataset import random_scene, render_scene

FRESH_SEED = 20240517  # a generator stream no split of the generated set is drawn from


def fresh_scenes(count: int, seed: int = FRESH_SEED, max_objects: int = 3) -> list[Image.Image]:
    """New scenes drawn as the generated set draws them, saved and read back as its JPEGs are (quality 92)."""
    rng = random.Random(seed)
    scenes = []
    for _ in range(count):
        buffer = io.BytesIO()
        render_scene(random_scene(rng, max_objects), rng).save(buffer, format="JPEG", quality=92)
        scenes.append(to_rgb(Image.open(io.BytesIO(buffer.getvalue()))))
    return scenes


def picture_inputs(model: Captioner, pictures: Sequence[Image.Image]) -> list[torch.Tensor]:
    """Still pictures as the image model's inputs (the handler's transform)."""
    config = model.config
    transform = eval_transform(image_size=config.image_size, mean=config.mean, std=config.std)
    return [transform(to_rgb(picture)) for picture in pictures]


def auroc(in_domain: torch.Tensor, out_of_domain: torch.Tensor) -> float:
    """AUROC of "in domain" from distances: smaller distance, more in domain."""
    labels = [1] * len(in_domain) + [0] * len(out_of_domain)
    return float(roc_auc_score(labels, (-torch.cat([in_domain, out_of_domain])).tolist()))


def measure(model: Captioner, vocab: Vocabulary, statistics: DomainStatistics, held_out: Sequence,
            *, fresh: int = 300, per_kind: int = 12, batch_size: int = 64, quiet: bool = False) -> dict[str, Any]:
    """Distances r (1: the threshold) of every set, and the report's figures."""
    scorer = DomainScorer(statistics)

    def ratios(inputs, desc: str) -> torch.Tensor:
        return scorer.ratios(domain_features_of(model, inputs, batch_size=batch_size, desc=desc, quiet=quiet))

    inside = {image_set.name: ratios(model_inputs(model, vocab, image_set), f"held out: {image_set.annotations.name}")
              for image_set in held_out}
    if fresh:
        inside[f"fresh generated scenes (seed {FRESH_SEED})"] = ratios(
            picture_inputs(model, fresh_scenes(fresh)), "fresh scenes")
    outside_images = out_of_domain_images(per_kind=per_kind)
    outside_all = ratios(picture_inputs(model, [o.image for o in outside_images]), "out of domain")
    kinds = sorted({o.kind for o in outside_images}, key=[o.kind for o in outside_images].index)
    outside = {kind: outside_all[[i for i, o in enumerate(outside_images) if o.kind == kind]] for kind in kinds}
    every_inside = torch.cat(list(inside.values()))
    return {
        "in_domain": {name: {"images": len(r), "in_domain": round(float((r <= 1).double().mean()), 4),
                             "median_ratio": round(float(r.median()), 3), "auroc": round(auroc(r, outside_all), 4)}
                      for name, r in inside.items()},
        "out_of_domain": {kind: {"images": len(r), "flagged": round(float((r > 1).double().mean()), 4),
                                 "median_ratio": round(float(r.median()), 3), "auroc": round(auroc(every_inside, r), 4)}
                          for kind, r in outside.items()},
        "out_of_domain_flagged": round(float((outside_all > 1).double().mean()), 4),
        "out_of_domain_images": len(outside_all),
        "auroc": round(auroc(every_inside, outside_all), 4),
        "missed_out_of_domain": sorted(
            ({"name": o.name, "ratio": round(float(r), 3)} for o, r in zip(outside_images, outside_all) if r <= 1),
            key=lambda entry: entry["ratio"]),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = ["| images | count | in domain | median distance / threshold | AUROC vs the other side |",
             "| --- | --- | --- | --- | --- |"]
    for name, row in report["in_domain"].items():
        lines.append(f"| {name} | {row['images']} | {100 * row['in_domain']:.1f}% | {row['median_ratio']} | "
                     f"{row['auroc']:.4f} |")
    for kind, row in report["out_of_domain"].items():
        lines.append(f"| out of domain: {kind} | {row['images']} | {100 * (1 - row['flagged']):.1f}% | "
                     f"{row['median_ratio']} | {row['auroc']:.4f} |")
    missed = ", ".join(f"{m['name']} ({m['ratio']})" for m in report["missed_out_of_domain"]) or "none"
    blocks = ", ".join(f"{name} ({b['size']} features, threshold {b['threshold']})"
                       for name, b in report["blocks"].items())
    lines.append(f"\nblocks: {blocks}; out of domain flagged: "
                 f"{100 * report['out_of_domain_flagged']:.1f}% of {report['out_of_domain_images']}; "
                 f"AUROC (all in-domain vs all out-of-domain) {report['auroc']:.4f}; missed: {missed}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="AUROC of the domain score: held-out scenes vs other images.")
    parser.add_argument("--export-dir", default="build/export")
    parser.add_argument("--fresh-scenes", type=non_negative_int, default=300, help="freshly generated scenes to score (0: none)")
    parser.add_argument("--per-kind", type=positive_int, default=12, help="generated out-of-domain images of each kind")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    add_domain_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if not args.held_out and not args.fresh_scenes:  # before the export is read: nothing would be scored
        parser.error("--fresh-scenes 0 and no --held-out set leave no in-domain images to score: give "
                     "--held-out ANNOTATIONS [IMAGES], or --fresh-scenes N")
    started = time.perf_counter()
    model, vocab = load_exported_captioner(args.export_dir, args.device)
    if model.config.modality != "image":
        parser.error("the report scores still pictures: give an image model's export")
    if args.fit_annotations is None:  # the export's own statistics, scored on the --held-out sets given
        statistics = read_domain_statistics(args.export_dir, model.encoder.domain_layout)
        if statistics is None:
            parser.error(f"{args.export_dir} has no domain statistics: give --fit-annotations and --held-out to fit "
                         "them here (nothing is written), or export with them")
        held_out = held_out_sets(args, parser)
    else:
        sources = domain_sources(args, parser)
        statistics = fit_export_domain(model, vocab, sources)  # in memory only: the export is left as it is
        held_out = sources.held_out
    report = measure(model, vocab, statistics, held_out, fresh=args.fresh_scenes, per_kind=args.per_kind,
                     batch_size=args.domain_batch_size, quiet=args.quiet)
    report.update({"fitted_on": statistics.fitted_on,
                   "blocks": {g.block: {"size": g.size, "threshold": round(g.threshold, 3),
                                        "shrinkage": round(g.shrinkage, 5)} for g in statistics.gaussians},
                   "calibration": statistics.calibration, "seconds": round(time.perf_counter() - started, 1),
                   "cpu": cpu_model(), "command": " ".join(["python -m training.domain_report", *sys.argv[1:]])})
    print(markdown(report))
    print(json.dumps(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    with user_errors():
        main()
