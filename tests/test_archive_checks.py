"""`ops.archive` refuses what a worker could not load or would silently ignore, before packing anything."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from handler.caption_handler import CaptionHandler
from handler.settings import known_settings, settings_problems
from ops.tiny_model import write_tiny_export
from tests.helpers import torchserve_context

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load((ROOT / "handler" / "model-config.yaml").read_text())


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return write_tiny_export(tmp_path_factory.mktemp("archive-checks") / "export", seed=1, image_size=16)


def archive(export_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ops.archive", "--export-dir", str(export_dir), "--out", str(out), *extra],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def settings_file(folder: Path, section: dict) -> Path:
    path = folder / "model-config.yaml"
    path.write_text(yaml.safe_dump({**SHIPPED, "captioner": {**SHIPPED["captioner"], **section}}))
    return path


def test_the_shipped_settings_are_all_known_and_usable():
    assert settings_problems(SHIPPED) == []
    assert set(SHIPPED["captioner"]) <= set(known_settings())


@pytest.mark.parametrize("section, words", [
    ({"precison": "bf16"}, "unknown setting `captioner.precison` (the handler would ignore it); did you mean `precision`?"),
    ({"max_beam_size": "lots"}, "invalid literal for int() with base 10: 'lots'"),
    ({"max_video_seconds": "soon"}, "could not convert string to float: 'soon'"),
    ({"precision": "fp16"}, "precision must be one of auto, fp32, bf16, int8, got 'fp16'"),
    ({"vocabulary_projection": "int4"}, "vocabulary_projection must be one of fp32, bf16"),
])
def test_settings_problems_name_the_key_or_value(section, words):
    problems = settings_problems({"captioner": {**SHIPPED["captioner"], **section}})
    assert len(problems) == 1 and words in problems[0], problems


def test_settings_that_are_not_a_mapping_are_a_problem():
    assert settings_problems({"captioner": 3}) == ["`captioner:` must be a mapping of settings, got int"]
    assert settings_problems(["minWorkers", 1]) == ["model-config.yaml is not a mapping of settings"]
    assert settings_problems({"minWorkers": 1}) == []  # no `captioner:` section: the defaults


def test_a_misspelt_setting_stops_the_build_in_one_line_and_writes_no_archive(export, tmp_path):
    result = archive(export, tmp_path / "store", "--config-file", str(settings_file(tmp_path, {"precison": "bf16"})))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "did you mean `precision`?" in result.stderr
    assert not (tmp_path / "store" / "captioner.mar").exists()


def test_int8_without_calibration_images_stops_the_build(export, tmp_path):
    result = archive(export, tmp_path / "store", "--config-file", str(settings_file(tmp_path, {"precision": "int8"})))
    assert result.returncode == 1 and "precision int8 calibrates on the images in" in result.stderr, result.stderr
    assert not (tmp_path / "store").exists()


def test_an_export_whose_weights_do_not_fit_its_config_is_not_packed(export, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in export.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    config["hidden_size"] *= 2
    (broken / "config.json").write_text(json.dumps(config))
    result = archive(broken, tmp_path / "store")
    assert result.returncode == 1 and "does not fit config.json" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "store").exists()


def test_a_missing_settings_file_is_named(export, tmp_path):
    result = archive(export, tmp_path / "store", "--config-file", str(tmp_path / "nowhere.yaml"))
    assert result.returncode == 1 and f"no model-config.yaml at {tmp_path / 'nowhere.yaml'}" in result.stderr


def test_a_worker_given_an_unknown_setting_anyway_logs_it(export, caplog):
    """An archive packed by other means still says at worker start what it ignores."""
    context, _ = torchserve_context(export, 1, {"captioner": {"precision": "fp32", "torch_thread": 1}})
    with caplog.at_level(logging.WARNING, logger="handler.caption_handler"):
        CaptionHandler().initialize(context)
    assert "model-config.yaml: unknown setting `captioner.torch_thread`" in caplog.text
    assert "did you mean `torch_threads`?" in caplog.text
