"""Build the `.mar`: stage handler/, model/ and an export folder, then run torch-model-archiver.

    python -m ops.archive --export-dir build/export --out build/model_store --version 1.0

`--extra-files` copies a folder's *contents* to the archive root, so the
packages are staged under their own names first:

    stage/handler/...  stage/model/...  stage/config.json  stage/vocab.json  stage/model.safetensors
    (and stage/domain.safetensors when the export has domain statistics)

Before anything is staged, the export is loaded as the worker will load it
(weights against config, vocabulary, domain statistics) and the `captioner:`
section of the model-config.yaml is checked (`handler/settings.py`): a
misspelt setting or a value the worker would refuse stops the build here, with
one line, instead of at registration, when the worker dies or runs on defaults.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from handler.settings import (
    CALIBRATION_FOLDER, SETTINGS_KEY, calibration_files, calibration_folder, settings_problems,
)
from model.export_format import export_file_names, load_exported_captioner, read_domain_statistics
from training.cli import user_errors

ROOT = Path(__file__).resolve().parent.parent
HANDLER_FILE = ROOT / "handler" / "caption_handler.py"
MODEL_CONFIG = ROOT / "handler" / "model-config.yaml"
PACKAGES = ("handler", "model")


class ArchiveError(ValueError):
    """The model-config.yaml to pack holds settings the worker would ignore or refuse."""


def check_inputs(export_dir: Path, config_file: Path) -> str:
    """Load the export as a worker would, and check the settings file; raises what a worker would meet.

    Returns the export's folder of int8 calibration images the settings name (`calibration_images`).

    Raises:
        FileNotFoundError: the export lacks a file, or there is no `config_file`.
        ExportError: the weights do not fit config.json, or the domain statistics do not fit the model.
        ArchiveError: `config_file` is not YAML, or its `captioner:` section has unknown keys or bad values.
    """
    model, _ = load_exported_captioner(export_dir)  # names the files a folder lacks
    read_domain_statistics(export_dir, model.encoder.domain_layout)
    if not config_file.is_file():
        raise FileNotFoundError(f"no model-config.yaml at {config_file}")
    try:
        model_yaml = yaml.safe_load(config_file.read_text())
    except yaml.YAMLError as error:
        raise ArchiveError(f"{config_file} is not valid YAML: {error}") from None
    problems = settings_problems(model_yaml or {})
    if problems:
        raise ArchiveError(f"{config_file}: " + "; ".join(problems))
    section = (model_yaml or {}).get(SETTINGS_KEY) or {}
    int8 = str(section.get("precision", "")).strip().lower() == "int8"
    if int8 and not calibration_files(export_dir, section):
        raise ArchiveError(f"{config_file}: precision int8 calibrates on the images in "
                           f"{export_dir / calibration_folder(section)}, and it has none; put held-out JPEGs or PNGs "
                           "there, or choose precision bf16 or fp32")
    return calibration_folder(section)


def stage(export_dir: Path, stage_dir: Path, calibration: str = CALIBRATION_FOLDER) -> Path:
    """Copy the code packages and the export (checked by `check_inputs`) into a fresh staging folder."""
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.yaml")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, stage_dir / package, ignore=ignore)
    for name in export_file_names(export_dir):  # the optional domain statistics too, when present
        shutil.copy2(export_dir / name, stage_dir / name)
    if (export_dir / calibration).is_dir():  # int8's calibration images, when the export has them
        shutil.copytree(export_dir / calibration, stage_dir / calibration)
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
    check: bool = True,
) -> Path:
    """Check, stage and archive; returns the path of `<out_dir>/<model_name>.mar` (overwritten if present).

    `requirements_file` is packed for TorchServe's per-model `pip install`, which this
    project's config.properties turns off (the tests use it to show that it stays off).
    `check=False` packs without `check_inputs`, as an archive made by other means would be
    (the tests use it to show what the worker does with an archive this tool refuses).
    `archive_format="no-archive"` writes the folder `<out_dir>/<model_name>/` instead of a zip:
    TorchServe registers it by name without unpacking, and it is quick to write.
    """
    out_dir = Path(out_dir)
    calibration = check_inputs(Path(export_dir), Path(config_file)) if check else CALIBRATION_FOLDER
    out_dir.mkdir(parents=True, exist_ok=True)
    stage_dir = stage(Path(export_dir), Path(stage_root or out_dir.parent / "mar_stage") / f"{model_name}-{version}",
                      calibration)
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
    def model_name(text: str) -> str:
        # torch-model-archiver's own rule (model_archiver's check_model_name_regex_or_exit:
        # ^[A-Za-z0-9][A-Za-z0-9_\-.]*$), which TorchServe's management API shares.
        if not (text[:1].isalnum() and all(c.isascii() and (c.isalnum() or c in "_-.") for c in text)):
            raise argparse.ArgumentTypeError(f"{text!r} is not a model name: use letters, digits, '_', '-' and '.', "
                                             "starting with a letter or digit")
        return text

    def version(text: str) -> str:
        # The version is a segment of the management API's URLs (/models/<name>/<version>).
        if not text or any(c.isspace() or c == "/" for c in text):
            raise argparse.ArgumentTypeError(f"{text!r} is not a version: give one such as 1.0, without spaces or '/'")
        return text

    parser = argparse.ArgumentParser(description="Pack an exported captioner into a TorchServe .mar")
    parser.add_argument("--export-dir", default="build/export")
    parser.add_argument("--out", default="build/model_store", help="model store folder")
    parser.add_argument("--model-name", type=model_name, default="captioner", help="letters, digits, '_', '-' and '.'")
    parser.add_argument("--version", type=version, default="1.0")
    parser.add_argument("--config-file", default=str(MODEL_CONFIG), help="model-config.yaml to pack")
    return parser


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    with user_errors():
        try:
            path = build_archive(
                args.export_dir, args.out, model_name=args.model_name, version=args.version,
                config_file=args.config_file,
            )
        except ArchiveError as error:
            raise SystemExit(f"error: {error}") from None
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
