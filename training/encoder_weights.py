"""Where the backbone's starting weights come from: ImageNet, a file, or nothing.

Kept outside `model/` so the network never downloads anything. ImageNet weights
of the chosen backbone (`model.backbones.BACKBONES`) are read from torchvision's
cache when present; this module never fetches them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.backbones import get_backbone_spec
from training.checkpoints import load_tensors


def imagenet_cache_path(backbone: str = "resnet34") -> Path:
    """Where torchvision keeps the backbone's ImageNet weights once downloaded."""
    url = get_backbone_spec(backbone).imagenet_weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_encoder_weights(choice: str, backbone: str = "resnet34") -> dict[str, torch.Tensor] | None:
    """`imagenet`, `none`, or a path to a torchvision state_dict of `backbone` (.pth or .safetensors)."""
    if choice == "none":
        return None
    if choice == "imagenet":
        path = imagenet_cache_path(backbone)
        if not path.is_file():
            weights = get_backbone_spec(backbone).imagenet_weights
            raise FileNotFoundError(
                f"ImageNet weights for {backbone} are not in torchvision's cache ({path}). "
                "On a machine with internet run: python -c \"import torchvision; "
                f"torchvision.models.{backbone}(weights='{weights.name}')\" and copy the file there "
                f"(or set TORCH_HOME), pass --encoder-weights PATH to a {backbone} state_dict, "
                "or train from scratch with --encoder-weights none --train-backbone."
            )
        return load_tensors(path)
    path = Path(choice)
    if not path.is_file():
        raise FileNotFoundError(f"--encoder-weights: no file at {path}; expected imagenet, none or a path")
    return load_tensors(path)
