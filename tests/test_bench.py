"""`python -m bench` in its quick mode on a tiny model: it runs every part and writes well-formed results.

Speed is not checked (the machine running the tests may be busy); what is
checked is that each pipeline captioned every image, that the served part went
through a real TorchServe over REST and gRPC, and that the JSON, the plot and
the Markdown report are complete.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable, "-m", "bench", "--quick", "--model", "tiny", "--repeats", "1",
        "--batch-sizes", "1,4", "--concurrency", "1,4", "--served-config", "1,1,4,5",
        "--work-dir", str(out / "work"), "--out-json", str(out / "results.json"),
        "--out-md", str(out / "BENCHMARKS.md"), "--out-plot", str(out / "bench.png"),
    ]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def _is_latency(summary: dict) -> bool:
    return set(summary) == {"p50", "p90", "p99", "mean"} and 0 < summary["p50"] <= summary["p90"] <= summary["p99"]


def test_in_process_pipelines_are_measured(bench_run):
    _, results = bench_run
    assert results["model"]["vocab_size"] == 40 and results["settings"]["quick"] is True
    assert results["inputs"]["size"] == "640x480"
    baseline = results["baseline"]
    assert baseline["images_per_s"] > 0 and _is_latency(baseline["latency_ms"])
    assert [row["batch_size"] for row in results["in_process"]] == [1, 4]
    for row in results["in_process"]:
        assert row["images_per_s"] > 0 and _is_latency(row["latency_ms"])
        assert 1 <= row["decode_steps"] <= results["model"]["max_length"]
        assert len(row["runs"]) == 1 and row["runs"][0]["images"] >= 2 * row["batch_size"]


def test_served_part_went_through_torchserve(bench_run):
    _, results = bench_run
    served = results["served"]
    assert served["torchserve_description"]["workers"] == served["config"]["workers"]
    assert served["torchserve_description"]["batchSize"] == served["config"]["batch_size"]
    for protocol in ("rest", "grpc"):
        rows = served[protocol]
        assert [row["concurrency"] for row in rows] == [1, 4]
        for row in rows:
            assert row["errors"] == 0, row["runs"]
            assert row["images_per_s"] > 0 and _is_latency(row["latency_ms"])
            assert row["runs"][0]["images"] == row["requests"]
            assert row["server_cpu_ms_per_image"] > 0


def test_targets_profile_and_report_are_written(bench_run):
    out, results = bench_run
    assert len(results["targets"]) == 3
    for target in results["targets"]:
        assert set(target) == {"name", "measured", "required", "met"} and target["measured"] > 0
    assert set(results["profile"]["ms_per_image"]) == {
        "parse_and_decode_image", "resize_normalize", "encode", "decode_words", "respond"}
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "BENCHMARKS.md").read_text()
    assert "## Targets" in report and "## Served through TorchServe" in report and "](bench.png)" in report
    assert results["environment"]["torch"] in report and results["command"] in report
