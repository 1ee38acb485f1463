"""Write a trained captioner as an export folder: config.json, vocab.json, model.safetensors.

    python -m training.export --checkpoint build/train/checkpoint.pt --out build/export

Nothing is pickled: the handler rebuilds the model from these three files alone.
The format itself lives in `model/export_format.py`, which the handler reads with.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.captioner import Captioner
from model.modalities import build_captioner
from model.config import CaptionerConfig
from model.export_format import export_captioner
from model.vocabulary import Vocabulary
from training.checkpoints import load_checkpoint


def export_checkpoint(checkpoint_path: Path | str, out_dir: Path | str) -> Path:
    """Export the model stored in a training checkpoint."""
    checkpoint = load_checkpoint(checkpoint_path)
    model = build_captioner(CaptionerConfig.from_dict(checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    return export_captioner(model, Vocabulary.from_dict(checkpoint["vocab"]), out_dir)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a training checkpoint for serving.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt written by training.train")
    parser.add_argument("--out", required=True, help="export folder")
    return parser


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    print(f"exported to {export_checkpoint(args.checkpoint, args.out)}")
