"""Which network a config builds: its `modality` names one of `CAPTIONERS`.

Export, loading and training build through `build_captioner`, so an image
export and a video export are read by the same code.
"""

from __future__ import annotations

from model.captioner import Captioner
from model.config import CaptionerConfig
from model.video import VideoCaptioner

CAPTIONERS: dict[str, type[Captioner]] = {"image": Captioner, "video": VideoCaptioner}


def build_captioner(config: CaptionerConfig) -> Captioner:
    """The captioner for `config.modality` (config validation already refused unknown modalities)."""
    return CAPTIONERS[config.modality](config)
