"""Where the ResNet-34 backbone's starting weights come from: ImageNet, a file, or nothing.

Kept outside `model/` so the network never downloads anything. ImageNet weights
are read from torchvision's cache when present; this module never fetches them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models import ResNet34_Weights

from training.checkpoints import load_tensors


def imagenet_cache_path() -> Path:
    """Where torchvision keeps ResNet-34's ImageNet weights once downloaded."""
    url = ResNet34_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_encoder_weights(choice: str) -> dict[str, torch.Tensor] | None:
    """`imagenet`, `none`, or a path to a torchvision resnet34 state_dict (.pth or .safetensors)."""
    if choice == "none":
        return None
    if choice == "imagenet":
        path = imagenet_cache_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"ImageNet weights for ResNet-34 are not in torchvision's cache ({path}). "
                "On a machine with internet run: python -c \"import torchvision; "
                "torchvision.models.resnet34(weights='IMAGENET1K_V1')\" and copy the file there "
                "(or set TORCH_HOME), pass --encoder-weights PATH to a resnet34 state_dict, "
                "or train from scratch with --encoder-weights none --train-backbone."
            )
        return load_tensors(path)
    path = Path(choice)
    if not path.is_file():
        raise FileNotFoundError(f"--encoder-weights: no file at {path}; expected imagenet, none or a path")
    return load_tensors(path)
