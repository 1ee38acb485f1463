"""Read an exported model folder back into a `Captioner` and its `Vocabulary`.

An export is three files and nothing else, so it can be inspected, diffed and
loaded without unpickling:

    config.json        CaptionerConfig.to_dict()
    vocab.json         Vocabulary.to_dict()
    model.safetensors  the state_dict

This module imports nothing from TorchServe, so evaluation and tests use the
same loader as the handler.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from model.captioner import Captioner
from model.modalities import build_captioner
from model.config import CaptionerConfig
from model.vocabulary import Vocabulary

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
WEIGHTS_FILE = "model.safetensors"
EXPORT_FILES = (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE)


class ExportError(RuntimeError):
    """The export folder is missing, incomplete or inconsistent."""


def load_exported_captioner(export_dir: Path | str, device: torch.device | str = "cpu") -> tuple[Captioner, Vocabulary]:
    """Rebuild the captioner from `export_dir` alone, in eval mode on `device`."""
    export_dir = Path(export_dir)
    missing = [name for name in EXPORT_FILES if not (export_dir / name).is_file()]
    if missing:
        raise ExportError(f"{export_dir} lacks {', '.join(missing)}; run `make model` (or training.export) first")
    config = CaptionerConfig.from_dict(json.loads((export_dir / CONFIG_FILE).read_text()))
    vocab = Vocabulary.from_dict(json.loads((export_dir / VOCAB_FILE).read_text()))
    if len(vocab) != config.vocab_size:
        raise ExportError(f"vocab.json has {len(vocab)} words but config.json says vocab_size={config.vocab_size}")
    try:
        state_dict = load_file(str(export_dir / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ExportError(f"{export_dir / WEIGHTS_FILE} is not a valid safetensors file: {error}") from error
    model = build_captioner(config)  # image or video, as config.json says
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval(), vocab
