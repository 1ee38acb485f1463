"""The video captioner: the image encoder on N sampled frames, a temporal step, the same decoder.

A clip is N frames sampled uniformly (`sample_frame_indices`). Each frame goes
through the image model's ResNet (`backbone` in the config) + projection (`FrameEncoder`), giving
(B, N, E) frame embeddings; a temporal module turns them into one (B, E) clip
embedding, which the unchanged LSTM decoder reads as the image model reads its
image embedding. So `encode()` keeps its contract and greedy, beam, sampling and
streaming decoding (`model/decoding.py`, `model/batch_captioning.py`) work as
they are.

Temporal modules are data: `CaptionerConfig.temporal` names one of
`TEMPORAL_MODULES`. Mean pooling (Venugopalan et al., 2015) forgets the order of
the frames, so it cannot tell "moves left to right" from "right to left"; the
encoder LSTM (S2VT, Venugopalan et al., 2015) and the concatenation of the
frame embeddings keep it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from torch import nn

from model.captioner import Captioner
from model.config import CaptionerConfig
from model.encoder import EncoderCNN
from model.transforms import to_rgb


def sample_frame_indices(total_frames: int, num_frames: int) -> list[int]:
    """Indices of `num_frames` frames spread uniformly over a clip of `total_frames`.

    The clip is cut into `num_frames` equal segments and the frame at the middle
    of each is taken; a clip shorter than `num_frames` repeats frames in order
    (a one-frame clip gives its frame `num_frames` times).
    """
    if total_frames < 1:
        raise ValueError("a clip needs at least one frame")
    return [min(total_frames - 1, int((i + 0.5) * total_frames / num_frames)) for i in range(num_frames)]


class ClipTransform:
    """Frames (PIL, any count) -> the (num_frames, 3, S, S) tensor the video encoder reads.

    Samples `num_frames` of the frames with `sample_frame_indices` and applies
    the image model's own per-frame transform (`model/transforms.py`), so training
    and serving prepare frames one way.
    """

    def __init__(self, frame_transform: Callable[[Image.Image], torch.Tensor], num_frames: int) -> None:
        self.frame_transform = frame_transform
        self.num_frames = num_frames

    def __call__(self, frames: Sequence[Image.Image]) -> torch.Tensor:
        picked = [frames[i] for i in sample_frame_indices(len(frames), self.num_frames)]
        return torch.stack([self.frame_transform(to_rgb(frame)) for frame in picked])  # (N, 3, S, S)


class FrameEncoder(EncoderCNN):
    """`EncoderCNN` over any leading dimensions: (B, N, 3, H, W) -> (B, N, E).

    Same parameters and names as the image encoder, so the training code that
    fine-tunes, freezes or caches the backbone treats both alike.
    """

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) -> (..., C), C the backbone's channels."""
        lead = images.shape[:-3]
        features = super().backbone_features(images.reshape(-1, *images.shape[-3:]))  # (B*N, C)
        return features.view(*lead, -1)

    def features_and_domain(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 3, H, W) -> (..., C) features and (..., D) domain features, one per frame."""
        lead = images.shape[:-3]
        features, domain = super().features_and_domain(images.reshape(-1, *images.shape[-3:]))
        return features.view(*lead, -1), domain.view(*lead, -1)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., E)."""
        lead = features.shape[:-1]
        return super().project(features.reshape(-1, features.shape[-1])).view(*lead, -1)


class MeanPool(nn.Module):
    """The clip is the mean of its frames (order-blind)."""

    def __init__(self, num_frames: int, embed_size: int) -> None:
        super().__init__()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.mean(dim=1)  # (B, N, E) -> (B, E)


class EncoderLSTM(nn.Module):
    """S2VT-style: an LSTM reads the frames in order; its last state, projected, is the clip."""

    def __init__(self, num_frames: int, embed_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(embed_size, embed_size, batch_first=True)
        self.out = nn.Sequential(nn.Linear(embed_size, embed_size), nn.BatchNorm1d(embed_size))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(frames)  # hidden: (1, B, E)
        return self.out(hidden[-1])  # (B, E)


class ConcatFrames(nn.Module):
    """The frames side by side, in order, projected to one embedding: position in time is explicit."""

    def __init__(self, num_frames: int, embed_size: int) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(num_frames * embed_size, embed_size), nn.BatchNorm1d(embed_size))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.out(frames.flatten(1))  # (B, N, E) -> (B, N*E) -> (B, E)


TEMPORAL_MODULES: dict[str, type[nn.Module]] = {"mean": MeanPool, "lstm": EncoderLSTM, "concat": ConcatFrames}


def build_temporal(name: str, num_frames: int, embed_size: int) -> nn.Module:
    """The temporal module `name` names, or an error listing the known ones."""
    if name not in TEMPORAL_MODULES:
        raise ValueError(f"unknown temporal module {name!r}; known: {', '.join(sorted(TEMPORAL_MODULES))}")
    return TEMPORAL_MODULES[name](num_frames, embed_size)


class VideoCaptioner(Captioner):
    """`Captioner` whose input is a clip of `config.num_frames` frames, (B, N, 3, H, W)."""

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__(config)
        self.encoder = FrameEncoder(config.embed_size, backbone=config.backbone, train_backbone=config.train_backbone)
        self.temporal = build_temporal(config.temporal, config.num_frames, config.embed_size)

    def embed_images(self, images: torch.Tensor | None, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, E) frame embeddings (from frames or cached (B, N, C) features) -> (B, E) clip embeddings."""
        return self.temporal(super().embed_images(images, features))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, 3, H, W) clips -> (B, E) clip embeddings for decoding."""
        return self.temporal(self.encoder(images))
