"""The whole captioner: encoder + decoder, built from a `CaptionerConfig`."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from model.config import CaptionerConfig
from model.decoders import get_decoder_spec
from model.domain_features import mean_over_frames
from model.encoder import EncoderCNN
from model.step_decoder import TeacherForced


class Captioner(nn.Module):
    """A ResNet encoder feeding an LSTM decoder, both chosen by name in the config.

    `forward` returns logits and, given targets, the loss, so training and
    evaluation share one code path; decoding lives in `model.decoding`. The
    encoder keeps a G x G grid of embeddings when the decoder attends over one.
    """

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = EncoderCNN(
            config.embed_size, config.backbone, grid_size=config.attention_grid, train_backbone=config.train_backbone
        )
        self.decoder = get_decoder_spec(config.decoder).build(config)

    def forward(
        self,
        images: torch.Tensor | None,
        captions: torch.Tensor,
        lengths: torch.Tensor,
        *,
        features: torch.Tensor | None = None,
        owners: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits and cross-entropy loss.

        Args:
            images: (B, 3, H, W), or None when `features` are given.
            captions: (N, T) padded token ids starting with `<start>` (or a language token).
            lengths: (N,) caption lengths.
            features: optional precomputed backbone features (frozen backbone): (B, C), or
                (B, G*G, C) for a decoder that attends over the grid.
            owners: (N,) image row of each caption when images have several
                captions; captions[n] describes images[owners[n]]. None means N == B.
        Returns:
            (logits (N_tokens, V), mean loss over the real tokens).
        """
        return self.caption_loss(self.embed_images(images, features), captions, lengths, owners)

    def embed_images(self, images: torch.Tensor | None, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, E) (or grid (B, G*G, E)) image embeddings from images, or from precomputed backbone features."""
        if features is None:
            features = self.encoder.backbone_features(images)
        return self.encoder.project(features)

    def caption_loss(
        self, embeddings: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor, owners: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder logits and cross-entropy for captions of already-embedded images."""
        forced = self.teacher_forced(embeddings, captions, lengths, owners)
        return forced.logits, F.cross_entropy(forced.logits, forced.targets)

    def teacher_forced(
        self, embeddings: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor, owners: torch.Tensor | None
    ) -> TeacherForced:
        """The decoder's teacher-forced pass (logits, targets, attention) over captions of embedded images."""
        if owners is not None:
            embeddings = embeddings[owners]  # (N, E) or (N, P, E): the encoder ran once per image
        return self.decoder.teacher_forced(embeddings, captions, lengths)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, E) image embeddings (grid: (B, G*G, E)) for decoding."""
        return self.encoder(images)

    def encode_with_domain(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode`'s embeddings and each picture's (B, D) fp32 domain features, from one backbone pass.

        The one place serving and the domain statistics get domain features from
        (`model/domain_features.py`): the backbone's output (whatever its layout:
        image, grid or clip frames) is embedded as `embed_images` does; a clip's
        frames' domain features are averaged into one vector.
        """
        features, domain = self.encoder.features_and_domain(images)  # (B, C), (B, G*G, C) or (B, N, C)
        return self.embed_images(None, features), mean_over_frames(domain)
