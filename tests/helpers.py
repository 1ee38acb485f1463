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
from training.shapes_dataset import describe, random_scene, render_scene


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
