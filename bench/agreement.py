"""Caption agreement: does a precision change what the trained model says?

The speed figures use random weights, which cannot show it. Here the trained
default export (`make model`) captions the held-out generated images through
the handler's own `handle()` (real JPEG bytes, greedy decoding) once per
precision, and each precision's captions are compared with fp32's: the share
word for word identical, and the attribute accuracy of each (the caption names
exactly the scene's colour/shape pairs; `training.shapes_dataset`).

int8 calibrates on training images (never the held-out ones), copied into the
`calibration/` folder of a copy of the export, as an archive would carry them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Sequence

import torch

from bench.in_process import InProcessPipeline
from bench.report import may_be_default
from model.export_format import export_file_names
from training.shapes_dataset import names_every_object

DEFAULT_AGREEMENT_EXPORT = "build/export"
DEFAULT_AGREEMENT_DATA = "data/shapes"
CALIBRATION_IMAGES = 64
BATCH = 8


def _split(data_dir: Path, split: str) -> list[dict]:
    annotations = data_dir / "annotations" / f"captions_{split}.json"
    if not annotations.is_file():
        raise SystemExit(f"{annotations} not found; run `make data` (or pass --agreement-export none)")
    return sorted(json.loads(annotations.read_text())["images"], key=lambda image: image["id"])


def staged_export(export_dir: Path, data_dir: Path, work_dir: Path) -> Path:
    """A copy of the export with `calibration/` holding training images."""
    staged = work_dir / "export"
    if staged.exists():
        shutil.rmtree(staged)
    (staged / "calibration").mkdir(parents=True)
    for name in export_file_names(export_dir):
        shutil.copy2(export_dir / name, staged / name)
    for image in _split(data_dir, "train")[:CALIBRATION_IMAGES]:
        shutil.copy2(data_dir / "images" / image["file_name"], staged / "calibration" / image["file_name"])
    return staged


# The variants compared: `captioner:` settings, fp32 first (the reference).
VARIANTS = {
    "fp32": {"precision": "fp32"},
    "bf16": {"precision": "bf16"},
    "int8": {"precision": "int8"},
    "bf16, bf16 vocabulary projection": {"precision": "bf16", "vocabulary_projection": "bf16"},
}


def caption_agreement(export_dir: Path | str, data_dir: Path | str, work_dir: Path | str, device: torch.device,
                      threads: int, *, variants: Sequence[str] = tuple(VARIANTS), limit: int | None = None,
                      log: Callable[[str], None] = print) -> dict:
    """Held-out captions of `export_dir` in each of `variants` (names in VARIANTS), against fp32's."""
    export_dir, data_dir, work_dir = Path(export_dir), Path(data_dir), Path(work_dir)
    if not (export_dir / "config.json").is_file():
        raise SystemExit(f"no trained export in {export_dir}; run `make model` (or pass --agreement-export none)")
    staged = staged_export(export_dir, data_dir, work_dir)
    held_out = _split(data_dir, "val")[:limit]
    jpegs = [(data_dir / "images" / image["file_name"]).read_bytes() for image in held_out]
    captions: dict[str, list[list[str]]] = {}
    start_s: dict[str, float] = {}
    for name in ["fp32", *[v for v in variants if v != "fp32"]]:
        pipeline = InProcessPipeline(staged, str(device), {"torch_threads": threads, **VARIANTS[name]},
                                     max_batch=BATCH)
        start_s[name] = round(pipeline.start_s, 1)
        captions[name] = [body["tokens"] for body in pipeline.handle_in_batches(jpegs, BATCH)]
        log(f"agreement {name}: {len(captions[name])} held-out images captioned")
    reference = captions["fp32"]
    rows = []
    for name, tokens in captions.items():
        identical = sum(a == b for a, b in zip(tokens, reference))
        correct = sum(names_every_object(t, image["objects"]) for t, image in zip(tokens, held_out))
        rows.append({"precision": name, "settings": VARIANTS[name], "images": len(tokens), "identical_to_fp32": round(identical / len(tokens), 4),
                     "attribute_accuracy": round(correct / len(tokens), 4), "worker_start_s": start_s[name]})
    fp32_accuracy = rows[0]["attribute_accuracy"]
    for row in rows:
        row["accuracy_drop"] = round(fp32_accuracy - row["attribute_accuracy"], 4)
        row["may_be_default"] = may_be_default(row)
    return {"export": str(export_dir), "data": str(data_dir), "decoding": "greedy", "rows": rows}
