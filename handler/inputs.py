"""What a model's requests carry, by the exported config's `modality`: the reader and the transform.

The handler asks `model_input(config, settings)` once at start-up; everything
after that (batching, decoding, streaming, errors) is the same for images and clips.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from handler.request_parsing import IMAGE_INPUT, ImageInput
from handler.video_input import VideoInput, video_limits
from model.config import CaptionerConfig
from model.transforms import eval_transform
from model.video import ClipTransform

ModelInput = tuple[ImageInput, Callable[[Any], Any]]


def _image_input(config: CaptionerConfig, settings: Mapping[str, Any]) -> ModelInput:
    """One picture -> (3, S, S)."""
    return IMAGE_INPUT, eval_transform(image_size=config.image_size, mean=config.mean, std=config.std)


def _video_input(config: CaptionerConfig, settings: Mapping[str, Any]) -> ModelInput:
    """A clip -> its sampled frames -> (N, 3, S, S)."""
    frame = eval_transform(image_size=config.image_size, mean=config.mean, std=config.std)
    return VideoInput(config.num_frames, video_limits(settings)), ClipTransform(frame, config.num_frames)


MODEL_INPUTS: dict[str, Callable[[CaptionerConfig, Mapping[str, Any]], ModelInput]] = {
    "image": _image_input, "video": _video_input,
}


def model_input(config: CaptionerConfig, settings: Mapping[str, Any]) -> ModelInput:
    """The request reader and the model-input transform for `config.modality`."""
    return MODEL_INPUTS[config.modality](config, settings)
