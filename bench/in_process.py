"""The handler's own batched pipeline, in process: `CaptionHandler.handle()` on a batch of JPEG requests.

This is exactly what a TorchServe worker runs for one batch (request parsing,
preprocessing, one encoder pass, batched greedy decoding with early stop,
JSON responses), minus the frontend and the worker's socket. The served
benchmark's overhead is measured against it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch

from bench.stats import Run
from bench.worker_context import worker_context
from handler.caption_handler import CaptionHandler


class InProcessPipeline:
    """Args:
        export_dir: the exported model.
        device: "cpu" or "cuda[:N]"; on CUDA the handler gets the GPU id as TorchServe would pass it.
        handler_settings: the `captioner:` section of model-config.yaml (torch_threads, precision, ...).
        max_batch: the largest batch it will be given (TorchServe's batch size, which a compiled
            encoder is built for).
    """

    def __init__(self, export_dir: Path | str, device: str = "cpu", handler_settings: dict | None = None,
                 max_batch: int = 8) -> None:
        self.export_dir = Path(export_dir)
        device = torch.device(device)
        self.gpu_id = (device.index or 0) if device.type == "cuda" else None
        self.yaml_config = {"captioner": dict(handler_settings or {})}
        self.handler = CaptionHandler()
        started = time.perf_counter()
        self.handler.initialize(self._context(max_batch))
        self.start_s = time.perf_counter() - started  # loading, and compiling when asked
        self._contexts: dict[int, object] = {}

    def _context(self, batch_size: int):
        return worker_context(self.export_dir, batch_size, gpu_id=self.gpu_id, yaml_config=self.yaml_config)

    def handle(self, jpegs: Sequence[bytes]) -> list[dict]:
        """One TorchServe batch: raw-bytes requests in, parsed JSON responses out."""
        context = self._contexts.get(len(jpegs))
        if context is None:
            context = self._contexts[len(jpegs)] = self._context(len(jpegs))
        rows = [{"body": bytearray(jpeg)} for jpeg in jpegs]
        responses = self.handler.handle(rows, context)
        statuses = [context.get_response_status(i)[0] for i in range(len(jpegs))]
        if statuses != [200] * len(jpegs):
            raise RuntimeError(f"the handler refused benchmark images: statuses {statuses}, {responses[:1]}")
        return [json.loads(response) for response in responses]

    def handle_in_batches(self, jpegs: Sequence[bytes], batch_size: int = 8) -> list[dict]:
        """Every image's response, `batch_size` at a time as a TorchServe batch would carry them."""
        return [body for start in range(0, len(jpegs), batch_size)
                for body in self.handle(jpegs[start:start + batch_size])]

    def run(self, jpegs: Sequence[bytes], batch_size: int, batches: int) -> Run:
        """`batches` batches of `batch_size` back to back; one latency sample per batch."""
        latencies = []
        steps = []
        cpu_started, started = time.process_time(), time.perf_counter()
        for b in range(batches):
            batch = [jpegs[(b * batch_size + i) % len(jpegs)] for i in range(batch_size)]
            t0 = time.perf_counter()
            bodies = self.handle(batch)
            latencies.append(time.perf_counter() - t0)
            steps.append(max(len(body["tokens"]) + (1 if body["ended"] else 0) for body in bodies))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        images = batch_size * batches
        return Run(
            images=images, wall_s=wall, latencies_s=latencies,
            extra={"decode_steps": sum(steps) / len(steps), "cpu_ms_per_image": round(1000 * cpu / images, 2)},
        )
