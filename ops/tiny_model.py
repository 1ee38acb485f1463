"""A tiny random captioner over the shapes vocabulary, for load runs, fuzzing and tests.

Its captions are meaningless, but it goes through every stage a trained model
does (export files, archive, handler) in a fraction of the time, so runs that
test the service rather than the model need no training first.

    python -m ops.tiny_model --out build/tiny-export
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model.backbones import BACKBONES
from model.captioner import Captioner
from model.decoders import DECODERS
from model.modalities import build_captioner
from model.config import CaptionerConfig
from model.vocabulary import Vocabulary
from model.export_format import export_captioner

SHAPE_WORDS = (
    "a small large red green blue yellow purple circle square triangle and , there is picture of "
    "on plain background from left to right in the middle image"
).split()


TINY_VIDEO = {"modality": "video", "num_frames": 4, "temporal": "concat"}


def tiny_config(vocab_size: int, **overrides) -> CaptionerConfig:
    values = dict(vocab_size=vocab_size, embed_size=16, hidden_size=32, image_size=32, max_length=12)
    if overrides.get("decoder") == "soft_attention":
        # A 2 x 2 grid the backbone really has (64 px / 32), so the cells differ and the maps mean something.
        values.update(image_size=64, grid_size=2)
    values.update(overrides)
    return CaptionerConfig(**values)


def tiny_captioner(seed: int = 0, **overrides) -> tuple[Captioner, Vocabulary]:
    torch.manual_seed(seed)
    vocab = Vocabulary(SHAPE_WORDS)
    return build_captioner(tiny_config(len(vocab), **overrides)).eval(), vocab


def tiny_video_captioner(seed: int = 0, **overrides) -> tuple[Captioner, Vocabulary]:
    """A tiny random video captioner: 4 frames of 32 px, frames concatenated in order."""
    return tiny_captioner(seed, **{**TINY_VIDEO, **overrides})


def write_tiny_export(
    directory: Path, seed: int = 0, *, backbone: str = "resnet34", decoder: str = "show_tell", **overrides
) -> Path:
    """A tiny random model of the given backbone and decoder (`model.backbones`, `model.decoders`), exported."""
    model, vocab = tiny_captioner(seed, backbone=backbone, decoder=decoder, **overrides)
    return export_captioner(model, vocab, directory)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write a tiny random captioner as an export folder.")
    parser.add_argument("--out", default="build/tiny-export")
    # Seed 2's model says words that depend a little on the image; seed 0's ends every caption at
    # once, and an empty caption would make the load runs' "each image its own caption" check vacuous.
    parser.add_argument("--seed", type=int, default=2)
    # The registries' names, so a misspelt one is refused with the list instead of a KeyError traceback.
    parser.add_argument("--backbone", default="resnet34", choices=sorted(BACKBONES))
    parser.add_argument("--decoder", default="show_tell", choices=sorted(DECODERS))
    args = parser.parse_args()
    out = write_tiny_export(Path(args.out), args.seed, backbone=args.backbone, decoder=args.decoder)
    print(f"tiny random model exported to {out}")
