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
        "--precisions", "fp32,bf16", "--agreement-export", "none",
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
    assert [(row["precision"], row["batch_size"]) for row in results["in_process"]] == [
        ("fp32", 1), ("fp32", 4), ("bf16", 1), ("bf16", 4)]
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
        assert [(row["precision"], row["concurrency"]) for row in rows] == [
            ("fp32", 1), ("fp32", 4), ("bf16", 1), ("bf16", 4)]
        for row in rows:
            assert row["errors"] == 0, row["runs"]
            assert row["images_per_s"] > 0 and _is_latency(row["latency_ms"])
            assert row["runs"][0]["images"] == row["requests"]
            assert row["server_cpu_ms_per_image"] > 0


def test_each_served_round_ends_with_the_in_process_runs_the_targets_compare_with(bench_run):
    _, results = bench_run
    (round_,) = results["served"]["rounds"]  # --repeats 1
    served = [(r["precision"], r["protocol"], r["concurrency"]) for r in round_ if r["part"] == "served"]
    assert served == [(p, protocol, c) for p in ("fp32", "bf16") for protocol in ("rest", "grpc") for c in (1, 4)]
    references = [(r["precision"], r["batch_size"]) for r in round_ if r["part"] == "in_process"]
    assert references == [("fp32", 4), ("fp32", 1), ("bf16", 4), ("bf16", 1)], "the served batch size, then 1"
    assert [r["part"] for r in round_][-1] == "baseline"
    assert all(r["images_per_s"] > 0 and r["p50_ms"] > 0 for r in round_)
    rest_busy = next(r for r in round_ if r["part"] == "served" and r["protocol"] == "rest" and r["concurrency"] == 4
                     and r["precision"] == results["precision"]["auto"])
    in_process = next(r for r in round_ if r["part"] == "in_process" and r["batch_size"] == 4
                      and r["precision"] == results["precision"]["auto"])
    assert results["targets"][0]["measured"] == round(rest_busy["images_per_s"] / in_process["images_per_s"], 3)


def test_a_paired_ratio_is_the_median_of_the_rounds_that_measured_both_sides():
    from bench.paired import paired_ratio

    def served(ips):
        return {"part": "served", "concurrency": 32, "images_per_s": ips}

    def alone(ips):
        return {"part": "in_process", "batch_size": 8, "images_per_s": ips}

    rounds = [[served(8.0), alone(10.0)], [served(4.0), alone(8.0)], [served(9.0), alone(10.0)], [served(100.0)]]
    ratio = paired_ratio(rounds, "images_per_s", {"part": "served", "concurrency": 32},
                         {"part": "in_process", "batch_size": 8})
    # Per round 0.8, 0.5, 0.9; the fourth round lacks a side, so it does not count.
    assert ratio == {"median": 0.8, "rounds": [0.8, 0.5, 0.9]}
    rounds[1][0]["images_per_s"] = 2.0
    assert paired_ratio(rounds, "images_per_s", {"part": "served"}, {"part": "in_process"})["rounds"][1] == 0.25
    assert paired_ratio(rounds, "images_per_s", {"part": "served"}, {"part": "baseline"}) is None


def test_the_tuning_latency_check_calls_both_sides_in_turn_on_the_same_image():
    from bench.paired import alternating_latencies

    calls = []
    served, in_process = (lambda jpeg: calls.append(("served", jpeg))), (lambda jpeg: calls.append(("in process", jpeg)))
    served_s, in_process_s = alternating_latencies(served, in_process, [b"a", b"b"], pairs=3, warmup_pairs=1)
    assert len(served_s) == len(in_process_s) == 3, "the warm-up pair is not timed"
    assert all(s >= 0 for s in served_s + in_process_s)
    # Each image goes to both sides, and which side goes first alternates, so neither is always first.
    assert calls == [("served", b"a"), ("in process", b"a"), ("in process", b"b"), ("served", b"b"),
                     ("served", b"a"), ("in process", b"a"), ("in process", b"b"), ("served", b"b")]


def test_targets_profile_and_report_are_written(bench_run):
    out, results = bench_run
    # The three serving ratios, and where `auto` picks bf16 here, the three of bf16 against fp32.
    auto = results["precision"]["auto"]
    assert len(results["targets"]) == (6 if auto == "bf16" else 3)
    for target in results["targets"]:
        assert set(target) == {"name", "measured", "per_round", "required", "met"} and target["measured"] > 0
        assert target["per_round"] == [target["measured"]], "one round (--repeats 1): its ratio is the median"
    assert set(results["precision"]["cpu_flags"]) >= {"amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni"}
    assert set(results["profile"]["by_precision"]) == {"fp32", "bf16"}
    assert set(results["profile"]["ms_per_image"]) == {
        "parse_and_decode_image", "resize_normalize", "encode", "decode_words", "respond"}
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "BENCHMARKS.md").read_text()
    assert "## Targets" in report and "## Served through TorchServe" in report and "](bench.png)" in report
    assert "| CPU flags |" in report and f"picked **{auto}**" in report and "## Caption agreement" in report
    assert results["environment"]["torch"] in report and results["command"] in report


def test_caption_agreement_compares_each_precision_with_fp32(tmp_path):
    """On a tiny model and a small generated set: one row per precision, fp32 agreeing with itself."""
    import torch

    from bench.agreement import caption_agreement
    from tests.helpers import write_tiny_export
    from training.shapes_dataset import generate

    data = generate(tmp_path / "shapes", train=8, val=12, seed=3, max_objects=3, canvas=64)
    export = write_tiny_export(tmp_path / "export", seed=1)
    result = caption_agreement(export, data, tmp_path / "work", torch.device("cpu"), 1,
                               variants=["fp32", "bf16"], log=lambda _: None)
    rows = {row["precision"]: row for row in result["rows"]}
    assert set(rows) == {"fp32", "bf16"} and all(row["images"] == 12 for row in rows.values())
    assert rows["fp32"]["identical_to_fp32"] == 1.0 and rows["fp32"]["accuracy_drop"] == 0
    assert 0 <= rows["bf16"]["identical_to_fp32"] <= 1 and 0 <= rows["bf16"]["attribute_accuracy"] <= 1
    assert sorted((tmp_path / "work" / "export" / "calibration").iterdir()), "training images to calibrate int8 on"


def test_gpu_script_without_cuda_writes_a_report_and_exits_0(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would measure it")
    out_json, out_md = tmp_path / "r.json", tmp_path / "B.md"
    finished = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--out-json", str(out_json), "--out-md", str(out_md)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "sees no CUDA device" in json.loads(out_json.read_text())["no_device"]
    assert "Nothing measured" in out_md.read_text()


def test_gpu_script_refuses_bad_batch_sizes():
    finished = subprocess.run([sys.executable, "-m", "bench.gpu", "--batch-sizes", "0,8"], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode != 0 and "--batch-sizes" in finished.stderr


def test_gpu_script_parts_run_on_the_cpu(tmp_path):
    """The parts that have a CPU path (the handler in process, JPEG decoding) run and give figures."""
    import argparse

    import torch

    from bench import gpu
    from bench.inputs import jpeg_set
    from tests.helpers import write_tiny_export

    args = argparse.Namespace(batch_sizes="1,2", precisions="fp32,bf16", repeats=1)
    export = write_tiny_export(tmp_path / "export", seed=1)
    rows = gpu.in_process(args, torch.device("cpu"), export, jpeg_set(4))
    assert [(r["precision"], r["batch_size"]) for r in rows] == [("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)]
    assert all(r["images_per_s"] > 0 for r in rows)
    decoded = gpu.jpeg_decoding(args, torch.device("cpu"), 32, sizes=(((160, 120), 2),))
    assert decoded[0]["size"] == "160x120" and decoded[0]["pil_ms_per_image"] > 0 and decoded[0]["nvjpeg_ms_per_image"] > 0
    assert "Handler in process" in gpu.markdown({"in_process": rows, "jpeg_decoding": decoded})


def test_a_precision_may_be_the_default_only_if_it_keeps_captions_and_accuracy():
    from bench.report import may_be_default

    assert may_be_default({"identical_to_fp32": 0.997, "accuracy_drop": 0.0})
    assert not may_be_default({"identical_to_fp32": 0.95, "accuracy_drop": -0.003}), "changes 5% of the captions"
    assert not may_be_default({"identical_to_fp32": 0.99, "accuracy_drop": 0.0067}), "loses 0.67 point"


def test_tuning_picks_the_lowest_latency_among_the_fastest_that_meet_the_latency_target():
    from bench.run import pick_config

    def entry(workers, threads, images_per_s, p50_ms, against_in_process):
        return {"config": {"workers": workers, "threads": threads, "batch_size": 8, "max_batch_delay_ms": 5},
                "images_per_s_at_max_concurrency": images_per_s, "p50_ms_at_concurrency_1": p50_ms,
                "p50_alone_vs_in_process": against_in_process}

    slow_alone = entry(2, 1, 5.60, 456, 1.30)  # the fastest, but a lone request misses the target
    tie_high = entry(1, 2, 5.20, 420, 1.05)
    tie_low = entry(2, 2, 5.00, 382, 0.98)  # within 5% of 5.20: the tie goes to its lower p50
    behind = entry(1, 1, 4.00, 300, 0.80)
    picked = pick_config([slow_alone, tie_high, tie_low, behind, {"config": {}, "failed": "timeout"}])
    assert (picked.workers, picked.threads) == (2, 2)
    # The target holds in every pass: a configuration that met it on average only is passed over.
    flattered = {**slow_alone, "p50_alone_vs_in_process": 1.2,
                 "passes": [{"p50_alone_vs_in_process": 1.04}, {"p50_alone_vs_in_process": 1.38}]}
    picked = pick_config([flattered, tie_high, behind])
    assert (picked.workers, picked.threads) == (1, 2)
    # When no configuration meets the latency target, the fastest of all still serves.
    picked = pick_config([{**e, "p50_alone_vs_in_process": 2.0} for e in (slow_alone, tie_high, behind)])
    assert (picked.workers, picked.threads) == (2, 1)
    # When none could start, the run stops saying why each failed.
    with pytest.raises(RuntimeError, match="could start.*2 workers: startupTimeout"):
        pick_config([{"config": {}, "label": "2 workers", "failed": "startupTimeout"}])
