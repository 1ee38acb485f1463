"""The `captioner:` section of model-config.yaml: which keys it may hold, and whether their values can be used.

TorchServe hands the handler whatever the YAML says, and the handler reads the
keys it knows with their defaults, so a misspelt key (`precison: bf16`) would
be ignored without a word and the worker would run with the default. The
checks here say so instead: `ops.archive` refuses to pack such a file, and a
worker that meets one anyway (an archive packed by hand) logs a warning.

Free of TorchServe imports, like the request parsing.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from handler.request_parsing import RequestLimits
from handler.video_input import video_limits
from model.precision import PrecisionError, choose_precision, projection_dtype
from model.video_frames import VideoLimits

SETTINGS_KEY = "captioner"  # the section of model-config.yaml the handler reads

# The worker's own settings (caption_handler.py), beside the request and video limits.
WORKER_SETTINGS = (
    "torch_threads", "channels_last", "onednn_linear", "precision", "vocabulary_projection", "compile",
    "calibration_images",
)
# RequestLimits' fields that come from the model's export, not from the settings.
_MODEL_FIELDS = ("languages", "attention_grid", "decoder")


def known_settings() -> tuple[str, ...]:
    """Every key the handler reads from the `captioner:` section."""
    limits = [f.name for f in fields(RequestLimits) if f.name not in _MODEL_FIELDS]
    return (*limits, *(f.name for f in fields(VideoLimits)), *WORKER_SETTINGS)


def settings_problems(model_yaml: Any) -> list[str]:
    """What is wrong with a parsed model-config.yaml's `captioner:` section; empty when nothing is.

    Unknown keys are named with the nearest known one; values are checked by the
    same code the worker runs at start (`RequestLimits`, `video_limits`, the precision
    settings), so a value refused here is one the worker would refuse too.
    """
    if not isinstance(model_yaml, Mapping):
        return ["model-config.yaml is not a mapping of settings"]
    section = model_yaml.get(SETTINGS_KEY)
    if section is None:
        return []
    if not isinstance(section, Mapping):
        return [f"`{SETTINGS_KEY}:` must be a mapping of settings, got {type(section).__name__}"]
    known = known_settings()
    problems = []
    for key in section:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean `{near[0]}`?" if near else f"; the known ones are {', '.join(known)}"
            problems.append(f"unknown setting `{SETTINGS_KEY}.{key}` (the handler would ignore it){hint}")
    checks = {
        "request limits": lambda: RequestLimits.from_settings(section, int(section.get("max_length", 20))),
        "video limits": lambda: video_limits(section),
        "precision": lambda: choose_precision(section.get("precision"), device_type="cpu", cpu_flags=()),
        "vocabulary_projection": lambda: projection_dtype(section.get("vocabulary_projection")),
        "torch_threads": lambda: int(section.get("torch_threads") or 1),
    }
    for name, check in checks.items():
        try:
            check()
        except PrecisionError as error:
            problems.append(str(error))
        except (TypeError, ValueError) as error:
            problems.append(f"a {name} value of `{SETTINGS_KEY}:` cannot be used: {error}")
    return problems


CALIBRATION_FOLDER = "calibration"  # the archive's folder of int8 calibration images, unless settings name another
CALIBRATION_SUFFIXES = (".jpg", ".jpeg", ".png")


def calibration_folder(settings: Mapping[str, Any]) -> str:
    """The folder, inside the archive (and the export it is packed from), of int8's calibration images."""
    return str(settings.get("calibration_images", CALIBRATION_FOLDER))


def calibration_files(model_dir: Path | str, settings: Mapping[str, Any]) -> list[Path]:
    """int8's calibration images in `model_dir`: the JPEGs and PNGs of `calibration_folder`, in name order."""
    folder = Path(model_dir) / calibration_folder(settings)
    return sorted(path for path in folder.glob("*") if path.suffix.lower() in CALIBRATION_SUFFIXES)
