"""Image encoder: a ResNet trunk (`model/backbones.py`), pooled, then Linear + BatchNorm to `embed_size`.

Pooled to one vector per image for the show-and-tell decoder, or to a G x G grid
of vectors (one per image region) for the soft-attention decoder; both go
through the same projection, applied to every vector.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F

from model.backbones import build_trunk, get_backbone_spec, trunk_state_dict
from model.domain_features import domain_features, domain_layout


class EncoderCNN(nn.Module):
    """Images -> one embedding per image (B, E), or per grid cell (B, G*G, E).

    Weights are never downloaded here: the caller loads ImageNet (or any) weights
    into `backbone` with `load_backbone_state_dict`, so inference needs no network.

    Args:
        embed_size: size of the output embeddings.
        backbone: a name in `model.backbones.BACKBONES`.
        grid_size: None to pool the last feature map to one vector; G to pool it
            to G x G cells (adaptive average pooling) and keep them.
        train_backbone: fine-tune the ResNet; when False its parameters are frozen
            and its BatchNorm layers stay in eval mode, so features are fixed and
            can be computed once.
    """

    def __init__(
        self, embed_size: int, backbone: str = "resnet34", grid_size: int | None = None, train_backbone: bool = False
    ) -> None:
        super().__init__()
        self.backbone = build_trunk(backbone)
        spec = get_backbone_spec(backbone)
        self.feature_size = spec.channels
        self.domain_layout = domain_layout(spec.channels, spec.middle_channels)  # block -> size
        self.grid_size = grid_size
        self.linear = nn.Linear(self.feature_size, embed_size)
        self.bn = nn.BatchNorm1d(embed_size)  # default momentum: short trainings need up-to-date statistics
        self.train_backbone = train_backbone
        self.backbone.requires_grad_(train_backbone)

    def load_backbone_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a torchvision ResNet state_dict of this backbone (the `fc.*` entries are ignored)."""
        self.backbone.load_state_dict(trunk_state_dict(state_dict), strict=True)

    def train(self, mode: bool = True) -> "EncoderCNN":
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()  # frozen BatchNorm statistics too
        return self

    def _pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C) pooled, or (B, G*G, C) grid cells in row-major order."""
        if self.grid_size is None:
            return F.adaptive_avg_pool2d(feature_map, 1).flatten(1)  # (B, C)
        grid = F.adaptive_avg_pool2d(feature_map, self.grid_size)  # (B, C, G, G)
        return grid.flatten(2).transpose(1, 2)  # (B, G*G, C)

    def _features_and_domain(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *head, last = self.backbone  # conv1 ... layer3, then layer4
        middle_map = images
        for module in head:
            middle_map = module(middle_map)  # (B, C3, h', w')
        last_map = last(middle_map)  # (B, C4, h, w)
        features = self._pool(last_map)
        return features, domain_features(features, last_map, middle_map)

    def _backbone_grad(self) -> contextlib.AbstractContextManager:
        """Gradients through the backbone only when it is fine-tuned."""
        return contextlib.nullcontext() if self.train_backbone else torch.no_grad()

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C) pooled features, or (B, G*G, C) with a grid."""
        with self._backbone_grad():
            return self._pool(self.backbone(images))

    def features_and_domain(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`backbone_features` and, from the same pass, each picture's (B, D) fp32 domain features.

        D is the sum of `domain_layout`'s sizes (`model/domain_features.py`).
        """
        with self._backbone_grad():
            return self._features_and_domain(images)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C) or (B, P, C) backbone features -> (B, E) or (B, P, E) embeddings (BatchNorm over every vector)."""
        flat = features.reshape(-1, features.shape[-1])  # (B*P, C)
        return self.bn(self.linear(flat)).reshape(*features.shape[:-1], -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.backbone_features(images))


def image_summary(embeddings: torch.Tensor) -> torch.Tensor:
    """One (B, E) vector per image: the embedding itself, or the mean over the grid's cells (B, P, E)."""
    return embeddings.mean(dim=1) if embeddings.dim() == 3 else embeddings
