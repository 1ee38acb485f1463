"""Checkpoint files: plain dicts of tensors and JSON-able values, read back without unpickling code.

`torch.load(..., weights_only=True)` refuses anything but tensors and
primitive containers, so a tampered checkpoint cannot run code on load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file


def load_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    """A state_dict from `.safetensors` or a `.pt/.pth` file (weights_only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def save_checkpoint(state: dict[str, Any], path: Path | str) -> None:
    """Write atomically: a crash mid-write never leaves a half checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: train first, or give the checkpoint.pt a training run wrote")
    return torch.load(path, map_location="cpu", weights_only=True)
