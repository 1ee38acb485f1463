"""The whole captioner: encoder + decoder, built from a `CaptionerConfig`."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from model.config import CaptionerConfig
from model.decoder import DecoderRNN
from model.encoder import EncoderCNN


class Captioner(nn.Module):
    """ResNet-34 encoder feeding an LSTM decoder.

    `forward` returns logits and, given targets, the loss, so training and
    evaluation share one code path; decoding lives in `model.decoding`.
    """

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = EncoderCNN(config.embed_size, train_backbone=config.train_backbone)
        self.decoder = DecoderRNN(
            config.embed_size, config.hidden_size, config.vocab_size, config.num_layers, config.dropout
        )

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
            features: optional precomputed (B, 512) backbone features (frozen backbone).
            owners: (N,) image row of each caption when images have several
                captions; captions[n] describes images[owners[n]]. None means N == B.
        Returns:
            (logits (N_tokens, V), mean loss over the real tokens).
        """
        return self.caption_loss(self.embed_images(images, features), captions, lengths, owners)

    def embed_images(self, images: torch.Tensor | None, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, E) image embeddings from images, or from precomputed backbone features."""
        if features is None:
            features = self.encoder.backbone_features(images)
        return self.encoder.project(features)

    def caption_loss(
        self, embeddings: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor, owners: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder logits and cross-entropy for captions of already-embedded images.

        The image step's output (its "prediction" of the first token) is not scored:
        the first token is `<start>`, or the caption's language token in a
        multilingual model, chosen by whoever asks for the caption, never by the
        image. Decoding feeds it rather than predicting it.
        """
        if owners is not None:
            embeddings = embeddings[owners]  # (N, E): the encoder ran once per image
        logits = self.decoder(embeddings, captions, lengths)
        packed = pack_padded_sequence(captions, lengths.cpu(), batch_first=True, enforce_sorted=False)
        first = int(packed.batch_sizes[0])  # packing is time-major: the first entries are every caption's step 0
        return logits, F.cross_entropy(logits[first:], packed.data[first:])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, E) image embeddings for decoding."""
        return self.encoder(images)
