"""Where the in-process time goes: the handler's stages timed one by one on one batch.

It calls the handler's own pieces in the order `CaptionHandler.handle` does
(request parsing and image decoding, resize + normalise, encoder, batched
greedy decoding, JSON responses), so the sum is close to one `handle()` call.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from bench.in_process import InProcessPipeline
from handler.request_parsing import CaptionRequest, parse_request
from handler.streaming import to_json
from model.batch_captioning import decode_mixed


def stage_times_ms(pipeline: InProcessPipeline, jpegs: Sequence[bytes], batch_size: int, repeats: int = 3) -> dict:
    """Median milliseconds per image of each stage, over `repeats` batches of `batch_size`."""
    handler = pipeline.handler
    samples: dict[str, list[float]] = {"parse_and_decode_image": [], "resize_normalize": [], "encode": [],
                                       "decode_words": [], "respond": []}
    for r in range(repeats + 1):  # the first batch warms up
        batch = [jpegs[(r * batch_size + i) % len(jpegs)] for i in range(batch_size)]
        rows = [{"body": bytearray(jpeg)} for jpeg in batch]
        times = {}
        with torch.inference_mode():
            t0 = time.perf_counter()
            # The two halves of the handler's preprocess (parse, then make the model input), timed apart.
            requests = [parse_request(row, handler.limits) for row in rows]
            t1 = time.perf_counter()
            if not all(isinstance(r, CaptionRequest) for r in requests):
                raise RuntimeError("the handler refused a benchmark image")
            images = torch.stack([handler.transform(r.image) for r in requests]).to(handler.device)
            if handler.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            t2 = time.perf_counter()
            embeddings, _ = handler.encode(images)  # and the pooled features the domain score reads
            _sync(handler.device)
            t3 = time.perf_counter()
            specs = [r.options.decoding for r in requests]
            captions, _ = decode_mixed(handler.model.decoder, embeddings, specs,
                                       start_id=handler.vocab.start_id, end_id=handler.vocab.end_id)
            t4 = time.perf_counter()
            [to_json(handler.describe(c, r)) for c, r in zip(captions, requests)]
            t5 = time.perf_counter()
        times = dict(zip(samples, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)))
        if r:
            for name, seconds in times.items():
                samples[name].append(1000 * seconds / batch_size)
    return {name: round(sorted(values)[len(values) // 2], 2) for name, values in samples.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
