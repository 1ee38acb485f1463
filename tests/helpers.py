"""Small builders shared by the tests: tiny models, exports, images and TorchServe contexts."""

from __future__ import annotations

import io
import random
import socket
from pathlib import Path

from bench.worker_context import worker_context
# Re-exported: the tests build their tiny models through this module.
from ops.tiny_model import (  # noqa: F401
    SHAPE_WORDS, TINY_VIDEO, tiny_captioner, tiny_config, tiny_video_captioner, write_tiny_export,
)
from training.shapes_dataset import describe, generate, random_scene, render_scene


def shape_image_bytes(seed: int = 0, fmt: str = "JPEG", size: int | None = None) -> tuple[bytes, list[str]]:
    """A freshly generated scene as encoded bytes, with its true captions."""
    rng = random.Random(seed)
    scene = random_scene(rng, 1)
    image = render_scene(scene, rng)
    if size:
        image = image.resize((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue(), describe(scene.objects)


def torchserve_context(model_dir: Path, batch_size: int, yaml_config: dict | None = None):
    """A real `ts.context.Context` as the worker builds it, with a socket for streamed chunks.

    Returns (context, reader socket): what the handler streams arrives on the reader.
    """
    context = worker_context(model_dir, batch_size, yaml_config=yaml_config)
    writer, reader = socket.socketpair()
    context.cl_socket = writer
    reader.settimeout(2)
    return context, reader


def write_domain_export(directory: Path, seed: int = 1, *, fit: int = 48, held_out: int = 24, **tiny):
    """A tiny random export with domain statistics fitted on a small generated shapes set (written beside it).

    Goes through `training.domain_calibration.main`, the command line that adds statistics to an
    export. Returns (export folder, the statistics as fitted in memory).
    """
    from training.domain_calibration import main as calibrate

    export = write_tiny_export(directory, seed, **tiny)
    data = generate(directory.parent / f"{directory.name}-shapes", train=fit, val=held_out, seed=3)
    statistics = calibrate([
        "--export-dir", str(export), "--quiet",
        "--fit-annotations", str(data / "annotations" / "captions_train.json"),
        "--held-out", str(data / "annotations" / "captions_val.json"), "--images", str(data / "images"),
    ])
    return export, statistics
