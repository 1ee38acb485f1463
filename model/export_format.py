"""The export folder: the contract between training, which writes it, and serving, which reads it.

An export is three files, and one optional, so it can be inspected, diffed and
loaded without unpickling:

    config.json         CaptionerConfig.to_dict() (backbone, decoder and grid included)
    vocab.json          Vocabulary.to_dict()
    model.safetensors   the state_dict
    domain.safetensors  optional: the training images' feature statistics and threshold
                        for the domain score (`model/domain.py`); an export without it
                        loads, and its replies carry `domain_score: null`

Training (`training/export.py`), the handler, evaluation, the gallery and the
tools all write and read it through this module, so neither side imports the
other. It is the one place in `model/` that touches files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from model.captioner import Captioner
from model.config import CaptionerConfig
from model.domain import DomainStatistics, layout_mismatch
from model.modalities import build_captioner
from model.vocabulary import Vocabulary

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
WEIGHTS_FILE = "model.safetensors"
EXPORT_FILES = (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE)
DOMAIN_FILE = "domain.safetensors"
OPTIONAL_FILES = (DOMAIN_FILE,)  # copied with the export (archive, staging) when present
FORMAT = "captioner-v1"  # safetensors metadata; config.json's keys say which network it is


class ExportError(RuntimeError):
    """The export folder is missing, incomplete or inconsistent."""


def export_captioner(model: Captioner, vocab: Vocabulary, out_dir: Path | str) -> Path:
    """Write the three export files into `out_dir` (created if needed).

    Optional files of an earlier export there (its domain statistics) are removed:
    they describe another model's features, and would be served with this one.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OPTIONAL_FILES:
        (out_dir / name).unlink(missing_ok=True)
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
            f"decoder {config.decoder}): {' '.join(str(error).split())[:400]}"
        ) from error
    return model.to(device).eval(), vocab


def export_file_names(export_dir: Path | str) -> list[str]:
    """The export's files to copy: the three it must have, and the optional ones it has."""
    export_dir = Path(export_dir)
    return [*EXPORT_FILES, *(name for name in OPTIONAL_FILES if (export_dir / name).is_file())]


def write_domain_statistics(statistics: DomainStatistics, export_dir: Path | str) -> Path:
    """Write `domain.safetensors` into the export folder (tensors and string metadata; nothing pickled)."""
    path = Path(export_dir) / DOMAIN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, metadata = statistics.to_tensors()
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_domain_statistics(export_dir: Path | str, layout: Mapping[str, int] | None = None) -> DomainStatistics | None:
    """The export's domain statistics, or None when it has no `domain.safetensors` (an older export).

    `layout`: the model's domain feature blocks and their sizes (`encoder.domain_layout`);
    statistics whose blocks do not fit it (fitted on another backbone) are an
    `ExportError`, as is a damaged file. Files of the older one-block format load as
    that block (the last map's mean), and score as they did.
    """
    path = Path(export_dir) / DOMAIN_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata()
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        statistics = DomainStatistics.from_tensors(tensors, metadata)
    except (SafetensorError, OSError, ValueError) as error:
        raise ExportError(f"{path} is not valid domain statistics: {error}; export again with --fit-annotations "
                          "and --held-out, or delete it to serve without domain scores") from error
    mismatch = None if layout is None else layout_mismatch(statistics, layout)
    if mismatch:
        raise ExportError(f"{path} does not fit this model: {mismatch}; fit them again on this model "
                          "(python -m training.domain_calibration)")
    return statistics
