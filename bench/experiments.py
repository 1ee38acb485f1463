"""On/off comparisons behind the optimisations the handler and the model keep.

Each compares variants in one process, interleaved over several rounds, and
reports medians, so a burst of other work on the machine hurts every variant
alike.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from bench.in_process import InProcessPipeline
from bench.stats import median_of_runs
from model.export_format import load_exported_captioner

Log = Callable[[str], None]


def handler_setting_experiments(export_dir: Path, device: torch.device, jpegs: Sequence[bytes], threads: int, *,
                                repeats: int, images: int, log: Log) -> list[dict]:
    """The handler in process with one `model-config.yaml` setting changed, at batch 1 and 8."""
    variants = {
        "handler defaults": {"torch_threads": threads},
        "channels_last off": {"torch_threads": threads, "channels_last": False},
        "oneDNN vocabulary projection off": {"torch_threads": threads, "onednn_linear": False},
        "1 torch thread": {"torch_threads": 1},
    }
    pipelines = {name: InProcessPipeline(export_dir, str(device), s) for name, s in variants.items()}
    results = []
    for b in (1, 8):
        runs: dict[str, list] = {name: [] for name in pipelines}
        batches = max(2, math.ceil(images / b))
        for round_ in range(repeats + 1):  # round 0 warms up
            for name, pipeline in pipelines.items():
                torch.set_num_threads(variants[name]["torch_threads"])  # the handler sets it once per process
                run = pipeline.run(jpegs, b, 1 if round_ == 0 else batches)
                if round_:
                    runs[name].append(run)
        for name, name_runs in runs.items():
            summary = median_of_runs(name_runs)
            results.append({"variant": name, "batch_size": b, "images_per_s": summary["images_per_s"],
                            "latency_ms": summary["latency_ms"]})
            log(f"experiment {name}, batch {b}: {summary['images_per_s']:.2f} images/s")
    torch.set_num_threads(threads)
    return results


def decoding_step_experiment(export_dir: Path, device: torch.device, *, repeats: int, log: Log,
                             steps: int = 20) -> list[dict]:
    """Milliseconds per decoding step: the decoder's own `step` against calling the `nn.LSTM` module per word.

    The second is how the seed-style loop steps; both compute the same numbers.
    """
    model, vocab = load_exported_captioner(export_dir, device)
    decoder = model.decoder
    embed_size = model.config.embed_size

    def own_steps(embeddings: torch.Tensor) -> None:
        state = decoder.start(embeddings)
        tokens = torch.full((embeddings.shape[0],), vocab.start_id, device=device)
        for _ in range(steps):
            logits, state = decoder.step(tokens, state)
            tokens = logits.argmax(dim=1)

    def module_steps(embeddings: torch.Tensor) -> None:
        _, state = decoder.lstm(embeddings.unsqueeze(1))
        tokens = torch.full((embeddings.shape[0],), vocab.start_id, device=device)
        for _ in range(steps):
            hidden, state = decoder.lstm(decoder.embed(tokens).unsqueeze(1), state)
            tokens = decoder.linear(hidden.squeeze(1)).argmax(dim=1)

    variants = {"decoder.step (torch.lstm_cell)": own_steps, "nn.LSTM module per step": module_steps}
    results = []
    with torch.inference_mode():
        for b in (1, 8):
            embeddings = torch.randn(b, embed_size, device=device)
            times: dict[str, list[float]] = {name: [] for name in variants}
            for round_ in range(repeats + 1):
                for name, run in variants.items():
                    started = time.perf_counter()
                    run(embeddings)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    if round_:
                        times[name].append((time.perf_counter() - started) * 1000 / (steps + 1))
            for name, values in times.items():
                results.append({"variant": name, "batch_size": b, "ms_per_step": round(statistics.median(values), 3)})
                log(f"decoding step {name}, batch {b}: {results[-1]['ms_per_step']} ms")
    return results
