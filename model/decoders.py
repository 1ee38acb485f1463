"""The caption decoders a captioner can use, by name (`CaptionerConfig.decoder`).

Each entry builds its decoder from the config and says which image features it
reads: one pooled vector per image (show-and-tell), or the G x G grid of cells
(soft attention). Every decoder offers the same protocol (`model/step_decoder.py`),
so decoding, training and serving never ask which one they have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from torch import nn

from model.attention_decoder import SoftAttentionDecoder
from model.decoder import DecoderRNN

if TYPE_CHECKING:
    from model.config import CaptionerConfig


def _show_tell(config: "CaptionerConfig") -> nn.Module:
    return DecoderRNN(config.embed_size, config.hidden_size, config.vocab_size, config.num_layers, config.dropout)


def _soft_attention(config: "CaptionerConfig") -> nn.Module:
    return SoftAttentionDecoder(config.embed_size, config.hidden_size, config.vocab_size, config.dropout)


@dataclass(frozen=True)
class DecoderSpec:
    build: Callable[["CaptionerConfig"], nn.Module]
    uses_grid: bool  # reads the encoder's (B, G*G, E) grid rather than one (B, E) vector
    max_layers: int | None  # most stacked LSTM layers it supports (None: any number)


DECODERS: dict[str, DecoderSpec] = {
    "show_tell": DecoderSpec(_show_tell, uses_grid=False, max_layers=None),
    "soft_attention": DecoderSpec(_soft_attention, uses_grid=True, max_layers=1),
}


def get_decoder_spec(name: str) -> DecoderSpec:
    """The registry entry for `name`, or a ValueError listing the known names."""
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; known decoders: {', '.join(DECODERS)}")
    return DECODERS[name]
