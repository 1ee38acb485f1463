"""The export folder: the contract between training, which writes it, and serving, which reads it.

An export is three files and nothing else, so it can be inspected, diffed and
loaded without unpickling:

    config.json        CaptionerConfig.to_dict() (backbone, decoder and grid included)
    vocab.json         Vocabulary.to_dict()
    model.safetensors  the state_dict

Training (`training/export.py`), the handler, evaluation, the gallery and the
tools all write and read it through this module, so neither side imports the
other. It is the one place in `model/` that touches files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.captioner import Captioner
from model.config import CaptionerConfig
from model.modalities import build_captioner
from model.vocabulary import Vocabulary

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
WEIGHTS_FILE = "model.safetensors"
EXPORT_FILES = (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE)
FORMAT = "captioner-v1"  # safetensors metadata; config.json's keys say which network it is


class ExportError(RuntimeError):
    """The export folder is missing, incomplete or inconsistent."""


def export_captioner(model: Captioner, vocab: Vocabulary, out_dir: Path | str) -> Path:
    """Write the three export files into `out_dir` (created if needed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    (out_dir / VOCAB_FILE).write_text(json.dumps(vocab.to_dict()) + "\n")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": FORMAT})
    return out_dir


def read_config(export_dir: Path | str) -> CaptionerConfig:
    """The export's config; an unknown key, backbone or decoder is an `ExportError` saying what is known."""
    path = Path(export_dir) / CONFIG_FILE
    try:
        return CaptionerConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise ExportError(f"{path}: {error}") from error


def load_exported_captioner(export_dir: Path | str, device: torch.device | str = "cpu") -> tuple[Captioner, Vocabulary]:
    """Rebuild the captioner from `export_dir` alone, in eval mode on `device`."""
    export_dir = Path(export_dir)
    missing = [name for name in EXPORT_FILES if not (export_dir / name).is_file()]
    if missing:
        raise ExportError(f"{export_dir} lacks {', '.join(missing)}; run `make model` (or training.export) first")
    config = read_config(export_dir)
    vocab = Vocabulary.from_dict(json.loads((export_dir / VOCAB_FILE).read_text()))
    if len(vocab) != config.vocab_size:
        raise ExportError(f"vocab.json has {len(vocab)} words but config.json says vocab_size={config.vocab_size}")
    multilingual = list(config.languages) if len(config.languages) > 1 else []
    if vocab.languages != multilingual:
        raise ExportError(f"config.json lists languages {list(config.languages)} but vocab.json has start tokens "
                          f"for {vocab.languages or 'none'}")
    try:
        state_dict = load_file(str(export_dir / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ExportError(f"{export_dir / WEIGHTS_FILE} is not a valid safetensors file: {error}") from error
    model = build_captioner(config)  # image or video, as config.json says
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ExportError(
            f"{export_dir / WEIGHTS_FILE} does not fit config.json (backbone {config.backbone}, "
            f"decoder {config.decoder}): {str(error)[:400]}"
        ) from error
    return model.to(device).eval(), vocab
