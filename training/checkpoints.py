"""Checkpoint files: plain dicts of tensors and JSON-able values, read back without unpickling code.

`torch.load(..., weights_only=True)` refuses anything but tensors and
primitive containers, so a tampered checkpoint cannot run code on load.
"""

from __future__ import annotations

import os
import random
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


def random_states(loader_generator: torch.Generator) -> dict[str, Any]:
    """Every random state an epoch draws from: the loader's order, torch's (dropout), Python's (caption picks).

    Saved with each checkpoint, so that a run resumed from it draws the same batches,
    captions and dropout masks as the uninterrupted run would have (with `--workers 0`;
    loader processes seed themselves when they start, so with them the order of batches
    is restored and the captions each process picks are not).
    """
    states: dict[str, Any] = {
        "loader": loader_generator.get_state(),
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict[str, Any] | None, loader_generator: torch.Generator) -> bool:
    """Put back what `random_states` saved; False for a checkpoint written before they were saved."""
    if not states:
        return False
    loader_generator.set_state(states["loader"])
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    return True
