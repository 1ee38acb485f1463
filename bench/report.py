"""Turn one benchmark run's results into the JSON file, the plot and BENCHMARKS.md.

BENCHMARKS.md is generated from the JSON alone, so rerunning `make bench`
rewrites every figure in it; nothing in it is typed by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

THROUGHPUT_VS_IN_PROCESS = 0.8
THROUGHPUT_VS_BASELINE = 1.5
LATENCY_VS_IN_PROCESS = 1.25


def _in_process_at(results: dict, batch_size: int) -> dict | None:
    return next((r for r in results.get("in_process", []) if r["batch_size"] == batch_size), None)


def _served_at(results: dict, protocol: str, concurrency: int) -> dict | None:
    return next((r for r in results.get("served", {}).get(protocol, []) if r["concurrency"] == concurrency), None)


def evaluate_targets(results: dict) -> list[dict[str, Any]]:
    """The issue's three ratios, each measured in this run; a target whose parts were not run is left out."""
    targets = []
    served = results.get("served")
    if not served or not served.get("rest"):
        return targets
    top = max(r["concurrency"] for r in served["rest"])
    busy, alone = _served_at(results, "rest", top), _served_at(results, "rest", 1)
    batch = served["config"]["batch_size"]
    same_batch = _in_process_at(results, batch)
    if same_batch:
        ratio = busy["images_per_s"] / same_batch["images_per_s"]
        targets.append({
            "name": f"served REST throughput at concurrency {top} / in-process at batch {batch} (the served batch size)",
            "measured": round(ratio, 3), "required": f">= {THROUGHPUT_VS_IN_PROCESS}",
            "met": ratio >= THROUGHPUT_VS_IN_PROCESS,
        })
    if results.get("baseline"):
        ratio = busy["images_per_s"] / results["baseline"]["images_per_s"]
        targets.append({
            "name": f"served REST throughput at concurrency {top} / seed-style baseline",
            "measured": round(ratio, 3), "required": f">= {THROUGHPUT_VS_BASELINE}",
            "met": ratio >= THROUGHPUT_VS_BASELINE,
        })
    single = _in_process_at(results, 1)
    if single and alone:
        ratio = alone["latency_ms"]["p50"] / single["latency_ms"]["p50"]
        targets.append({
            "name": "served REST p50 latency at concurrency 1 / in-process batch-1 latency",
            "measured": round(ratio, 3), "required": f"<= {LATENCY_VS_IN_PROCESS}",
            "met": ratio <= LATENCY_VS_IN_PROCESS,
        })
    return targets


def write_all(results: dict, json_path: Path, md_path: Path, plot_path: Path) -> None:
    for path in (json_path, md_path, plot_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, plot_path)
    md_path.write_text(markdown(results, json_path, plot_path, md_path))


# --- plot -------------------------------------------------------------------------------------


def plot(results: dict, path: Path) -> None:
    """Throughput and latency percentiles against concurrency, with the in-process references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    served = results.get("served") or {}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"rest": ("REST", "-", "o"), "grpc": ("gRPC", "--", "s")}
    for protocol, (name, line, marker) in styles.items():
        rows = served.get(protocol) or []
        if not rows:
            continue
        levels = [r["concurrency"] for r in rows]
        left.plot(levels, [r["images_per_s"] for r in rows], line, marker=marker, label=f"served, {name}")
        for pct, colour in (("p50", "tab:blue"), ("p90", "tab:orange"), ("p99", "tab:red")):
            right.plot(levels, [r["latency_ms"][pct] for r in rows], line, marker=marker, color=colour,
                       label=f"{name} {pct}")
    if results.get("baseline"):
        left.axhline(results["baseline"]["images_per_s"], color="grey", linestyle=":", label="seed-style, in process")
    if served.get("config"):
        same = _in_process_at(results, served["config"]["batch_size"])
        if same:
            left.axhline(same["images_per_s"], color="black", linestyle="-.",
                         label=f"handler in process, batch {same['batch_size']}")
    single = _in_process_at(results, 1)
    if single:
        right.axhline(single["latency_ms"]["p50"], color="black", linestyle="-.", label="in process, batch 1, p50")
    for axis, label in ((left, "images / s"), (right, "latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    right.set_yscale("log")
    levels = sorted({r["concurrency"] for p in styles for r in served.get(p) or []})
    for axis in (left, right):
        if levels:
            axis.set_xticks(levels, [str(v) for v in levels])
    env = results["environment"]
    fig.suptitle(f"Captioner throughput and latency: {env['cpu_cores']} cores, {env['gpu'] or 'no GPU'}, "
                 f"torch {env['torch']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- markdown ---------------------------------------------------------------------------------


def _ms(latency: dict) -> str:
    return f"{latency['p50']:.0f} / {latency['p90']:.0f} / {latency['p99']:.0f}"


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve().parent)).as_posix()


def markdown(results: dict, json_path: Path, plot_path: Path, md_path: Path) -> str:
    env, plan, model, inputs = results["environment"], results["settings"], results["model"], results["inputs"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` from the run below; every figure here is in "
        f"[`{_relative(json_path, md_path)}`]({_relative(json_path, md_path)}). "
        "Rerun `make bench` to measure again and rewrite this file, the JSON and the plot.",
        "",
    ]
    if plan["quick"]:
        lines += ["**Quick run** (`--quick`): fewer runs and requests, no server tuning; for checking, not quoting.", ""]
    gpu = env["gpu"] or "no GPU"
    lines += [
        "| | |",
        "| --- | --- |",
        f"| machine | {env['machine']}, {env['cpu']}, {env['cpu_cores']} cores, {env['memory_gib']} GiB, {gpu} |",
        f"| software | Python {env['python']}, torch {env['torch']}, torchvision {env['torchvision']}, "
        f"TorchServe {env['torchserve']}, {env['java']} |",
        f"| command | `{results['command']}` (device `{env['device']}`) |",
        f"| date, duration | {env['date']}, {results['duration_s']:.0f} s |",
        f"| load average (1/5/15 min) | at start {_load(env['load_average_start'])}, "
        f"at end {_load(env.get('load_average_end'))} |",
        f"| model | random weights, vocabulary {model['vocab_size']:,}, embedding {model['embed_size']}, "
        f"LSTM {model['hidden_size']}, {model['image_size']}x{model['image_size']} input, "
        f"at most {model['max_length']} words |",
        f"| inputs | {inputs['images']} different {inputs['size']} {inputs['format']}s, "
        f"{inputs['mean_kib']} KiB on average |",
        f"| runs | each figure is the median of {plan['repeats']} runs |",
        "",
        "A load average above the core count means other work shared the machine during the run, "
        "and the absolute figures are low; the ratios compare pipelines measured in the same run, "
        "interleaved.",
        "",
    ]
    lines += _targets_section(results)
    lines += _in_process_section(results)
    lines += _served_section(results, plot_path, md_path)
    lines += _profile_section(results)
    lines += _experiments_section(results)
    lines += NOTES
    return "\n".join(lines) + "\n"


def _load(values) -> str:
    return " / ".join(f"{v:.2f}" for v in values) if values else "?"


def _targets_section(results: dict) -> list[str]:
    targets = results.get("targets") or []
    if not targets:
        return []
    lines = ["## Targets", "", "| ratio | measured | required | |", "| --- | --- | --- | --- |"]
    for t in targets:
        lines.append(f"| {t['name']} | {t['measured']:.2f} | {t['required']} | {'met' if t['met'] else '**not met**'} |")
    return lines + [""]


def _in_process_section(results: dict) -> list[str]:
    if not results.get("baseline") and not results.get("in_process"):
        return []
    lines = [
        "## In process",
        "",
        "| pipeline | batch | images/s | latency p50 / p90 / p99 (ms) | CPU ms per image | decoding steps |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    base = results.get("baseline")
    if base:
        lines.append(f"| seed-style (one image at a time, `.item()` per step, all steps) | 1 | "
                     f"{base['images_per_s']:.2f} | {_ms(base['latency_ms'])} | {base['cpu_ms_per_image']:.0f} | "
                     f"{results['model']['max_length']} |")
    for row in results.get("in_process", []):
        lines.append(f"| handler `handle()` (parse, batch encode, batched greedy) | {row['batch_size']} | "
                     f"{row['images_per_s']:.2f} | {_ms(row['latency_ms'])} | {row['cpu_ms_per_image']:.0f} | "
                     f"{row['decode_steps']:.0f} |")
    lines += ["", "Latency is per image for the seed-style pipeline and per batch for the handler.", ""]
    return lines


def _served_section(results: dict, plot_path: Path, md_path: Path) -> list[str]:
    served = results.get("served")
    if not served:
        return []
    lines = [
        "## Served through TorchServe",
        "",
        f"Configuration: {served['label']} (TorchServe reported {served['torchserve_description']['workers']} "
        f"worker(s), batch size {served['torchserve_description']['batchSize']}, max batch delay "
        f"{served['torchserve_description']['maxBatchDelay']} ms). Closed loop: each client sends its next image "
        "as soon as the last is answered; the clients are threads of the benchmark process, on the same cores.",
        "",
        "| protocol | clients | images/s | latency p50 / p90 / p99 (ms) | errors | client CPU (cores) "
        "| server CPU ms per image |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for protocol, name in (("rest", "REST"), ("grpc", "gRPC")):
        for row in served.get(protocol) or []:
            lines.append(f"| {name} | {row['concurrency']} | {row['images_per_s']:.2f} | {_ms(row['latency_ms'])} | "
                         f"{row['errors']:.0f} | {row['client_cpu_cores']:.2f} | {row['server_cpu_ms_per_image']:.0f} |")
    lines += ["", f"![throughput and latency against concurrency]({_relative(plot_path, md_path)})", ""]
    if served.get("tuning"):
        lines += [
            "### Server configurations tried",
            "",
            "The run served with the fastest configuration at the highest concurrency among those whose "
            "lone-request p50 stays within the latency target (one run each, REST):",
            "",
            "| configuration | images/s, most clients | p50 alone (ms) |",
            "| --- | --- | --- |",
        ]
        for t in served["tuning"]:
            lines.append(f"| {t['label']} | {t['images_per_s_at_max_concurrency']:.2f} | "
                         f"{t['p50_ms_at_concurrency_1']:.0f} |")
        lines.append("")
    return lines


def _profile_section(results: dict) -> list[str]:
    profile = results.get("profile")
    if not profile:
        return []
    stages = profile["ms_per_image"]
    names = {"parse_and_decode_image": "parse + JPEG decode", "resize_normalize": "resize + normalise",
             "encode": "ResNet-34 encoder", "decode_words": "greedy decoding", "respond": "JSON responses"}
    total = sum(stages.values())
    lines = [
        "## Where the time goes",
        "",
        f"The handler's stages timed one by one in process, batch {profile['batch_size']}, milliseconds per image:",
        "",
        "| " + " | ".join(names[k] for k in stages) + " | total |",
        "| " + " | ".join("---" for _ in range(len(stages) + 1)) + " |",
        "| " + " | ".join(f"{v:.1f} ({100 * v / total:.0f}%)" for v in stages.values()) + f" | {total:.1f} |",
        "",
    ]
    served = results.get("served") or {}
    same = _in_process_at(results, served.get("config", {}).get("batch_size", -1))
    busy = max(served.get("rest") or [], key=lambda r: r["concurrency"], default=None)
    if same and busy:
        lines += [
            f"Serving costs {busy['server_cpu_ms_per_image']:.0f} ms of CPU per image in TorchServe's processes "
            f"(frontend and workers) at {busy['concurrency']} clients, against {same['cpu_ms_per_image']:.0f} ms "
            f"for the same batch size in process; the clients used {busy['client_cpu_cores']:.2f} cores.",
            "",
        ]
    return lines


def _experiments_section(results: dict) -> list[str]:
    experiments = results.get("experiments")
    if not experiments:
        return []
    lines = [
        "## Optimisations measured in this run",
        "",
        "The handler in process with one setting changed, runs interleaved:",
        "",
        "| variant | batch | images/s | latency p50 (ms) |",
        "| --- | --- | --- | --- |",
    ]
    for e in experiments:
        lines.append(f"| {e['variant']} | {e['batch_size']} | {e['images_per_s']:.2f} | {e['latency_ms']['p50']:.0f} |")
    return lines + [""]


NOTES = [
    "## What was tried, and what is kept",
    "",
    "- **Batching** (the handler encodes a whole TorchServe batch in one pass and decodes it step by step "
    "together) and **early stop** (decoding ends when every caption has produced `<end>`) are the handler's "
    "design. With random weights `<end>` is rarely chosen, so the runs above decode all 20 steps: the "
    "decoding figures are the worst case; a trained model's captions end after about 10 to 12 words.",
    "- **`torch.inference_mode`** wraps the handler's inference and decoding; **channels_last** for the "
    "encoder on CPU is a handler setting (`channels_last` in `model-config.yaml`), compared on and off above.",
    "- **Threads per worker**: a worker's torch threads times the number of workers should not exceed the "
    "cores; the frontend and the clients need CPU too. `torch_threads` in `model-config.yaml` sets it per "
    "worker; the configurations tried above compare one worker with all cores against one worker per core.",
    "- **Host syncs in the decoding loop**: the early-stop check reads one boolean per step. On CPU that costs "
    "nothing; on a GPU it is the one sync per step left, to be measured on a GPU machine.",
    "- **GPU** (not measured here): `python -m bench --device cuda` (`make bench-gpu`) runs the same program on "
    "CUDA, with in-process batches of 64 and 256 through the handler's `handle()` with real JPEG bytes. "
    "bf16 autocast for the encoder, CUDA graphs or `torch.compile` for the decoding step, GPU JPEG decoding "
    "and pinned memory are not in the handler: none could be measured without a GPU, and each should go in "
    "only if that run shows it helps.",
]
