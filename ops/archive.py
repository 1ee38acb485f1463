"""Build the `.mar`: stage handler/, model/ and an export folder, then run torch-model-archiver.

    python -m ops.archive --export-dir build/export --out build/model_store --version 1.0

`--extra-files` copies a folder's *contents* to the archive root, so the
packages are staged under their own names first:

    stage/handler/...  stage/model/...  stage/config.json  stage/vocab.json  stage/model.safetensors
    (and stage/domain.safetensors when the export has domain statistics)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from model.export_format import EXPORT_FILES, export_file_names
from training.cli import user_errors

ROOT = Path(__file__).resolve().parent.parent
HANDLER_FILE = ROOT / "handler" / "caption_handler.py"
MODEL_CONFIG = ROOT / "handler" / "model-config.yaml"
PACKAGES = ("handler", "model")


CALIBRATION_FOLDER = "calibration"  # read by the handler for `precision: int8`


def stage(export_dir: Path, stage_dir: Path) -> Path:
    """Copy the code packages and the export into a fresh staging folder."""
    missing = [name for name in EXPORT_FILES if not (export_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{export_dir} lacks {', '.join(missing)}; run `make model` first")
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.yaml")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, stage_dir / package, ignore=ignore)
    for name in export_file_names(export_dir):  # the optional domain statistics too, when present
        shutil.copy2(export_dir / name, stage_dir / name)
    calibration = export_dir / CALIBRATION_FOLDER  # int8's calibration images, when the export has them
    if calibration.is_dir():
        shutil.copytree(calibration, stage_dir / CALIBRATION_FOLDER)
    return stage_dir


def build_archive(
    export_dir: Path | str,
    out_dir: Path | str,
    *,
    model_name: str = "captioner",
    version: str = "1.0",
    config_file: Path | str = MODEL_CONFIG,
    stage_root: Path | str | None = None,
    requirements_file: Path | str | None = None,
    archive_format: str = "default",
) -> Path:
    """Stage and archive; returns the path of `<out_dir>/<model_name>.mar` (overwritten if present).

    `requirements_file` is packed for TorchServe's per-model `pip install`, which this
    project's config.properties turns off (the tests use it to show that it stays off).
    `archive_format="no-archive"` writes the folder `<out_dir>/<model_name>/` instead of a zip:
    TorchServe registers it by name without unpacking, and it is quick to write.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage_dir = stage(Path(export_dir), Path(stage_root or out_dir.parent / "mar_stage") / f"{model_name}-{version}")
    command = [
        str(Path(sys.executable).parent / "torch-model-archiver"),
        "--model-name", model_name,
        "--version", version,
        "--handler", str(HANDLER_FILE),
        "--extra-files", str(stage_dir),
        "--config-file", str(config_file),
        "--export-path", str(out_dir),
        "--archive-format", archive_format,
        "--force",
    ]
    if requirements_file is not None:
        command += ["--requirements-file", str(requirements_file)]
    # The archiver copies files into $TMPDIR/<model_name> before zipping: a private TMPDIR
    # keeps two builds of the same model name (parallel test runs, CI) from mixing files.
    private_tmp = stage_dir.parent / f"tmp-{model_name}-{version}"
    shutil.rmtree(private_tmp, ignore_errors=True)
    private_tmp.mkdir(parents=True)
    subprocess.run(command, check=True, env={**os.environ, "TMPDIR": str(private_tmp)})
    shutil.rmtree(private_tmp, ignore_errors=True)
    return out_dir / (model_name if archive_format == "no-archive" else f"{model_name}.mar")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Pack an exported captioner into a TorchServe .mar")
    parser.add_argument("--export-dir", default="build/export")
    parser.add_argument("--out", default="build/model_store", help="model store folder")
    parser.add_argument("--model-name", default="captioner")
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--config-file", default=str(MODEL_CONFIG), help="model-config.yaml to pack")
    return parser


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with user_errors():
        path = build_archive(
            args.export_dir, args.out, model_name=args.model_name, version=args.version, config_file=args.config_file
        )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
