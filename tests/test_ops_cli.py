"""The operations commands' lines (soak, drill, overload, load, server, fuzz, archive): what their user can get
wrong is refused in one line before a model is packed or a TorchServe started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops import archive, drill, fuzz, load, overload, server, soak
from ops.load import closed_loop
from ops.soak import SoakReport

ROOT = Path(__file__).resolve().parent.parent

PARSERS = {
    "soak": lambda argv: soak.parse_args(argv),  # with the check comparing --kill-worker-after to --requests
    "drill": lambda argv: drill.get_args_parser().parse_args(argv),
    "overload": lambda argv: overload.get_args_parser().parse_args(argv),
    "load": lambda argv: load.get_args_parser().parse_args(argv),
    "archive": lambda argv: archive.get_args_parser().parse_args(argv),
}

REFUSED = [  # (tool, command line, what argparse says of it)
    ("soak", ["--bad-fraction", "1.5"], "argument --bad-fraction: must be from 0 to 1, got 1.5"),
    ("soak", ["--bad-fraction=-0.1"], "argument --bad-fraction: must be 0 or more"),
    ("soak", ["--concurrency", "0"], "argument --concurrency: must be at least 1, got 0"),
    ("soak", ["--requests", "0"], "argument --requests: must be at least 1, got 0"),
    ("soak", ["--workers", "0"], "argument --workers: must be at least 1, got 0"),
    ("soak", ["--kill-worker-after", "0"], "argument --kill-worker-after: must be at least 1, got 0"),
    ("soak", ["--requests", "40", "--kill-worker-after", "100"],
     "argument --kill-worker-after: must be below --requests (40), got 100"),
    ("soak", ["--requests", "40", "--kill-worker-after", "40"],
     "argument --kill-worker-after: must be below --requests (40), got 40"),
    ("soak", ["--max-memory-growth-percent=-1"], "argument --max-memory-growth-percent: must be 0 or more"),
    ("drill", ["--concurrency", "0"], "argument --concurrency: must be at least 1, got 0"),
    ("drill", ["--dwell-requests", "0"], "argument --dwell-requests: must be at least 1, got 0"),
    ("drill", ["--attempt-timeout", "0"], "argument --attempt-timeout: must be above 0"),
    ("drill", ["--give-up-after=-5"], "argument --give-up-after: must be above 0"),
    ("overload", ["--concurrency", "0"], "argument --concurrency: must be at least 1, got 0"),
    ("overload", ["--requests", "-3"], "argument --requests: must be at least 1, got -3"),
    ("overload", ["--job-queue-size", "0"], "argument --job-queue-size: must be at least 1, got 0"),
    ("overload", ["--workers", "0"], "argument --workers: must be at least 1, got 0"),
    ("load", ["--concurrency", "0"], "argument --concurrency: must be at least 1, got 0"),
    ("load", ["--requests", "0"], "argument --requests: must be at least 1, got 0"),
    ("load", ["--time-limit", "0"], "argument --time-limit: must be above 0"),
    ("archive", ["--model-name", "a b/c"], "argument --model-name: 'a b/c' is not a model name"),
    ("archive", ["--model-name", ""], "argument --model-name: '' is not a model name"),
    ("archive", ["--model-name=-captioner"], "argument --model-name: '-captioner' is not a model name"),
    ("archive", ["--model-name", "légende"], "argument --model-name: 'légende' is not a model name"),
    ("archive", ["--version", ""], "argument --version: '' is not a version"),
    ("archive", ["--version", "1 0"], "argument --version: '1 0' is not a version"),
    ("archive", ["--version", "1/0"], "argument --version: '1/0' is not a version"),
]


@pytest.mark.parametrize(("tool", "argv", "words"), REFUSED)
def test_an_option_its_run_cannot_mean_is_refused_naming_the_option(tool, argv, words, capsys):
    with pytest.raises(SystemExit) as stop:
        PARSERS[tool](argv)
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: {words}" in last, last


@pytest.mark.parametrize(("tool", "argv", "option", "read"), [
    ("soak", ["--bad-fraction", "0"], "bad_fraction", 0.0),
    ("soak", ["--bad-fraction", "1"], "bad_fraction", 1.0),
    ("soak", ["--requests", "40", "--kill-worker-after", "39"], "kill_worker_after", 39),
    ("soak", ["--max-memory-growth-percent", "0"], "max_memory_growth_percent", 0.0),
    ("drill", ["--concurrency", "1"], "concurrency", 1),
    ("overload", ["--job-queue-size", "1"], "job_queue_size", 1),
    ("load", ["--concurrency", "1"], "concurrency", 1),
    ("archive", ["--model-name", "captioner_v2.video-1"], "model_name", "captioner_v2.video-1"),
    ("archive", ["--version", "2.0-rc1"], "version", "2.0-rc1"),
])
def test_the_smallest_and_largest_values_an_option_can_mean_are_taken(tool, argv, option, read):
    assert getattr(PARSERS[tool](argv), option) == read


def test_a_soak_whose_kill_point_was_never_reached_reports_no_kill_and_still_compares_memory():
    report = SoakReport(requests=40, answered=40, worker_memory_mb={"start": 100.0, "middle": 101.0, "end": 102.0},
                        kill={})
    assert report.failures() == []
    assert report.memory_growth_mb == pytest.approx(2.0)
    figures = report.figures()
    assert "worker_kill" not in figures and figures["worker_memory_mb"]["growth"] == 2.0


def test_a_soak_with_a_kill_and_no_new_worker_still_fails():
    report = SoakReport(requests=4, answered=4, kill={"pid": 7, "new_pid": None, "worker_ready_s": None})
    assert "no new worker became ready after the kill" in report.failures()
    assert report.memory_growth_mb is None  # other workers at the end than at the start


def test_a_load_of_no_clients_is_refused_instead_of_sending_nothing():
    with pytest.raises(ValueError, match="concurrency must be at least 1, got 0"):
        closed_loop(lambda: None, requests=10, concurrency=0)


def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The single line a user's mistake ends with (exit status 1, no traceback)."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("tool", ["ops.soak", "ops.drill", "ops.overload"])
def test_a_load_run_without_an_export_says_so_in_one_line(tool, tmp_path):
    line = one_line_error(run(tool, "--export-dir", str(tmp_path / "none")))
    assert line == f"error: no exported model in {tmp_path / 'none'}; run `make model` first, or pass --export-dir"


def test_the_load_command_has_a_help_and_says_when_no_server_runs(tmp_path):
    helped = run("ops.load", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage:"), helped.stderr
    for words in ("--workdir", "--requests", "--concurrency", "running"):
        assert words in helped.stdout
    line = one_line_error(run("ops.load", "--workdir", str(tmp_path)))
    assert line.startswith(f"error: no TorchServe runs from {tmp_path}")


def test_stopping_or_asking_about_a_server_does_not_read_the_config(tmp_path, capsys):
    workdir = tmp_path / "serve"
    assert server.main(["stop", "--workdir", str(workdir), "--config", str(tmp_path / "nope")]) == 0
    assert server.main(["status", "--workdir", str(workdir), "--config", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().out.splitlines() == ["TorchServe was not running", "not running"]
    assert not workdir.exists()


def test_starting_with_a_missing_config_or_model_store_says_so_in_one_line(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    line = one_line_error(run("ops.server", "start", "--workdir", str(tmp_path / "serve"), "--model-store",
                              str(store), "--config", str(tmp_path / "nope")))
    assert line == f"error: no TorchServe config at {tmp_path / 'nope'}; pass --config config.properties"
    with pytest.raises(FileNotFoundError, match="no model store at .*; run `make mar` first"):
        server.main(["start", "--workdir", str(tmp_path / "serve"), "--model-store", str(tmp_path / "none")])
    assert not (tmp_path / "serve").exists()


def test_starting_a_server_where_one_runs_says_so_in_one_line(tmp_path):
    workdir, store = tmp_path / "serve", tmp_path / "store"
    store.mkdir()
    # The PID file names a live process (this one), as TorchServe's would: `start` must stop at it.
    (workdir / "tmp").mkdir(parents=True)
    (workdir / "tmp" / ".model_server.pid").write_text(str(os.getpid()))
    line = one_line_error(run("ops.server", "start", "--workdir", str(workdir), "--model-store", str(store),
                              "--config", str(ROOT / "config.properties")))
    assert line.startswith(f"error: TorchServe already runs from {workdir.resolve()} (pid {os.getpid()}); stop it")
    assert not (workdir / "config.properties").exists()


def test_fuzz_refuses_strategies_given_with_no_names(capsys):
    with pytest.raises(SystemExit) as stop:
        fuzz.main(["--strategies"])
    assert stop.value.code == 2
    assert "argument --strategies: expected at least one argument" in capsys.readouterr().err


def test_the_load_command_runs_against_the_server_started_from_its_workdir(registered, torchserve, capsys):
    """`ops.load --workdir` of a running server: its URLs and tokens come from that folder."""
    assert load.main(["--workdir", str(torchserve.workdir), "--requests", "4", "--concurrency", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["requests"] == 4 and summary["model"] == "captioner", summary
