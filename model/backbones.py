"""The image backbones a captioner can be built on, by name (as torchvision's `get_model`).

A backbone is a torchvision ResNet without its `avgpool` and `fc`: it maps images
to their last feature map. `CaptionerConfig.backbone` names one; the encoder
pools the map (to one vector, or to a grid for soft attention). Weights are never
downloaded here: each entry names the torchvision weights whose cached file
`training/encoder_weights.py` loads for `--encoder-weights imagenet`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn
from torchvision import models

# torchvision's ResNet children in order; the trunk keeps them up to layer4.
TRUNK_LAYERS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone: torchvision's constructor, its feature channels, its ImageNet weights."""

    build: Callable[..., models.ResNet]
    channels: int  # channels of the last feature map (the pooled feature size)
    imagenet_weights: models.WeightsEnum
    middle_channels: int  # channels of layer3's map, the one before the last (for the domain features)


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(models.resnet18, 512, models.ResNet18_Weights.IMAGENET1K_V1, 256),
    "resnet34": BackboneSpec(models.resnet34, 512, models.ResNet34_Weights.IMAGENET1K_V1, 256),
    "resnet50": BackboneSpec(models.resnet50, 2048, models.ResNet50_Weights.IMAGENET1K_V1, 1024),
    "resnet101": BackboneSpec(models.resnet101, 2048, models.ResNet101_Weights.IMAGENET1K_V1, 1024),
}


def get_backbone_spec(name: str) -> BackboneSpec:
    """The registry entry for `name`, or a ValueError listing the known names."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_trunk(name: str) -> nn.Sequential:
    """The named ResNet, randomly initialised, from `conv1` to `layer4`: (B, 3, H, W) -> (B, C, H/32, W/32).

    Children are numbered as before (0 = conv1 ... 7 = layer4), so exports made when
    the trunk also held the (weightless) avgpool load unchanged.
    """
    resnet = get_backbone_spec(name).build(weights=None)
    return nn.Sequential(*(getattr(resnet, layer) for layer in TRUNK_LAYERS))


def trunk_state_dict(torchvision_state: dict) -> dict:
    """A torchvision ResNet state_dict renamed onto `build_trunk`'s numbered children (`fc.*` dropped)."""
    renamed = {}
    for key, value in torchvision_state.items():
        head, _, rest = key.partition(".")
        if head == "fc":
            continue
        if head not in TRUNK_LAYERS:
            raise ValueError(f"{key!r} is not a torchvision ResNet weight; pass a torchvision resnet state_dict")
        renamed[f"{TRUNK_LAYERS.index(head)}.{rest}"] = value
    return renamed
