"""The training tools refuse what their user can fix in one line: numbers an option cannot mean, caption
files that are not caption files, and say so before doing any work."""

from __future__ import annotations

import subprocess
import sys

import pytest

REQUIRED = {  # each parser's required options, so only the option under test is wrong
    "training.train": ["--annotations", "a.json", "--images", "img"],
    "training.evaluate": ["--annotations", "a.json", "--images", "img"],
    "training.gallery": ["--annotations", "a.json", "--images", "img"],
    "training.shapes_dataset": ["--out", "out"],
    "training.video_data": [],
    "training.domain_calibration": [],
    "training.domain_report": [],
}

REFUSED = [  # (module, option, value, what argparse says of it)
    ("training.train", "--epochs", "0", "must be at least 1, got 0"),
    ("training.train", "--epochs", "-2", "must be at least 1, got -2"),
    ("training.train", "--batch-size", "0", "must be at least 1"),
    ("training.train", "--batch-size", "-4", "must be at least 1"),
    ("training.train", "--captions-per-image", "0", "must be at least 1"),
    ("training.train", "--workers", "-1", "must be 0 or more, got -1"),
    ("training.train", "--num-frames", "0", "must be at least 1"),
    ("training.train", "--max-steps", "0", "must be at least 1"),
    ("training.train", "--lr", "0", "must be above 0"),
    ("training.train", "--val-fraction", "1", "must be at least 0 and below 1, got 1"),
    ("training.train", "--epochs", "two", "expected a whole number, got 'two'"),
    ("training.evaluate", "--batch-size", "0", "must be at least 1"),
    ("training.evaluate", "--beam-size", "0", "must be at least 1"),
    ("training.evaluate", "--limit", "-8", "must be at least 1, got -8"),
    ("training.domain_calibration", "--fit-max-images", "-30", "must be at least 1, got -30"),
    ("training.domain_calibration", "--fit-max-images", "0", "must be at least 1, got 0"),
    ("training.domain_calibration", "--domain-batch-size", "0", "must be at least 1"),
    ("training.domain_report", "--domain-batch-size", "0", "must be at least 1"),
    ("training.gallery", "--count", "0", "must be at least 1"),
    ("training.shapes_dataset", "--train", "-5", "must be 0 or more, got -5"),
    ("training.shapes_dataset", "--canvas", "8", "must be from 32 to 2048, got 8"),
    ("training.shapes_dataset", "--canvas", "4096", "must be from 32 to 2048, got 4096"),
    ("training.video_data", "--frame-size", "63", "must be even, got 63"),
    ("training.video_data", "--frame-size", "8", "must be from 16 to 1024, got 8"),
]


def parse(module: str, argv: list[str]):
    """The module's own parser on `argv`, as its command line reads it."""
    import importlib

    tool = importlib.import_module(module)
    return tool.get_args_parser().parse_args(argv)


@pytest.mark.parametrize(("module", "option", "value", "words"), REFUSED)
def test_a_number_an_option_cannot_mean_is_refused_naming_the_option(module, option, value, words, capsys):
    with pytest.raises(SystemExit) as stop:
        parse(module, [*REQUIRED[module], f"{option}={value}"])
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: argument {option}: {words}" in last, last


@pytest.mark.parametrize(("module", "option", "value", "read"), [
    ("training.train", "--workers", "0", 0),
    ("training.train", "--val-fraction", "0", 0.0),
    ("training.evaluate", "--top-k", "0", 0),
    ("training.gallery", "--photos", "0", 0),
    ("training.shapes_dataset", "--val", "0", 0),
    ("training.shapes_dataset", "--canvas", "32", 32),
    ("training.video_data", "--frame-size", "16", 16),
    ("training.domain_report", "--fresh-scenes", "0", 0),
])
def test_the_numbers_that_mean_none_or_the_smallest_size_are_still_taken(module, option, value, read):
    args = parse(module, [*REQUIRED[module], option, value])
    assert getattr(args, option[2:].replace("-", "_")) == read


def test_the_training_command_refuses_zero_epochs_before_reading_anything(tmp_path):
    run = subprocess.run([sys.executable, "-m", "training.train", "--annotations", str(tmp_path / "none.json"),
                          "--images", str(tmp_path), "--epochs", "0", "--output-dir", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].endswith("error: argument --epochs: must be at least 1, got 0")
    assert not (tmp_path / "out").exists()


def test_the_domain_report_with_nothing_in_domain_to_score_says_so(tmp_path, capsys):
    from training import domain_report

    with pytest.raises(SystemExit) as stop:
        domain_report.main(["--export-dir", str(tmp_path / "none"), "--fresh-scenes", "0"])
    assert stop.value.code == 2
    assert "no in-domain images to score" in capsys.readouterr().err.strip().splitlines()[-1]


def test_fuzz_batches_and_the_tiny_models_names_are_checked(capsys):
    from ops import fuzz

    for batches in ("0", "-3"):
        with pytest.raises(SystemExit) as stop:
            fuzz.main(["--batches", batches])
        assert stop.value.code == 2
        assert f"argument --batches: must be at least 1, got {batches}" in capsys.readouterr().err
    for option, name, known in (("--backbone", "resnet99", "resnet18"), ("--decoder", "transformer", "soft_attention")):
        run = subprocess.run([sys.executable, "-m", "ops.tiny_model", option, name, "--out", "/nonexistent/x"],
                             capture_output=True, text=True, timeout=120)
        last = run.stderr.strip().splitlines()[-1]
        assert run.returncode == 2 and f"invalid choice: '{name}'" in last and known in last, run.stderr
