"""Small builders shared by the tests: tiny models, exports, images and TorchServe contexts."""

from __future__ import annotations

import io
import random
import socket
from pathlib import Path

import torch

from bench.worker_context import worker_context
from model.captioner import Captioner
from model.config import CaptionerConfig
from model.vocabulary import Vocabulary
from training.export import export_captioner
from training.shapes_dataset import describe, random_scene, render_scene

SHAPE_WORDS = (
    "a small large red green blue yellow purple circle square triangle and , there is picture of "
    "on plain background from left to right in the middle image"
).split()


def tiny_config(vocab_size: int, **overrides) -> CaptionerConfig:
    values = dict(vocab_size=vocab_size, embed_size=16, hidden_size=32, image_size=32, max_length=12)
    values.update(overrides)
    return CaptionerConfig(**values)


def tiny_captioner(seed: int = 0, **overrides) -> tuple[Captioner, Vocabulary]:
    torch.manual_seed(seed)
    vocab = Vocabulary(SHAPE_WORDS)
    return Captioner(tiny_config(len(vocab), **overrides)).eval(), vocab


def write_tiny_export(directory: Path, seed: int = 0, **overrides) -> Path:
    model, vocab = tiny_captioner(seed, **overrides)
    return export_captioner(model, vocab, directory)


def shape_image_bytes(seed: int = 0, fmt: str = "JPEG", size: int | None = None) -> tuple[bytes, list[str]]:
    """A freshly generated scene as encoded bytes, with its true captions."""
    rng = random.Random(seed)
    objects = random_scene(rng, 1)
    image = render_scene(objects, rng)
    if size:
        image = image.resize((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue(), describe(objects)


def torchserve_context(model_dir: Path, batch_size: int, yaml_config: dict | None = None):
    """A real `ts.context.Context` as the worker builds it, with a socket for streamed chunks.

    Returns (context, reader socket): what the handler streams arrives on the reader.
    """
    context = worker_context(model_dir, batch_size, yaml_config=yaml_config)
    writer, reader = socket.socketpair()
    context.cl_socket = writer
    reader.settimeout(2)
    return context, reader
