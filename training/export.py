"""Write a trained captioner as an export folder: config.json, vocab.json, model.safetensors (+ domain.safetensors).

    python -m training.export --checkpoint build/train/checkpoint.pt --out build/export \
        --fit-annotations data/shapes/annotations/captions_train.json \
        --held-out data/shapes/annotations/captions_val.json --images data/shapes/images

Nothing is pickled: the handler rebuilds the model from these files alone.
The format itself lives in `model/export_format.py`, which the handler reads with.
With `--fit-annotations` and one or more `--held-out` sets, the export also holds
the domain statistics behind the replies' `domain_score`
(`training/domain_calibration.py`); without them it has none, and replies carry
`domain_score: null`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.config import CaptionerConfig
from model.export_format import export_captioner, write_domain_statistics
from model.modalities import build_captioner
from model.vocabulary import Vocabulary
from training.checkpoints import load_checkpoint
from training.cli import user_errors
from training.domain_calibration import DomainSources, add_domain_arguments, domain_sources, fit_export_domain, summary


def export_checkpoint(checkpoint_path: Path | str, out_dir: Path | str, domain: DomainSources | None = None) -> Path:
    """Export the model stored in a training checkpoint; with `domain`, its domain statistics too.

    The statistics are fitted before anything is written, so a fit that fails (a
    wrong caption file, an overlap between the sets) leaves no export without them.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    model = build_captioner(CaptionerConfig.from_dict(checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    vocab = Vocabulary.from_dict(checkpoint["vocab"])
    statistics = None
    if domain is not None:
        statistics = fit_export_domain(model.to(domain.device).eval(), vocab, domain)
    out_dir = export_captioner(model.cpu(), vocab, out_dir)
    if statistics is not None:
        write_domain_statistics(statistics, out_dir)
        print(summary(statistics))
    return out_dir


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a training checkpoint for serving.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt written by training.train")
    parser.add_argument("--out", required=True, help="export folder")
    add_domain_arguments(parser)
    return parser


if __name__ == "__main__":
    parser = get_args_parser()
    args = parser.parse_args()
    sources = domain_sources(args, parser)
    with user_errors():
        print(f"exported to {export_checkpoint(args.checkpoint, args.out, sources)}")
    if sources is None:
        print("no domain statistics (give --fit-annotations and --held-out for them): replies will carry "
              "domain_score null")
