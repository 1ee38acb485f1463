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
    """The handler in process with one `model-config.yaml` setting changed, at batch 1 and 8, in fp32.

    fp32 throughout, so that each setting means what it meant before `precision` (a bf16
    vocabulary projection does not go through oneDNN's fp32 kernel at all).
    """
    fp32 = {"torch_threads": threads, "precision": "fp32"}
    variants = {
        "handler defaults, fp32": fp32,
        "channels_last off": {**fp32, "channels_last": False},
        "oneDNN vocabulary projection off": {**fp32, "onednn_linear": False},
        "1 torch thread": {**fp32, "torch_threads": 1},
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


# The encoder variants behind `precision` and `compile` (model/precision.py), and what each costs at worker start.
PRECISION_VARIANTS = {
    "fp32, eager": {"precision": "fp32"},
    "bf16, eager": {"precision": "bf16"},
    "bf16, eager, bf16 vocabulary projection": {"precision": "bf16", "vocabulary_projection": "bf16"},
    "fp32, compiled": {"precision": "fp32", "compile": True},
    "bf16, compiled": {"precision": "bf16", "compile": True},
    "int8 (PT2E, compiled)": {"precision": "int8"},
}


def precision_experiments(export_dir: Path, device: torch.device, jpegs: Sequence[bytes], threads: int, *,
                          repeats: int, images: int, log: Log, max_batch: int = 8,
                          compiled: bool = True) -> list[dict]:
    """The handler in process in each precision, eager and compiled, at batch 1 and `max_batch`.

    `start_s` is the handler's `initialize` (loading, quantizing, compiling every batch bucket):
    what a TorchServe worker would spend before its first request, against its startupTimeout.
    """
    variants = {k: v for k, v in PRECISION_VARIANTS.items()
                if (device.type == "cpu" or v["precision"] != "int8")
                and (compiled or not (v.get("compile") or v["precision"] == "int8"))}
    pipelines = {}
    for name, settings in variants.items():
        pipelines[name] = InProcessPipeline(export_dir, str(device), {"torch_threads": threads, **settings},
                                            max_batch=max_batch)
        log(f"precision experiment {name}: worker start {pipelines[name].start_s:.1f} s")
    results = []
    for b in (1, max_batch):
        runs: dict[str, list] = {name: [] for name in pipelines}
        batches = max(2, math.ceil(images / b))
        for round_ in range(repeats + 1):  # round 0 warms up
            for name, pipeline in pipelines.items():
                run = pipeline.run(jpegs, b, 1 if round_ == 0 else batches)
                if round_:
                    runs[name].append(run)
        for name, name_runs in runs.items():
            summary = median_of_runs(name_runs)
            results.append({"variant": name, "settings": variants[name], "batch_size": b,
                            "start_s": round(pipelines[name].start_s, 1), "images_per_s": summary["images_per_s"],
                            "latency_ms": summary["latency_ms"]})
            log(f"precision experiment {name}, batch {b}: {summary['images_per_s']:.2f} images/s")
    return results


def image_decode_experiment(image_size: int, *, repeats: int, log: Log,
                            sizes: Sequence[tuple[int, int]] = ((640, 480), (4000, 3000))) -> list[dict]:
    """Milliseconds to decode one JPEG (PIL, then `to_rgb`) and to resize + normalise it (`eval_transform`).

    Draft mode (libjpeg scaling by 1/2..1/8 while decoding) is timed too, but not used: the
    pixels it gives differ from a full decode, which is what the model was trained on.
    """
    import io

    from PIL import Image

    from bench.inputs import photo_like_jpeg
    from model.transforms import eval_transform, to_rgb

    transform = eval_transform(image_size=image_size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    results = []
    for width, height in sizes:
        jpeg = photo_like_jpeg(0, width, height)
        times: dict[str, list[float]] = {"decode": [], "resize_normalize": [], "draft_decode": []}
        for round_ in range(max(3, repeats) + 1):
            t0 = time.perf_counter()
            image = to_rgb(Image.open(io.BytesIO(jpeg)))
            image.load()
            t1 = time.perf_counter()
            transform(image)
            t2 = time.perf_counter()
            draft = Image.open(io.BytesIO(jpeg))
            draft.draft("RGB", (2 * image_size, 2 * image_size))
            draft.load()
            t3 = time.perf_counter()
            if round_:
                for name, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                    times[name].append(1000 * seconds)
        row = {"size": f"{width}x{height}", "kib": round(len(jpeg) / 1024, 1),
               **{f"{name}_ms": round(statistics.median(values), 2) for name, values in times.items()}}
        results.append(row)
        log(f"image decode {row['size']}: decode {row['decode_ms']} ms, resize {row['resize_normalize_ms']} ms")
    return results
