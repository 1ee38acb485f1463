"""ResNet-34 image encoder: backbone without `fc`, then Linear + BatchNorm to `embed_size`."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet34

BACKBONE_FEATURES = 512  # ResNet-34's pooled feature size


class EncoderCNN(nn.Module):
    """Images -> one embedding per image.

    Weights are never downloaded here: the caller loads ImageNet (or any) weights
    into `backbone` with `load_backbone_state_dict`, so inference needs no network.

    Args:
        embed_size: size of the output embedding (the LSTM's first input).
        train_backbone: fine-tune the ResNet; when False its parameters are frozen
            and its BatchNorm layers stay in eval mode, so features are fixed and
            can be computed once.
    """

    def __init__(self, embed_size: int, train_backbone: bool = False) -> None:
        super().__init__()
        resnet = resnet34(weights=None)
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])  # drop fc, keep avgpool
        self.linear = nn.Linear(BACKBONE_FEATURES, embed_size)
        self.bn = nn.BatchNorm1d(embed_size)  # default momentum: short trainings need up-to-date statistics
        self.train_backbone = train_backbone
        self.backbone.requires_grad_(train_backbone)

    def load_backbone_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load torchvision `resnet34` weights (the `fc.*` entries are ignored)."""
        wanted = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        # nn.Sequential renames children to indices; map torchvision names onto them.
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]
        renamed = {}
        for key, value in wanted.items():
            head, _, rest = key.partition(".")
            renamed[f"{names.index(head)}.{rest}"] = value
        self.backbone.load_state_dict(renamed, strict=True)

    def train(self, mode: bool = True) -> "EncoderCNN":
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()  # frozen BatchNorm statistics too
        return self

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 512) pooled ResNet features."""
        if self.train_backbone:
            return self.backbone(images).flatten(1)
        with torch.no_grad():
            return self.backbone(images).flatten(1)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 512) backbone features -> (B, embed_size) image embeddings."""
        return self.bn(self.linear(features))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.backbone_features(images))
