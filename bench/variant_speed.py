"""Images/s of one exported model, in process and served, for `bench.compare` (which runs it as a child).

    OMP_WAIT_POLICY=PASSIVE python -m bench.variant_speed --export-dir build/export --annotations ... --images ...

A process of its own, so torch's OpenMP threads start with the wait policy the
served workers get (`ops.server` sets PASSIVE), whatever the training runs used:
on a busy machine spinning threads cost several times the CPU per image
(BENCHMARKS.md), and the two figures should differ by serving, not by that.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.in_process import InProcessPipeline
from bench.served import ServedConfig, ServedModel
from training.coco_data import load_coco

BATCH = 8


def held_out_jpegs(annotations: str, images: str, count: int) -> list[bytes]:
    coco = load_coco(annotations)
    names = [coco.imgs[i]["file_name"] for i in sorted(coco.imgs)[:count]]
    return [(Path(images) / name).read_bytes() for name in names]


def speed_of(export_dir: Path, jpegs: list[bytes], *, threads: int, batches: int, requests: int,
             work_dir: Path) -> dict[str, float]:
    """The handler's `handle()` on batches of 8 in process, and one TorchServe worker over REST, 8 clients."""
    pipeline = InProcessPipeline(export_dir, handler_settings={"torch_threads": threads})
    pipeline.run(jpegs, batch_size=BATCH, batches=2)  # warm-up: the first batches of a size are slow
    in_process = pipeline.run(jpegs, batch_size=BATCH, batches=batches)
    with ServedModel(export_dir, work_dir) as served:
        served.deploy(ServedConfig(workers=1, threads=threads, batch_size=BATCH, max_batch_delay_ms=5))
        served.warm_up(jpegs)
        rest = served.measure("rest", jpegs, concurrency=BATCH, requests=requests, warmup=BATCH)
    if rest.extra.get("errors"):
        raise SystemExit(f"{rest.extra['errors']} served requests failed: {rest.extra.get('first_error')}")
    return {"in_process_images_per_s": round(in_process.images_per_s, 2),
            "served_images_per_s": round(rest.images_per_s, 2)}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Images/s of an exported model, in process and served.")
    parser.add_argument("--export-dir", required=True)
    parser.add_argument("--annotations", required=True, help="held-out caption file: its first 16 images are sent")
    parser.add_argument("--images", required=True)
    parser.add_argument("--work-dir", required=True, help="archive and server folders")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--requests", type=int, default=160)
    return parser


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    jpegs = held_out_jpegs(args.annotations, args.images, 16)
    print(json.dumps(speed_of(Path(args.export_dir), jpegs, threads=args.threads, batches=args.batches,
                              requests=args.requests, work_dir=Path(args.work_dir))), flush=True)
