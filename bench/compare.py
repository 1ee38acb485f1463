"""Backbones and decoders side by side: train each variant with one recipe, evaluate, time, serve.

    make compare                      # the default recipe's budget for every variant (see README)
    python -m bench.compare --finetune-args "..." --decoder-args "..." --out-dir build/compare

Each variant (a backbone and a decoder, `VARIANTS`) is trained by `training.train`
in the default recipe's two stages with the stage arguments given (the Makefile
passes its own FINETUNE_ARGS and DECODER_ARGS, so the recipe is written once),
exported, evaluated by `training.evaluate` on the training set's held-out split
and every `--held-out` set, and timed: training seconds (both stages), images/s
through the handler in process (`bench.in_process`, batches of 8) and served by
TorchServe over REST (one worker, batch 8, 8 clients), both measured by
`bench.variant_speed` in a process of its own. Writes `results.json` and
`results.md` (a markdown table) into `--out-dir` after each variant, and for an
attention model its gallery and per-word maps. `--reuse` keeps the exports of an
earlier run and measures them again (a quiet machine's speed figures without
retraining).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.environment import cpu_model
from ops.server import WORKER_ENV


@dataclass(frozen=True)
class Variant:
    name: str
    backbone: str
    decoder: str

    def finetune_args(self) -> list[str]:
        """Stage 1 trains the variant's backbone; its decoder is the recipe's (FINETUNE_ARGS)."""
        return ["--backbone", self.backbone]

    def decoder_args(self) -> list[str]:
        """Stage 2 trains the variant's decoder on stage 1's frozen backbone."""
        return ["--decoder", self.decoder]


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("resnet34-show_tell", "resnet34", "show_tell"),
        Variant("resnet34-soft_attention", "resnet34", "soft_attention"),
        Variant("resnet18-show_tell", "resnet18", "show_tell"),
        Variant("resnet50-show_tell", "resnet50", "show_tell"),
        Variant("resnet18-soft_attention", "resnet18", "soft_attention"),
        Variant("resnet50-soft_attention", "resnet50", "soft_attention"),
    )
}
DEFAULT_VARIANTS = ("resnet18-soft_attention", "resnet18-show_tell", "resnet34-soft_attention", "resnet50-soft_attention")


def run_module(module: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> str:
    """`python -m module args`, its stderr (progress bars) into `log`; returns stdout; fails loudly."""
    with log.open("a") as errors:
        done = subprocess.run([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=errors, text=True,
                              env=env)
    if done.returncode:
        raise SystemExit(f"{module} {' '.join(args)} failed (exit {done.returncode}); see {log}")
    return done.stdout


def train_variant(variant: Variant, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """The two stages of the recipe; seconds each."""
    data = ["--annotations", args.annotations, "--val-annotations", args.val_annotations, "--images", args.images]
    log = out / "train.log"
    finetune_dir, decoder_dir = out / "finetune", out / "train"
    started = time.perf_counter()
    run_module("training.train", [*data, "--output-dir", str(finetune_dir),
                                  *shlex.split(args.finetune_args), *variant.finetune_args(), "--quiet"], log)
    finetuned = time.perf_counter()
    run_module("training.train", [*data, "--output-dir", str(decoder_dir), "--init-from",
                                  str(finetune_dir / "checkpoint.pt"), *shlex.split(args.decoder_args),
                                  *variant.decoder_args(), "--quiet"], log)
    ended = time.perf_counter()
    run_module("training.export", ["--checkpoint", str(decoder_dir / "checkpoint.pt"), "--out", str(out / "export")], log)
    return {"finetune_s": round(finetuned - started, 1), "decoder_s": round(ended - finetuned, 1),
            "train_s": round(ended - started, 1)}


def evaluate_variant(export_dir: Path, args: argparse.Namespace, log: Path) -> dict[str, dict[str, Any]]:
    """`training.evaluate`'s metrics: "own" (the training set's held-out split) and each `--held-out` set."""
    held_out = [part for name, annotations, images in args.held_out for part in ("--held-out", name, annotations, images)]
    line = run_module("training.evaluate", ["--export-dir", str(export_dir), "--annotations", args.val_annotations,
                                            "--images", args.images, *held_out, "--quiet"], log)
    metrics = json.loads(line.strip().splitlines()[-1])
    names = [name for name, _, _ in args.held_out]
    own = {key: value for key, value in metrics.items() if key not in names}
    return {"own": own, **{name: metrics[name] for name in names}}


def speed_of(export_dir: Path, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """`bench.variant_speed` in a child whose torch threads wait as the served workers' do (PASSIVE)."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", WORKER_ENV["OMP_WAIT_POLICY"])}
    line = run_module("bench.variant_speed", [
        "--export-dir", str(export_dir), "--annotations", args.val_annotations, "--images", args.images,
        "--work-dir", str(out / "served"), "--threads", str(args.threads), "--batches", str(args.batches),
        "--requests", str(args.requests)], out / "speed.log", env=env)
    return json.loads(line.strip().splitlines()[-1])


def attention_pictures(variant: Variant, export_dir: Path, args: argparse.Namespace, out: Path) -> None:
    run_module("training.gallery", ["--export-dir", str(export_dir), "--annotations", args.val_annotations,
                                    "--images", args.images, "--out", str(out / "gallery.png"),
                                    "--attention-out", str(out / "attention.png")], out / "train.log")


def by_objects(metrics: dict[str, Any]) -> str:
    """"0.97 / 0.89 / 0.68": attribute accuracy on images of 1, 2, 3... objects."""
    groups = metrics.get("by_objects") or {}
    return " / ".join(f"{groups[count]['attribute_accuracy']:.2f}" for count in sorted(groups, key=int)) or "-"


def markdown_table(results: list[dict[str, Any]]) -> str:
    sets = list(results[0]["eval"]) if results else []
    header = ["variant", "backbone", "decoder"]
    for name in sets:
        header += [f"{name} attribute acc. (1 / 2 / 3 objects)", f"{name} BLEU-4", f"{name} CIDEr-D"]
    header += ["train s", "in-process img/s", "served img/s"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for entry in results:
        cells = [entry["variant"], entry["backbone"], entry["decoder"]]
        for name in sets:
            metrics = entry["eval"][name]
            cells += [f"{metrics.get('attribute_accuracy', '-')} ({by_objects(metrics)})", str(metrics.get("bleu4", "-")),
                      str(metrics.get("cider", "-"))]
        cells += [str(entry.get(key) if entry.get(key) is not None else "-")
                  for key in ("train_s", "in_process_images_per_s", "served_images_per_s")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train, evaluate and time every backbone x decoder variant.")
    parser.add_argument("--annotations", required=True, help="training caption file")
    parser.add_argument("--val-annotations", required=True, help="the training set's held-out caption file")
    parser.add_argument("--held-out", nargs=3, action="append", default=[], metavar=("NAME", "ANNOTATIONS", "IMAGES"),
                        help="another held-out set to evaluate each variant on (training.evaluate's --held-out)")
    parser.add_argument("--images", required=True)
    parser.add_argument("--finetune-args", required=True, help="stage 1 arguments (the Makefile's FINETUNE_ARGS)")
    parser.add_argument("--decoder-args", required=True, help="stage 2 arguments (the Makefile's DECODER_ARGS)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=sorted(VARIANTS))
    parser.add_argument("--out-dir", default="build/compare")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a variant's export and training seconds from an earlier run into --out-dir "
                             "(its train.json) and only evaluate and time it again")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in process and per served worker")
    parser.add_argument("--batches", type=int, default=10, help="in-process batches of 8 measured")
    parser.add_argument("--requests", type=int, default=160, help="served requests measured")
    return parser


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.variants:
        variant = VARIANTS[name]
        out = out_dir / name
        out.mkdir(parents=True, exist_ok=True)
        print(f"{name}: training" + (" (or reusing its export)" if args.reuse else ""), flush=True)
        entry: dict[str, Any] = {"variant": name, **asdict(variant)}
        entry.pop("name")
        export_dir = out / "export"
        trained = out / "train.json"
        if not (args.reuse and trained.exists() and (export_dir / "config.json").exists()):
            trained.write_text(json.dumps(train_variant(variant, args, out)) + "\n")
        entry.update(json.loads(trained.read_text()))
        entry["eval"] = evaluate_variant(export_dir, args, out / "train.log")
        entry.update(speed_of(export_dir, args, out))
        if variant.decoder == "soft_attention":
            attention_pictures(variant, export_dir, args, out)
        print(json.dumps(entry), flush=True)
        results.append(entry)
        (out_dir / "results.json").write_text(json.dumps(
            {"cpu": cpu_model(), "finetune_args": args.finetune_args, "decoder_args": args.decoder_args,
             "results": results}, indent=2) + "\n")
        (out_dir / "results.md").write_text(markdown_table(results))
    print(f"wrote {out_dir / 'results.md'} and {out_dir / 'results.json'}")
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
