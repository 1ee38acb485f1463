"""Checkpoint files: plain dicts of tensors and JSON-able values, read back without unpickling code.

`torch.load(..., weights_only=True)` refuses anything but tensors and
primitive containers, so a tampered checkpoint cannot run code on load.
A file that cannot be read that way (damaged, cut short, another program's
pickle) is a `CheckpointError` saying so, never advice to load it unsafely.
"""

from __future__ import annotations

import os
import pickle  # for its UnpicklingError only: checkpoints are read with weights_only, never unpickled
import random
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

CHECKPOINT_FILE = "checkpoint.pt"  # what a training run writes in its --output-dir
TRAINING_KEYS = ("model", "config", "vocab")  # what every training checkpoint holds, whatever its age

# What torch.load and safetensors raise on a file they cannot read: an unknown format or a
# disallowed object (UnpicklingError), an empty file (EOFError), a damaged zip archive (RuntimeError).
_UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, SafetensorError)


class CheckpointError(ValueError):
    """A file given as a checkpoint or as weights that is not one this project can read.

    torch's own message for such a file is pages long and suggests loading it with
    `weights_only=False`, which would run whatever code the file holds.
    """


def _why_unreadable(error: Exception) -> str:
    """What a reading error says about the file, in words a user can act on."""
    if isinstance(error, EOFError):
        return "the file is empty"
    if isinstance(error, RuntimeError):
        return "it is cut short or damaged (not a whole PyTorch archive)"
    if isinstance(error, SafetensorError):
        return f"it is not a safetensors file ({error})"
    return ("it is not a PyTorch file of tensors and plain values (damaged, or pickled objects, which are not "
            "loaded because loading them could run code)")


def _read(path: Path, what: str) -> Any:
    """The file's contents, or a `CheckpointError` naming `what` it should have been."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except _UNREADABLE as error:
        raise CheckpointError(f"{path} is not {what}: {_why_unreadable(error)}") from None


def _is_training_checkpoint(contents: Any) -> bool:
    return isinstance(contents, dict) and all(key in contents for key in TRAINING_KEYS)


def _kind(contents: Any) -> str:
    """A few words on what a file held, for a message saying it is the wrong kind."""
    if isinstance(contents, dict):
        return f"a dict with keys {sorted(map(str, contents))[:5]}"
    return f"a {type(contents).__name__}"


def load_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    """A state_dict from `.safetensors` or a `.pt/.pth` file (weights_only)."""
    path = Path(path)
    tensors = _read(path, "a weights file (a state_dict in .pth or .safetensors)")
    if _is_training_checkpoint(tensors):
        raise CheckpointError(f"{path} is a training checkpoint, not a state_dict of weights; start a run from "
                              "its weights with --init-from")
    if not isinstance(tensors, dict) or not all(isinstance(value, torch.Tensor) for value in tensors.values()):
        raise CheckpointError(f"{path} is not a state_dict: it holds {_kind(tensors)}, not a dict of tensors")
    return tensors


def save_checkpoint(state: dict[str, Any], path: Path | str) -> None:
    """Write atomically: a crash mid-write never leaves a half checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """A checkpoint `save_checkpoint` wrote: the file, or a run's output folder holding one.

    Checked for the keys every training checkpoint has, so a bare state_dict is
    named as one here rather than as a KeyError wherever a key is first read.
    """
    path = Path(path)
    if path.is_dir() and (path / CHECKPOINT_FILE).is_file():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: train first, or give the checkpoint.pt a training run wrote")
    contents = _read(path, "a checkpoint this project wrote")
    if _is_training_checkpoint(contents):
        return contents
    if isinstance(contents, dict) and contents and all(isinstance(v, torch.Tensor) for v in contents.values()):
        raise CheckpointError(f"{path} is a state_dict (weights alone), not a training checkpoint: it has no "
                              f"config or vocabulary; give the {CHECKPOINT_FILE} a training run wrote")
    raise CheckpointError(f"{path} is not a training checkpoint: it holds {_kind(contents)}, not the entries "
                          f"{', '.join(TRAINING_KEYS)}; give the {CHECKPOINT_FILE} a training run wrote")


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
