"""`make bench-gpu`: one prepared run for a machine with a CUDA GPU and PyTorch, in under 10 minutes.

    python -m bench.gpu                        # writes build/bench/gpu/results.json and BENCHMARKS.md
    python -m bench.gpu --budget-s 300         # stop starting new parts after 300 s
    python -m bench.gpu --batch-sizes 1,8,64   # fewer in-process batch sizes

It measures, with the COCO-sized random model of `make bench` and 640x480 JPEGs:

1. the handler's own `handle()` in process on the GPU, batch 1 to 256, fp32 and bf16
   (`precision` in model-config.yaml);
2. one decoding step (LSTM cell + vocabulary projection + argmax), eager against a
   captured CUDA graph and against `torch.compile(mode="reduce-overhead")`;
3. JPEG decoding and resizing: PIL on the CPU (the handler's path) against
   `torchvision.io.decode_jpeg(device="cuda")` and a resize on the GPU.

Served figures need TorchServe's Java frontend, which such a machine may not have;
a jlink'd Java 17 runtime (about 51 MB) and TorchServe's jar (46 MB) together do
not fit the 64 MiB that can be carried to it, so this script measures in process
only, and says so in its report.

Without a CUDA device it writes a report saying so and exits 0 (nothing to measure);
a missing Python package stops it at once with the name and what to do. Results are
written after every part, so a run stopped by a time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

# Pure-Python packages (or ones with version-independent binaries) a bare PyTorch machine may lack;
# `--stage-deps` copies them as installed here (`ts` without its 46 MB Java frontend).
CARRIED = ("ts", "yaml", "safetensors", "psutil", "packaging", "tqdm", "requests", "urllib3", "idna", "certifi",
           "charset_normalizer")
NEEDED = ("torch", "torchvision", "PIL", "numpy", *CARRIED)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N")
    parser.add_argument("--batch-sizes", default="1,8,32,64,128,256", help="in-process batch sizes")
    parser.add_argument("--precisions", default="fp32,bf16", help="handler precisions")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (medians)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="no new part starts after this many seconds (the whole run must fit in 10 minutes)")
    parser.add_argument("--work-dir", default="build/bench/gpu/work")
    parser.add_argument("--out-json", default="build/bench/gpu/results.json")
    parser.add_argument("--out-md", default="build/bench/gpu/BENCHMARKS.md")
    parser.add_argument("--stage-deps", metavar="DIR", default=None,
                        help="copy the Python packages a bare PyTorch machine may lack (TorchServe's `ts` "
                             "without its Java frontend, yaml, safetensors, psutil, requests, ...) into DIR, "
                             "to carry there; then exit")
    return parser



def stage_deps(out: Path) -> list[str]:
    """Copy the packages in CARRIED, as installed here, into `out` (for PYTHONPATH on the GPU machine)."""
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in CARRIED:
        package = Path(importlib.import_module(name).__file__).parent
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "frontend", "*.jar"))
        copied.append(name)
    return copied


def missing_packages(names=NEEDED) -> list[str]:
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise SystemExit(f"--batch-sizes: positive integers separated by commas, got {text!r}")
    return values


def log(message: str) -> None:
    print(f"[bench-gpu {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Run:
    """Writes the results after every part, so a run cut short keeps what it measured."""

    def __init__(self, args: argparse.Namespace, results: dict) -> None:
        self.args = args
        self.results = results
        self.started = time.perf_counter()

    def part(self, name: str, measure: Callable[[], object]) -> None:
        elapsed = time.perf_counter() - self.started
        if elapsed > self.args.budget_s:
            self.results.setdefault("skipped", {})[name] = f"time budget spent ({elapsed:.0f} s)"
            log(f"{name}: skipped, {elapsed:.0f} s of {self.args.budget_s:.0f} s spent")
        else:
            log(f"{name} ...")
            try:
                self.results[name] = measure()
            except Exception as error:  # noqa: BLE001 - one failing part must not lose the others' figures
                self.results.setdefault("failed", {})[name] = f"{type(error).__name__}: {error}"
                log(f"{name}: failed: {type(error).__name__}: {error}")
        self.write()

    def write(self) -> None:
        self.results["duration_s"] = round(time.perf_counter() - self.started, 1)
        out_json, out_md = Path(self.args.out_json), Path(self.args.out_md)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_md.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(self.results, indent=1) + "\n")
        out_md.write_text(markdown(self.results))


def _sync(device) -> Callable[[], None]:
    import torch

    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _median_ms(fn: Callable[[], object], sync: Callable[[], None], repeats: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - t0))
    return round(statistics.median(times), 3)


def in_process(args, device, export_dir: Path, jpegs: list[bytes]) -> list[dict]:
    """The handler's `handle()` at each batch size in each precision (fp32 first)."""
    from bench.in_process import InProcessPipeline
    from bench.stats import median_of_runs

    batch_sizes = _ints(args.batch_sizes)
    rows = []
    for precision in [p for p in args.precisions.split(",") if p]:
        pipeline = InProcessPipeline(export_dir, str(device), {"precision": precision}, max_batch=max(batch_sizes))
        for b in batch_sizes:
            pipeline.run(jpegs, b, 1)  # warm-up: allocations, cuDNN's choice of kernels for this shape
            runs = [pipeline.run(jpegs, b, 2) for _ in range(args.repeats)]
            summary = median_of_runs(runs)
            summary.pop("runs")
            rows.append({"precision": precision, "batch_size": b, "worker_start_s": round(pipeline.start_s, 1),
                         **summary})
            log(f"in process {precision} batch {b}: {summary['images_per_s']:.1f} images/s")
    return rows


def decoding_step(args, device, export_dir: Path) -> list[dict]:
    """ms per decoding step: eager, a captured CUDA graph, and torch.compile's reduce-overhead mode."""
    import torch

    from model.export_format import load_exported_captioner

    model, vocab = load_exported_captioner(export_dir, device)
    decoder = model.decoder
    sync = _sync(device)
    rows = []

    def eager_step(tokens, state):
        logits, state = decoder.step(tokens, state)
        return logits.argmax(dim=1), state  # (B,)

    compiled_step = torch.compile(eager_step, mode="reduce-overhead")
    with torch.inference_mode():
        for b in (1, 8, 64, 256):
            embeddings = torch.randn(b, model.config.embed_size, device=device)
            state = decoder.start(embeddings)
            tokens = torch.full((b,), vocab.start_id, device=device)
            row = {"batch_size": b, "eager_ms": _median_ms(lambda: eager_step(tokens, state), sync, 20)}
            # A CUDA graph replays the step's kernels with one launch; its inputs live in static buffers.
            static_tokens, static_state = tokens.clone(), tuple(s.clone() for s in state)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    eager_step(static_tokens, static_state)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = eager_step(static_tokens, static_state)
            row["cuda_graph_ms"] = _median_ms(graph.replay, sync, 20)
            expected = eager_step(tokens, state)[0]
            graph.replay()
            row["cuda_graph_same_tokens"] = bool(torch.equal(static_out[0], expected))
            try:
                started = time.perf_counter()
                compiled_step(tokens, state)
                row["compile_warmup_s"] = round(time.perf_counter() - started, 1)
                row["compiled_ms"] = _median_ms(lambda: compiled_step(tokens, state), sync, 20)
            except Exception as error:  # noqa: BLE001 - reported, the other figures stand
                row["compiled_error"] = f"{type(error).__name__}: {error}"
            rows.append(row)
            log(f"decoding step batch {b}: {row}")
    return rows


JPEG_SIZES = (((640, 480), 32), ((4000, 3000), 4))  # (size, images decoded per timing)


def jpeg_decoding(args, device, image_size: int, sizes=JPEG_SIZES) -> list[dict]:
    """ms per image: PIL decode + the handler's transform on the CPU, against nvjpeg decode + resize on the GPU."""
    import torch
    import torchvision
    from PIL import Image
    from torch.nn import functional as F

    from bench.inputs import photo_like_jpeg
    from model.config import CaptionerConfig
    from model.transforms import eval_transform, to_rgb

    config = CaptionerConfig(vocab_size=10, image_size=image_size)
    transform = eval_transform(image_size=image_size, mean=config.mean, std=config.std)
    mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=device).view(1, 3, 1, 1)
    sync = _sync(device)
    rows = []
    for (width, height), count in sizes:
        jpegs = [photo_like_jpeg(i, width, height) for i in range(count)]
        datas = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]

        def pil():
            torch.stack([transform(to_rgb(Image.open(io.BytesIO(j)))) for j in jpegs]).to(device)

        def nvjpeg():
            images = torchvision.io.decode_jpeg(datas, device=device)  # list of (3, H, W) uint8
            batch = torch.stack([F.interpolate(i.unsqueeze(0).float(), size=(image_size, image_size),
                                               mode="bilinear", antialias=True, align_corners=False)[0]
                                 for i in images]) / 255.0  # (N, 3, S, S)
            return (batch - mean) / std

        pil_ms, gpu_ms = _median_ms(pil, sync, args.repeats), _median_ms(nvjpeg, sync, args.repeats)
        rows.append({"size": f"{width}x{height}", "images": count, "pil_ms_per_image": round(pil_ms / count, 3),
                     "nvjpeg_ms_per_image": round(gpu_ms / count, 3)})
        log(f"JPEG {width}x{height}: {rows[-1]}")
    return rows


def markdown(results: dict) -> str:
    env = results.get("environment", {})
    lines = ["# GPU benchmarks (`make bench-gpu`)", "",
             f"Device: {env.get('gpu') or 'none'}; CPU {env.get('cpu', '?')}; torch {env.get('torch', '?')}; "
             f"{results.get('duration_s', 0):.0f} s.", ""]
    if results.get("no_device"):
        return "\n".join(lines + [f"**Nothing measured**: {results['no_device']}", ""])
    rows = results.get("in_process") or []
    if rows:
        lines += ["## Handler in process", "", "| precision | batch | images/s | latency p50 (ms) |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {r['precision']} | {r['batch_size']} | {r['images_per_s']:.1f} | {r['latency_ms']['p50']:.1f} |"
                  for r in rows]
        lines.append("")
    rows = results.get("decoding_step") or []
    if rows:
        lines += ["## One decoding step (ms)", "", "| batch | eager | CUDA graph | torch.compile reduce-overhead |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {r['batch_size']} | {r['eager_ms']} | {r['cuda_graph_ms']} | "
                  f"{r.get('compiled_ms', r.get('compiled_error', '-'))} |" for r in rows]
        lines.append("")
    rows = results.get("jpeg_decoding") or []
    if rows:
        lines += ["## JPEG decode + resize (ms per image)", "", "| image | PIL on CPU | nvjpeg + resize on GPU |",
                  "| --- | --- | --- |"]
        lines += [f"| {r['size']} | {r['pil_ms_per_image']} | {r['nvjpeg_ms_per_image']} |" for r in rows]
        lines.append("")
    for key in ("skipped", "failed"):
        for name, why in (results.get(key) or {}).items():
            lines.append(f"- {name} {key}: {why}")
    lines += ["", "Served figures: not measured (no Java runtime on the GPU machine; see bench/gpu.py).", ""]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict:
    if args.stage_deps:
        copied = stage_deps(Path(args.stage_deps))
        log(f"copied {', '.join(copied)} into {args.stage_deps}; on the GPU machine: "
            f"PYTHONPATH={args.stage_deps} python -m bench.gpu")
        return {"staged": copied}
    missing = missing_packages()
    if missing:
        raise SystemExit(f"bench-gpu needs the Python packages {', '.join(missing)}; install them, or put them on "
                         "PYTHONPATH (for TorchServe's `ts`, its Python package without the Java frontend is enough)")
    import torch

    from bench import environment

    _ints(args.batch_sizes)
    device = torch.device(args.device)
    results: dict = {"command": " ".join(["python -m bench.gpu", *sys.argv[1:]])}
    run = Run(args, results)
    if device.type != "cuda" or not torch.cuda.is_available():
        results["environment"] = environment.describe(torch.device("cpu"))
        results["no_device"] = f"torch {torch.__version__} sees no CUDA device (asked for {args.device})"
        run.write()
        log(results["no_device"] + "; wrote " + args.out_md)
        return results
    results["environment"] = environment.describe(device)
    from bench.inputs import MODEL_SHAPES, jpeg_set, write_random_export

    shape = MODEL_SHAPES["coco"]
    export_dir = write_random_export(shape, Path(args.work_dir) / "export")
    jpegs = jpeg_set(32)
    run.part("in_process", lambda: in_process(args, device, export_dir, jpegs))
    run.part("decoding_step", lambda: decoding_step(args, device, export_dir))
    run.part("jpeg_decoding", lambda: jpeg_decoding(args, device, shape.image_size))
    log(f"done in {results['duration_s']} s: {args.out_md}")
    return results


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main(get_args_parser().parse_args())
