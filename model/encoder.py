"""Image encoder: a ResNet trunk (`model/backbones.py`), pooled, then Linear + BatchNorm to `embed_size`.

Pooled to one vector per image for the show-and-tell decoder, or to a G x G grid
of vectors (one per image region) for the soft-attention decoder; both go
through the same projection, applied to every vector.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from model.backbones import build_trunk, get_backbone_spec, trunk_state_dict


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
        self.feature_size = get_backbone_spec(backbone).channels
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

    def _pooled(self, images: torch.Tensor) -> torch.Tensor:
        feature_map = self.backbone(images)  # (B, C, h, w)
        if self.grid_size is None:
            return F.adaptive_avg_pool2d(feature_map, 1).flatten(1)  # (B, C)
        grid = F.adaptive_avg_pool2d(feature_map, self.grid_size)  # (B, C, G, G)
        return grid.flatten(2).transpose(1, 2)  # (B, G*G, C), cells in row-major order

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C) pooled features, or (B, G*G, C) with a grid."""
        if self.train_backbone:
            return self._pooled(images)
        with torch.no_grad():
            return self._pooled(images)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C) or (B, P, C) backbone features -> (B, E) or (B, P, E) embeddings (BatchNorm over every vector)."""
        flat = features.reshape(-1, features.shape[-1])  # (B*P, C)
        return self.bn(self.linear(flat)).reshape(*features.shape[:-1], -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.backbone_features(images))


def pool_backbone_features(features: torch.Tensor) -> torch.Tensor:
    """Backbone features of any layout -> (B, C) fp32: one pooled vector per picture, for the domain score.

    (B, C) is already the globally average-pooled map (show-and-tell); a grid
    (B, G*G, C) is averaged over its cells, and a clip's (B, N, C) over its
    frames, so every modality and decoder is scored on the same kind of vector.
    Cast to fp32 before averaging, whatever precision the encoder ran in.
    """
    return features.float().reshape(features.shape[0], -1, features.shape[-1]).mean(dim=1)  # (B, C)


def image_summary(embeddings: torch.Tensor) -> torch.Tensor:
    """One (B, E) vector per image: the embedding itself, or the mean over the grid's cells (B, P, E)."""
    return embeddings.mean(dim=1) if embeddings.dim() == 3 else embeddings
