"""Fit the domain statistics of an export on its training images and calibrate the threshold on held-out ones.

    python -m training.domain_calibration --export-dir build/export \
        --fit-annotations data/shapes/annotations/captions_train.json \
        --held-out data/shapes/annotations/captions_val.json --images data/shapes/images

`python -m training.export` takes the same options and does this right after
writing the model; this entry point adds (or refits) `domain.safetensors` in an
existing export. Several held-out sets are several `--held-out ANNOTATIONS
[IMAGES]` options (IMAGES defaults to `--images`).

The features are the ones serving scores: `Captioner.encode_with_domain`, the
exported model in eval mode, fp32. Each block's mean and precision come from
the fitting images (`model.domain.fit_domain_statistics`); the blocks'
thresholds leave at least 99% of every held-out set in domain by every block at
once, with a safety factor's room (`model.domain.calibrate`), computed with the
statistics as stored (fp32), so the held-out shares reported here are what the
server would say.
Held-out images must not be fitting images: a fitted image lies closer to the
mean than a new one, and a threshold set on them would be too tight.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from model.captioner import Captioner
from model.domain import DEFAULT_QUANTILE, DEFAULT_SAFETY, DomainStatistics, calibrate, fit_domain_statistics
from model.export_format import load_exported_captioner, write_domain_statistics
from model.transforms import eval_transform
from model.vocabulary import Vocabulary
from training.cli import positive_int, torch_device, user_errors
from training.coco_data import CocoCaptions, SharedImages, caption_set, load_captions


@dataclass(frozen=True)
class ImageSet:
    """A COCO-format caption file and the folder of its images (or clips)."""

    annotations: Path
    images: Path

    @property
    def name(self) -> str:
        return str(self.annotations)


@dataclass(frozen=True)
class DomainSources:
    """Where the statistics are fitted and the threshold calibrated, and how."""

    fit: ImageSet
    held_out: tuple[ImageSet, ...]
    quantile: float = DEFAULT_QUANTILE
    safety: float = DEFAULT_SAFETY
    max_fit_images: int | None = None
    batch_size: int = 64
    device: str = "cpu"
    quiet: bool = False


class ModelInputs:
    """A caption set's pictures as model inputs, (3, S, S) or a clip's (N, 3, S, S), read when asked for."""

    def __init__(self, dataset: CocoCaptions, limit: int | None = None) -> None:
        self.dataset = dataset
        self.image_ids = dataset.image_ids[:limit] if limit else dataset.image_ids

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.dataset.transform(self.dataset.load_image(self.image_ids[index]))

    def files(self) -> set[Path]:
        folder, images = self.dataset.image_dir, self.dataset.coco.imgs
        return {(folder / images[i]["file_name"]).resolve() for i in self.image_ids}


def model_inputs(model: Captioner, vocab: Vocabulary, image_set: ImageSet, limit: int | None = None) -> ModelInputs:
    """`image_set` read the way evaluation reads it, with the model's own transform (and frame sampling)."""
    config = model.config
    if not image_set.images.is_dir():
        raise FileNotFoundError(f"no image folder at {image_set.images} (for {image_set.annotations})")
    transform = eval_transform(image_size=config.image_size, mean=config.mean, std=config.std)
    dataset = caption_set(load_captions(str(image_set.annotations)), image_set.images, vocab, transform,
                          num_frames=config.num_frames)
    return ModelInputs(dataset, limit)


@torch.inference_mode()
def domain_features_of(model: Captioner, inputs: Sequence[torch.Tensor], *, device: torch.device | str = "cpu",
                       batch_size: int = 64, desc: str = "domain features", quiet: bool = False) -> torch.Tensor:
    """(N, D) fp32 domain features of `inputs` (model inputs), in batches, with a progress bar."""
    model.eval()
    device = torch.device(device)
    rows: list[torch.Tensor] = []
    with tqdm(total=len(inputs), desc=desc, unit="img", disable=quiet) as progress:
        for start in range(0, len(inputs), batch_size):
            batch = torch.stack([inputs[i] for i in range(start, min(start + batch_size, len(inputs)))])
            _, features = model.encode_with_domain(batch.to(device))  # (B, D) fp32
            rows.append(features.cpu())
            progress.update(len(batch))
    if not rows:
        raise ValueError(f"{desc}: no images")
    return torch.cat(rows)


def fit_and_calibrate(model: Captioner, fit_inputs: Sequence[torch.Tensor],
                      held_out: dict[str, Sequence[torch.Tensor]], *, quantile: float = DEFAULT_QUANTILE,
                      safety: float = DEFAULT_SAFETY, device: torch.device | str = "cpu", batch_size: int = 64,
                      quiet: bool = False) -> DomainStatistics:
    """Statistics of `fit_inputs`' features, thresholds calibrated on each held-out set's (name -> inputs)."""
    if not held_out:
        raise ValueError("calibrating the threshold needs at least one held-out set")
    fitted = fit_domain_statistics(domain_features_of(model, fit_inputs, device=device, batch_size=batch_size,
                                                      desc="domain features (fit)", quiet=quiet),
                                   model.encoder.domain_layout)
    features = {
        name: domain_features_of(model, inputs, device=device, batch_size=batch_size,
                                 desc=f"domain features (held out: {Path(name).name})", quiet=quiet)
        for name, inputs in held_out.items()
    }
    # The stored fp32 statistics, as the server scores.
    return calibrate(fitted, features, quantile=quantile, safety=safety)


def fit_export_domain(model: Captioner, vocab: Vocabulary, sources: DomainSources) -> DomainStatistics:
    """Read the sources' images and fit and calibrate the model's domain statistics."""
    fit = model_inputs(model, vocab, sources.fit, sources.max_fit_images)
    held_out = {image_set.name: model_inputs(model, vocab, image_set) for image_set in sources.held_out}
    for name, inputs in held_out.items():
        shared = fit.files() & inputs.files()
        if shared:
            raise SharedImages(f"{len(shared)} held-out images of {name} are also fitting images (e.g. "
                             f"{sorted(shared)[0]}); calibrate on images the statistics were not fitted on")
    return fit_and_calibrate(model, fit, held_out, quantile=sources.quantile, safety=sources.safety,
                             device=sources.device, batch_size=sources.batch_size, quiet=sources.quiet)


def summary(statistics: DomainStatistics) -> str:
    """One line for the console: what was fitted, the thresholds, each held-out set's share in domain."""
    calibration = statistics.calibration
    blocks = ", ".join(f"{g.block} ({g.size} features, shrinkage {g.shrinkage:.4f}, threshold {g.threshold:.3f})"
                       for g in statistics.gaussians)
    sets = "; ".join(f"{s['name']}: {100 * s['in_domain']:.1f}% of {s['images']} in domain"
                     for s in calibration.get("held_out", []))
    return (f"domain statistics: {statistics.fitted_on} images; {blocks}; thresholds at {calibration.get('safety')} x "
            f"the {calibration.get('quantile')} quantile of held-out distances ({sets})")


# --- command line, shared with training.export ------------------------------------------------


def add_domain_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "domain statistics", "fit the statistics behind the replies' domain_score on training images and calibrate "
        "its threshold on held-out images (README \"Domain score\"); without them the export has none")
    group.add_argument("--fit-annotations", type=Path, default=None,
                       help="COCO caption file of the training images to fit the statistics on")
    group.add_argument("--held-out", nargs="+", action="append", default=[], metavar="ANNOTATIONS [IMAGES]",
                       help="a held-out caption file (and its image folder, default --images) to calibrate the "
                            "threshold on; repeat for several sets")
    group.add_argument("--images", type=Path, default=None,
                       help="image folder of --fit-annotations, and of held-out sets given without one")
    group.add_argument("--domain-quantile", type=float, default=DEFAULT_QUANTILE,
                       help="quantile of each held-out set's distances the threshold is set from")
    group.add_argument("--domain-safety", type=float, default=DEFAULT_SAFETY,
                       help="the threshold is this times the largest held-out quantile (at least 1)")
    group.add_argument("--fit-max-images", type=positive_int, default=None,
                       help="fit on at most this many training images (default: all)")
    group.add_argument("--domain-batch-size", type=positive_int, default=64)
    group.add_argument("--device", type=torch_device, default="cpu", help="where features are computed (cpu, cuda)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def _image_set(args: argparse.Namespace, parser: argparse.ArgumentParser, annotations: str | Path,
               images: str | Path | None, option: str) -> ImageSet:
    if not Path(annotations).is_file():
        parser.error(f"{option}: no caption file at {annotations}; run `make data` for the generated set")
    folder = images if images is not None else args.images
    if folder is None:
        parser.error(f"{option} {annotations}: which folder holds its images? give --images DIR "
                     f"(or, for a held-out set, --held-out {annotations} DIR)")
    if not Path(folder).is_dir():
        parser.error(f"{option} {annotations}: no image folder at {folder}")
    return ImageSet(Path(annotations), Path(folder))


def held_out_sets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[ImageSet, ...]:
    """The `--held-out ANNOTATIONS [IMAGES]` sets, each checked to exist."""
    sets = []
    for values in args.held_out:
        if len(values) > 2:
            parser.error(f"--held-out takes ANNOTATIONS and optionally IMAGES, got {len(values)} values: {values}")
        sets.append(_image_set(args, parser, values[0], values[1] if len(values) == 2 else None, "--held-out"))
    return tuple(sets)


def domain_sources(args: argparse.Namespace, parser: argparse.ArgumentParser) -> DomainSources | None:
    """The sources the options name, None when none are given; inconsistent options are a parser error."""
    if args.fit_annotations is None and not args.held_out:
        return None
    if args.fit_annotations is None:
        parser.error("--held-out calibrates statistics fitted with --fit-annotations: give the training "
                     "captions too (e.g. --fit-annotations data/shapes/annotations/captions_train.json)")
    if not args.held_out:
        parser.error("the threshold is calibrated on held-out images: give --held-out ANNOTATIONS [IMAGES] "
                     "(e.g. the validation captions), images the statistics are not fitted on")
    if not 0 < args.domain_quantile <= 1 or args.domain_safety < 1:
        parser.error(f"--domain-quantile must be in (0, 1] and --domain-safety at least 1, got "
                     f"{args.domain_quantile} and {args.domain_safety}")
    return DomainSources(_image_set(args, parser, args.fit_annotations, None, "--fit-annotations"),
                         held_out_sets(args, parser), quantile=args.domain_quantile, safety=args.domain_safety,
                         max_fit_images=args.fit_max_images, batch_size=args.domain_batch_size,
                         device=args.device, quiet=args.quiet)


def calibrate_export(export_dir: Path | str, sources: DomainSources) -> DomainStatistics:
    """Fit, calibrate and write `domain.safetensors` into an existing export."""
    model, vocab = load_exported_captioner(export_dir, sources.device)
    statistics = fit_export_domain(model, vocab, sources)
    write_domain_statistics(statistics, export_dir)
    return statistics


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Add domain statistics (domain.safetensors) to an export.")
    parser.add_argument("--export-dir", default="build/export")
    add_domain_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> DomainStatistics:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    sources = domain_sources(args, parser)
    if sources is None:
        parser.error("give --fit-annotations and --held-out (see --help)")
    statistics = calibrate_export(args.export_dir, sources)
    print(summary(statistics))
    print(json.dumps({"export_dir": str(args.export_dir), **statistics.calibration}))
    return statistics


if __name__ == "__main__":
    with user_errors():
        main()
