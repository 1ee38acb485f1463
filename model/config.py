"""The captioner's hyperparameters, which travel with the weights in `config.json`.

Everything needed to rebuild the network and its preprocessing lives here, so
the handler never repeats a setting by hand (the classic size-mismatch bug).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from model.backbones import get_backbone_spec
from model.decoders import get_decoder_spec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODALITIES = ("image", "video")


@dataclass
class CaptionerConfig:
    """Hyperparameters of the ResNet + LSTM captioner.

    Exports written before `backbone`, `decoder` and `grid_size` existed lack them
    and load with the defaults: ResNet-34 and show-and-tell, as they were trained.

    Args:
        vocab_size: number of tokens in the vocabulary, special tokens included.
        embed_size: size of the image embedding and of the word embeddings.
        hidden_size: LSTM hidden state size.
        num_layers: stacked LSTM layers.
        dropout: dropout between LSTM layers (show_tell, num_layers > 1), or on the
            hidden state before the output layer (soft_attention).
        max_length: most tokens a caption may have when decoding, `<end>` included.
        image_size: side of the square image the encoder sees.
        mean: per-channel normalisation mean (ImageNet by default).
        std: per-channel normalisation standard deviation.
        train_backbone: whether the ResNet backbone is fine-tuned or frozen.
        backbone: a name in `model.backbones.BACKBONES` (resnet18, resnet34, resnet50, resnet101).
        decoder: a name in `model.decoders.DECODERS` (show_tell, soft_attention).
        grid_size: G, the side of the feature grid soft attention looks over (the last
            feature map pooled to G x G); unused by show_tell.
        languages: ISO 639-1 codes of the languages the captions are written in, the
            default one first. With more than one, the vocabulary holds a start token
            per language and a request picks one (`model.decoding.first_tokens`).
        modality: "image" (one picture in) or "video" (a clip in: `model/video.py`).
        num_frames: frames sampled uniformly from a clip (video only; 1 for images).
        temporal: how a clip's frame embeddings become one (video only): a name in
            `model.video.TEMPORAL_MODULES` ("concat", "lstm", "mean").
    """

    vocab_size: int
    embed_size: int = 256
    hidden_size: int = 512
    num_layers: int = 1
    dropout: float = 0.0
    max_length: int = 20
    image_size: int = 224
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    std: tuple[float, float, float] = field(default=IMAGENET_STD)
    train_backbone: bool = False
    backbone: str = "resnet34"
    decoder: str = "show_tell"
    grid_size: int = 7
    languages: tuple[str, ...] = ("en",)
    modality: str = "image"
    num_frames: int = 1
    temporal: str = "mean"

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.languages = tuple(str(code) for code in self.languages)
        if not self.languages or len(set(self.languages)) != len(self.languages):
            raise ValueError(f"languages must name at least one language, each once, got {list(self.languages)}")
        if self.vocab_size < 5:
            raise ValueError(f"vocab_size must hold the 4 special tokens and a word, got {self.vocab_size}")
        get_backbone_spec(self.backbone)  # unknown names fail here, listing the known ones
        decoder = get_decoder_spec(self.decoder)
        if decoder.max_layers is not None and self.num_layers > decoder.max_layers:
            raise ValueError(f"the {self.decoder} decoder has at most {decoder.max_layers} LSTM layer(s), "
                             f"got num_layers={self.num_layers}")
        for name in ("embed_size", "hidden_size", "num_layers", "max_length", "image_size", "grid_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per RGB channel")
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be positive, got {self.num_frames}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CaptionerConfig":
        """Rebuild from `to_dict()` output; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown captioner config keys {unknown}; was this export made by a newer version?")
        return cls(**values)

    @property
    def attention_grid(self) -> int | None:
        """G when the decoder attends over a G x G grid (and returns attention maps), else None."""
        return self.grid_size if get_decoder_spec(self.decoder).uses_grid else None
