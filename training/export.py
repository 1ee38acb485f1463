"""Write a trained captioner as an export folder: config.json, vocab.json, model.safetensors.

    python -m training.export --checkpoint build/train/checkpoint.pt --out build/export

Nothing is pickled: the handler (and `handler.model_loader`) rebuilds the model
from these three files alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import save_file

from handler.model_loader import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE
from model.captioner import Captioner
from model.modalities import build_captioner
from model.config import CaptionerConfig
from model.vocabulary import Vocabulary
from training.checkpoints import load_checkpoint


def export_captioner(model: Captioner, vocab: Vocabulary, out_dir: Path | str) -> Path:
    """Write the three export files into `out_dir` (created if needed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    (out_dir / VOCAB_FILE).write_text(json.dumps(vocab.to_dict()) + "\n")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "captioner-v1"})
    return out_dir


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
