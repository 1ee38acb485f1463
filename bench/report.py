"""Turn one benchmark run's results into the JSON file, the plot and BENCHMARKS.md.

BENCHMARKS.md is generated from the JSON alone, so rerunning `make bench`
rewrites every figure in it; nothing in it is typed by hand.
`python -m bench.report` rewrites the report and the plot from an existing JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench import paired

THROUGHPUT_VS_IN_PROCESS = 0.8
THROUGHPUT_VS_BASELINE = 1.5
LATENCY_VS_IN_PROCESS = 1.25
# The default precision against fp32, served in the same run (issue 15).
PRECISION_THROUGHPUT_VS_FP32 = 2.0
PRECISION_THROUGHPUT_VS_BASELINE = 5.0
PRECISION_LATENCY_VS_FP32 = 0.7
AGREEMENT_IDENTICAL = 0.98
AGREEMENT_MAX_ACCURACY_DROP = 0.005


def may_be_default(row: dict) -> bool:
    """A precision may be the default only if it keeps the trained model's captions and its accuracy."""
    return row["identical_to_fp32"] >= AGREEMENT_IDENTICAL and row["accuracy_drop"] <= AGREEMENT_MAX_ACCURACY_DROP


def default_precision(results: dict) -> str:
    """The precision `auto` picked in this run (results from before precisions were measured: fp32)."""
    return (results.get("precision") or {}).get("auto", "fp32")


def _matches(row: dict, precision: str | None, results: dict) -> bool:
    return row.get("precision", "fp32") == (precision or default_precision(results))


def _in_process_at(results: dict, batch_size: int, precision: str | None = None) -> dict | None:
    return next((r for r in results.get("in_process", [])
                 if r["batch_size"] == batch_size and _matches(r, precision, results)), None)


def _served_at(results: dict, protocol: str, concurrency: int, precision: str | None = None) -> dict | None:
    return next((r for r in results.get("served", {}).get(protocol, [])
                 if r["concurrency"] == concurrency and _matches(r, precision, results)), None)


def _ratio_target(rounds: list, name: str, figure: str, numerator: dict, denominator: dict, required: float,
                  at_least: bool) -> list[dict[str, Any]]:
    """One target from the paired rounds (bench/paired.py); none when no round measured both sides."""
    ratio = paired.paired_ratio(rounds, figure, numerator, denominator)
    if ratio is None:
        return []
    met = ratio["median"] >= required if at_least else ratio["median"] <= required
    return [{"name": name, "measured": ratio["median"], "per_round": ratio["rounds"],
             "required": f"{'>=' if at_least else '<='} {required}", "met": met}]


def evaluate_targets(results: dict) -> list[dict[str, Any]]:
    """The issue's ratios, each the median over the served rounds of that round's ratio (bench/paired.py);
    a target whose parts were not run is left out."""
    served = results.get("served") or {}
    rounds = served.get("rounds") or []
    if not served.get("rest") or not rounds:
        return []
    top = max(r["concurrency"] for r in served["rest"])
    batch = served["config"]["batch_size"]
    chosen = default_precision(results)
    busy = {"part": "served", "protocol": "rest", "concurrency": top, "precision": chosen}
    alone = {**busy, "concurrency": 1}
    baseline = {"part": "baseline"}
    targets = [
        *_ratio_target(rounds, f"served REST throughput at concurrency {top} / in-process at batch {batch} "
                       "(the served batch size)", "images_per_s", busy,
                       {"part": "in_process", "precision": chosen, "batch_size": batch}, THROUGHPUT_VS_IN_PROCESS, True),
        *_ratio_target(rounds, f"served REST throughput at concurrency {top} / seed-style baseline", "images_per_s",
                       busy, baseline, THROUGHPUT_VS_BASELINE, True),
        *_ratio_target(rounds, "served REST p50 latency at concurrency 1 / in-process batch-1 latency", "p50_ms", alone,
                       {"part": "in_process", "precision": chosen, "batch_size": 1}, LATENCY_VS_IN_PROCESS, False),
    ]
    if chosen == "fp32":
        return targets
    # The default precision against fp32, served in the same rounds, and its captions against fp32's.
    targets += [
        *_ratio_target(rounds, f"served REST throughput at concurrency {top}, precision {chosen} / fp32",
                       "images_per_s", busy, {**busy, "precision": "fp32"}, PRECISION_THROUGHPUT_VS_FP32, True),
        *_ratio_target(rounds, f"served REST throughput at concurrency {top}, precision {chosen} / seed-style "
                       "baseline", "images_per_s", busy, baseline, PRECISION_THROUGHPUT_VS_BASELINE, True),
        *_ratio_target(rounds, f"served REST p50 latency at concurrency 1, precision {chosen} / fp32", "p50_ms",
                       alone, {**alone, "precision": "fp32"}, PRECISION_LATENCY_VS_FP32, False),
    ]
    row = next((r for r in (results.get("agreement") or {}).get("rows", []) if r["precision"] == chosen), None)
    if row:
        targets.append({
            "name": f"held-out captions in precision {chosen} identical to fp32's (trained model)",
            "measured": row["identical_to_fp32"], "required": f">= {AGREEMENT_IDENTICAL}",
            "met": row["identical_to_fp32"] >= AGREEMENT_IDENTICAL,
        })
        targets.append({
            "name": f"attribute accuracy drop in precision {chosen} against fp32 (trained model)",
            "measured": row["accuracy_drop"], "required": f"<= {AGREEMENT_MAX_ACCURACY_DROP}",
            "met": row["accuracy_drop"] <= AGREEMENT_MAX_ACCURACY_DROP,
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
    precisions = list(dict.fromkeys(r.get("precision", "fp32") for p in styles for r in served.get(p) or []))
    for protocol, (name, line, marker) in styles.items():
        for precision in precisions:
            rows = [r for r in served.get(protocol) or [] if r.get("precision", "fp32") == precision]
            if not rows:
                continue
            levels = [r["concurrency"] for r in rows]
            label = f"{name}, {precision}"
            left.plot(levels, [r["images_per_s"] for r in rows], line, marker=marker, label=f"served, {label}")
            pcts = (("p50", "tab:blue"), ("p99", "tab:red")) if len(precisions) > 1 else (
                ("p50", "tab:blue"), ("p90", "tab:orange"), ("p99", "tab:red"))
            for pct, colour in pcts:
                right.plot(levels, [r["latency_ms"][pct] for r in rows], line, marker=marker, color=colour,
                           alpha=1.0 if precision == precisions[0] else 0.55, label=f"{label} {pct}")
    if results.get("baseline"):
        left.axhline(results["baseline"]["images_per_s"], color="grey", linestyle=":", label="seed-style, in process")
    if served.get("config"):
        same = _in_process_at(results, served["config"]["batch_size"])
        if same:
            left.axhline(same["images_per_s"], color="black", linestyle="-.",
                         label=f"handler in process, batch {same['batch_size']}, {default_precision(results)}")
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
        *_precision_header(results),
        "",
        "A load average above the core count means other work shared the machine during the run, "
        "and the absolute figures are low; the targets' ratios compare pipelines measured back to back "
        "in each round of the served phase, and the other tables interleave their runs.",
        "",
    ]
    lines += _targets_section(results)
    lines += _in_process_section(results)
    lines += _served_section(results, plot_path, md_path)
    lines += _agreement_section(results)
    lines += _profile_section(results)
    lines += _precision_experiments_section(results)
    lines += _experiments_section(results)
    lines += _image_decode_section(results)
    lines += _unmet_section(results)
    lines += NOTES
    return "\n".join(lines) + "\n"


def _precision_header(results: dict) -> list[str]:
    info = results.get("precision")
    if not info:
        return []
    flags = ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in info["cpu_flags"].items())
    return [f"| CPU flags | {flags} |",
            f"| precisions | `precision: auto` picked **{info['auto']}** here; measured: {', '.join(info['measured'])} |"]


def _load(values) -> str:
    return " / ".join(f"{v:.2f}" for v in values) if values else "?"


def _targets_section(results: dict) -> list[str]:
    targets = results.get("targets") or []
    if not targets:
        return []
    lines = ["## Targets", ""]
    if any("per_round" in t for t in targets):
        lines += ["Each ratio is the median over the served rounds of that round's ratio: a round serves every "
                  "precision at every protocol and concurrency, then runs the in-process handler and the "
                  "seed-style pipeline, so the two sides of a ratio are measured minutes apart, not most of an "
                  "hour. The served and in-process tables below are medians over runs spread across the whole "
                  "run, so their quotients can differ from these.", ""]
    lines += ["| ratio | measured | each round | required | |", "| --- | --- | --- | --- | --- |"]
    for t in targets:
        each = ", ".join(f"{r:.2f}" for r in t.get("per_round", []))
        lines.append(f"| {t['name']} | {t['measured']:.2f} | {each} | {t['required']} | "
                     f"{'met' if t['met'] else '**not met**'} |")
    return lines + [""]


def _in_process_section(results: dict) -> list[str]:
    if not results.get("baseline") and not results.get("in_process"):
        return []
    lines = [
        "## In process",
        "",
        "| pipeline | precision | batch | images/s | latency p50 / p90 / p99 (ms) | CPU ms per image | decoding steps |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = results.get("baseline")
    if base:
        lines.append(f"| seed-style (one image at a time, `.item()` per step, all steps) | fp32 | 1 | "
                     f"{base['images_per_s']:.2f} | {_ms(base['latency_ms'])} | {base['cpu_ms_per_image']:.0f} | "
                     f"{results['model']['max_length']} |")
    for row in results.get("in_process", []):
        lines.append(f"| handler `handle()` (parse, batch encode, batched greedy) | {row.get('precision', 'fp32')} | "
                     f"{row['batch_size']} | "
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
        "| precision | protocol | clients | images/s | latency p50 / p90 / p99 (ms) | errors | client CPU (cores) "
        "| server CPU ms per image |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for protocol, name in (("rest", "REST"), ("grpc", "gRPC")):
        for row in served.get(protocol) or []:
            lines.append(f"| {row.get('precision', 'fp32')} | {name} | {row['concurrency']} | {row['images_per_s']:.2f} | "
                         f"{_ms(row['latency_ms'])} | "
                         f"{row['errors']:.0f} | {row['client_cpu_cores']:.2f} | {row['server_cpu_ms_per_image']:.0f} |")
    for precision, why in (served.get("failed") or {}).items():
        lines.append(f"| {precision} | | | could not start its workers: {why} | | | | |")
    lines += ["", f"![throughput and latency against concurrency]({_relative(plot_path, md_path)})", ""]
    if served.get("tuning"):
        # Results from before the alternated check hold no in-process p50 per candidate: they measured the
        # lone requests first and the in-process run after them, and the text says so.
        alternating = any("p50_ms_in_process" in t for t in served["tuning"])
        alternated = ("the two called in turn, one lone request then one image in process or the reverse"
                      if alternating else "measured right after it")
        each_pass = " in each pass" if alternating else ""
        lines += [
            "### Server configurations tried",
            "",
            "The run served with the fastest configuration at the most clients among those whose "
            f"lone-request p50 stays within the latency target against the handler in process at batch 1{each_pass}, "
            f"{alternated}; configurations within 5% of the fastest count as a tie, won by the "
            "lowest p50 alone. REST; each figure is the mean of two passes, one in this order and one in "
            "reverse, so a change in the machine's load favours no configuration:",
            "",
            "| configuration | images/s, most clients | server CPU ms per image, most clients | p50 alone (ms) "
            "| p50 in process (ms) | p50 alone / in process (each pass) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for t in served["tuning"]:
            if "failed" in t:
                lines.append(f"| {t['label']} | could not start: {t['failed']} | | | | |")
                continue
            against, in_process = t.get("p50_alone_vs_in_process"), t.get("p50_ms_in_process")
            lines.append(f"| {t['label']} | {t['images_per_s_at_max_concurrency']:.2f} | "
                         f"{t['server_cpu_ms_per_image']:.0f} | {t['p50_ms_at_concurrency_1']:.0f} | "
                         f"{'' if in_process is None else f'{in_process:.0f}'} | "
                         f"{'' if against is None else f'{against:.2f}'}{_each_pass(t)} |")
        lines.append("")
    return lines


def latency_ratio_per_pass(candidate: dict) -> list[float]:
    """A tuning candidate's lone-request p50 over the in-process p50, one per tuning pass (the candidate's
    own figure when it holds no passes; none from results whose passes were not yet records)."""
    passes = candidate.get("passes") or [candidate]
    return [p["p50_alone_vs_in_process"] for p in passes if isinstance(p, dict) and "p50_alone_vs_in_process" in p]


def _each_pass(candidate: dict) -> str:
    ratios = latency_ratio_per_pass(candidate)
    return f" ({', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""


def _agreement_section(results: dict) -> list[str]:
    agreement = results.get("agreement")
    if not agreement:
        return ["## Caption agreement", "",
                "Not measured in this run (no trained export given or found; `make model` writes one to "
                "build/export, which `make bench` then measures).", ""]
    rows = agreement["rows"]
    lines = [
        "## Caption agreement",
        "",
        f"The trained default export (`{agreement['export']}`) captioned the {rows[0]['images']} held-out images "
        f"of `{agreement['data']}` through the handler's `handle()` ({agreement['decoding']}), once per precision. "
        "int8 calibrated on 64 training images. A precision changing more than 2% of the captions or losing "
        "more than 0.5 point of attribute accuracy is never the default.",
        "",
        "| precision | identical to fp32's | attribute accuracy | drop against fp32 | worker start (s) | may be the default |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['precision']} | {100 * r['identical_to_fp32']:.1f}% | {r['attribute_accuracy']:.3f} | "
                     f"{100 * r['accuracy_drop']:+.1f} points | {r['worker_start_s']:.1f} | "
                     f"{'yes' if may_be_default(r) else 'no'} |")
    chosen = default_precision(results)
    if chosen == "fp32":
        lines += ["", "This CPU has neither AMX nor AVX512-BF16, so `precision: auto` runs fp32 here."]
    return lines + [""]


def _precision_experiments_section(results: dict) -> list[str]:
    rows = results.get("precision_experiments")
    if not rows:
        return []
    lines = [
        "## Precision and compiled encoders",
        "",
        f"The handler in process with `precision` and `compile` set, runs interleaved (random weights, "
        f"{results['model']['image_size']} px). "
        "Worker start is the handler's `initialize`: loading, and for compiled encoders quantizing and "
        "compiling one graph per batch bucket (1, 2, 4, 8); TorchServe allows `startupTimeout` "
        "(`handler/model-config.yaml`) for it.",
        "",
        "| variant | worker start (s) | batch | images/s | latency p50 (ms) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['start_s']:.1f} | {r['batch_size']} | {r['images_per_s']:.2f} | "
                     f"{r['latency_ms']['p50']:.0f} |")
    return lines + [""]


def _image_decode_section(results: dict) -> list[str]:
    rows = results.get("image_decode")
    if not rows:
        return []
    lines = [
        "",
        "Decoding and resizing one JPEG (PIL, the handler's `to_rgb` and `eval_transform`), milliseconds; "
        "draft mode (libjpeg's scaled decoding) is timed but not used, as its pixels differ from what the "
        "model was trained on:",
        "",
        "| image | KiB | decode | resize + normalise | draft-mode decode |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['size']} | {r['kib']:.0f} | {r['decode_ms']:.1f} | {r['resize_normalize_ms']:.1f} | "
                     f"{r['draft_decode_ms']:.1f} |")
    return lines + [""]


def _profile_section(results: dict) -> list[str]:
    profile = results.get("profile")
    if not profile:
        return []
    names = {"parse_and_decode_image": "parse + JPEG decode", "resize_normalize": "resize + normalise",
             "encode": "ResNet-34 encoder", "decode_words": "greedy decoding", "respond": "JSON responses"}
    by_precision = profile.get("by_precision") or {default_precision(results): profile["ms_per_image"]}
    stages = next(iter(by_precision.values()))
    lines = [
        "## Where the time goes",
        "",
        f"The handler's stages timed one by one in process, batch {profile['batch_size']}, milliseconds per image:",
        "",
        "| precision | " + " | ".join(names[k] for k in stages) + " | total |",
        "| " + " | ".join("---" for _ in range(len(stages) + 2)) + " |",
    ]
    for precision, stages in by_precision.items():
        total = sum(stages.values())
        lines.append(f"| {precision} | " + " | ".join(f"{v:.1f} ({100 * v / total:.0f}%)" for v in stages.values())
                     + f" | {total:.1f} |")
    lines.append("")
    served = results.get("served") or {}
    same = _in_process_at(results, served.get("config", {}).get("batch_size", -1))
    levels = [r["concurrency"] for r in served.get("rest") or []]
    busy = _served_at(results, "rest", max(levels)) if levels else None
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
        "The handler in process in fp32 with one `model-config.yaml` setting changed from its defaults, "
        "runs interleaved:",
        "",
        "| variant | batch | images/s | latency p50 (ms) |",
        "| --- | --- | --- | --- |",
    ]
    for e in experiments:
        lines.append(f"| {e['variant']} | {e['batch_size']} | {e['images_per_s']:.2f} | {e['latency_ms']['p50']:.0f} |")
    steps = results.get("decoding_step")
    if steps:
        lines += [
            "",
            "One decoding step (LSTM and vocabulary projection, decoder weights in their default form), "
            "milliseconds:",
            "",
            "| step | batch | ms per step |",
            "| --- | --- | --- |",
        ]
        for e in steps:
            lines.append(f"| {e['variant']} | {e['batch_size']} | {e['ms_per_step']:.2f} |")
    return lines + [""]


def _unmet_section(results: dict) -> list[str]:
    """For each target not met: the figures from this run that explain it, and what would move it."""
    unmet = [t for t in results.get("targets", []) if not t["met"]]
    if not unmet:
        return []
    served = results["served"]
    batch = served["config"]["batch_size"]
    same = _in_process_at(results, batch)
    top = _served_at(results, "rest", max(r["concurrency"] for r in served["rest"]))
    alone = _served_at(results, "rest", 1)
    single = _in_process_at(results, 1)
    stages = (results.get("profile") or {}).get("ms_per_image", {})
    total = sum(stages.values()) or float("nan")
    lines = ["## Targets not met: why", ""]
    for target in unmet:
        name = target["name"]
        if "precision" in name:
            lines.append(_precision_unmet(results, target, batch))
        elif "/ in-process at batch" in name and same:
            lines.append(
                f"- **{name}** ({target['measured']:.2f}): TorchServe's processes used "
                f"{top['server_cpu_ms_per_image']:.0f} ms of CPU per image against {same['cpu_ms_per_image']:.0f} ms "
                f"in process, and the clients {top['client_cpu_cores']:.2f} cores. The frontend (HTTP, batching, "
                "the socket to the worker) and the clients share the cores with the model; more cores, or "
                "clients on another machine, would give the model back that share.")
        elif "seed-style" in name and same and results.get("baseline"):
            bound = same["images_per_s"] / results["baseline"]["images_per_s"]
            encoder = 100 * stages.get("encode", float("nan")) / total
            if bound < THROUGHPUT_VS_BASELINE:
                why = (f"the encoder is {encoder:.0f}% of the time per image, and on a CPU a batch makes a "
                       "convolution only a little faster per image. A GPU, where batching pays, or a smaller "
                       "encoder would change it.")
            else:
                why = "so what is missing is lost between the clients and the handler (see the serving overhead above)."
            lines.append(
                f"- **{name}** ({target['measured']:.2f}): in process, batch {batch} is {bound:.2f}x the seed-style "
                f"pipeline, which bounds what serving can reach; {why}")
        elif "latency" in name and alone and single:
            extra = alone["latency_ms"]["p50"] - single["latency_ms"]["p50"]
            lines.append(
                f"- **{name}** ({target['measured']:.2f}): a lone request took {extra:.0f} ms more served than in "
                f"process; up to {served['config']['max_batch_delay_ms']} ms of it is TorchServe waiting for a "
                "batch to fill, the rest the HTTP round trip through the frontend and the worker's socket. "
                "A shorter max batch delay, or a worker with more threads, would change it.")
        else:
            lines.append(f"- **{name}** ({target['measured']:.2f}).")
    return lines + [""]


def _precision_unmet(results: dict, target: dict, batch: int) -> str:
    """Why the default precision falls short of a bar against fp32: the in-process figures bound it."""
    chosen = default_precision(results)
    name = target["name"]
    if "identical" in name or "accuracy" in name:
        return (f"- **{name}** ({target['measured']:.3f}): see the caption agreement table; such a precision "
                "must not stay the default.")
    at = 1 if "latency" in name else batch
    fast, slow = _in_process_at(results, at, chosen), _in_process_at(results, at, "fp32")
    if not (fast and slow):
        return f"- **{name}** ({target['measured']:.2f})."
    if "latency" in name:
        bound = fast["latency_ms"]["p50"] / slow["latency_ms"]["p50"]
        figure = f"in process at batch 1, {chosen}'s p50 is {bound:.2f} of fp32's"
    else:
        bound = fast["images_per_s"] / slow["images_per_s"]
        figure = f"in process at batch {at}, {chosen} is {bound:.2f}x fp32"
    per = (results.get("profile") or {}).get("by_precision", {})
    outside = ", ".join(f"{k} {sum(v.values()) - v.get('encode', 0):.1f} ms" for k, v in per.items())
    return (f"- **{name}** ({target['measured']:.2f}): {figure}. {chosen} speeds up the encoder only; the time "
            f"per image outside it (batch {results['profile']['batch_size']}: {outside}; greedy decoding "
            "runs all 20 steps with random weights) and TorchServe's own share stay as they are.")


NOTES = [
    "## What was tried, and what is kept",
    "",
    "- **Batching** (the handler encodes a whole TorchServe batch in one pass and decodes it step by step "
    "together) and **early stop** (decoding ends when every caption has produced `<end>`) are the handler's "
    "design. With random weights `<end>` is rarely chosen, so the runs above decode all 20 steps: the "
    "decoding figures are the worst case; a trained model's captions end sooner.",
    "- **OpenMP wait policy**: `ops.server` starts TorchServe, and so its workers, with "
    "`OMP_WAIT_POLICY=PASSIVE` (unless the environment sets it): torch's threads sleep while they wait "
    "instead of spinning on cores that the frontend, the other worker and the clients need. The row "
    "\"OMP wait policy default\" in the server table is the same configuration with OpenMP's default. "
    "This program runs its in-process pipelines with the same setting.",
    "- **Workers and threads**: the server table compares one worker using every core, one worker per "
    "core with one thread each, and one worker per core with every core each (`torch_threads` in "
    "`model-config.yaml` sets a worker's threads; TorchServe's `minWorkers` the workers).",
    "- **Max batch delay**: TorchServe holds a lone request up to the delay for a batch to fill, so it "
    "adds to the latency at one client; 20 ms (the earlier default) is compared with 5 ms in the server table.",
    "- **The shipped `handler/model-config.yaml`**: two workers of two threads each, batch 8, 5 ms max "
    "batch delay; `--quick` serves with the same. The tuning above may pick another configuration: its "
    "ties are settled by a lone request's latency, within this machine's noise, and two workers keep "
    "serving when one dies.",
    "- **The decoding step** runs the LSTM's weights through `torch.lstm_cell` instead of calling the "
    "`nn.LSTM` module on a one-word sequence (the same arithmetic; on CPU the module goes through oneDNN's "
    "RNN, with a large fixed cost per call): compared in the decoding-step table. The seed-style pipeline "
    "keeps calling the module per word, as the seed does.",
    "- **The vocabulary projection through oneDNN** on CPU (`onednn_linear` in `model-config.yaml`) instead "
    "of the default BLAS, and **channels_last** for the encoder (`channels_last`): handler settings, "
    "compared on and off above, as is one torch thread against all cores in process. "
    "**`torch.inference_mode`** wraps the handler's inference and decoding (no autograd bookkeeping).",
    "- **Tried and not kept**: folding BatchNorm into the convolutions (`torch.fx` fusion) and a frozen "
    "TorchScript encoder (`torch.jit.optimize_for_inference`) showed no gain beyond run-to-run noise in a "
    "one-thread comparison at batch 8, and the TorchScript one takes tens of seconds to prepare per worker. "
    "JPEG draft decoding (libjpeg scaling while decoding) would change the pixels the encoder sees "
    "compared with training, so it was left out.",
    "- **Host syncs in the decoding loop**: the early-stop check reads one boolean per step. On CPU that costs "
    "nothing; on a GPU it is the one sync per step left, to be measured there.",
    "- **Precision** (`precision` in `model-config.yaml`, model/precision.py): `auto` runs bf16 where the "
    "CPU reports `amx_bf16` or `avx512_bf16` (the header's flags) and fp32 elsewhere. bf16 is the encoder "
    "under `torch.autocast`; the decoder stays fp32. A bf16 vocabulary projection (`vocabulary_projection: "
    "bf16`, its own bf16 matmul instead of oneDNN's fp32 one) is measured beside it, and left off where the "
    "agreement table shows it changing captions. The tables above measure fp32 "
    "and the chosen precision in process and served in the same run, and the caption agreement table "
    "checks the trained model's held-out captions; a precision losing more than 0.5 point of attribute "
    "accuracy is never the default.",
    "- **int8** (PT2E, torchao's `X86InductorQuantizer`, calibrated on the archive's `calibration/` images "
    "at worker start, compiled with inductor, the only way its int8 kernels run) is a setting, never "
    "`auto`'s choice: compare it in the precision table before choosing it.",
    "- **Compiled encoders** (`compile: true`: `torch.compile`, inductor, frozen weights) are compiled at "
    "worker start for batch buckets 1, 2, 4, ..., the batch size (a batch is padded up to its bucket), so "
    "no request waits for a compilation; the precision table gives the worker start this costs. It is off "
    "by default: two workers compiling at once on a busy 2-core machine come close to TorchServe's "
    "`startupTimeout`, and a restarted worker pays it again.",
    "- **Core pinning** (`cpu_launcher_enable`, TorchServe wrapping each worker in "
    "`torch.backends.xeon.run_cpu`, two workers each on its own core) is a candidate in the server table.",
    "- **GPU**: `make bench-gpu` (`python -m bench.gpu`, one prepared run of under 10 minutes) measures the "
    "handler in process at batch 1 to 256 in fp32 and bf16, one decoding step eager against a CUDA graph "
    "and `torch.compile`, and GPU JPEG decoding (`torchvision.io.decode_jpeg` on the device) against PIL, "
    "into build/bench/gpu/. Served GPU figures need Java: a jlink'd Java 17 runtime (51 MB) with "
    "TorchServe's jar (46 MB) does not fit in what can be carried to a bare GPU machine (64 MiB).",
]


def main(argv: list[str] | None = None) -> None:
    """Rewrite the Markdown report and the plot from a results JSON, without measuring again."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--json", default="docs/bench.json")
    parser.add_argument("--md", default="BENCHMARKS.md")
    parser.add_argument("--plot", default="docs/bench.png")
    args = parser.parse_args(argv)
    json_path, md_path, plot_path = Path(args.json), Path(args.md), Path(args.plot)
    results = json.loads(json_path.read_text())
    if (results.get("served") or {}).get("rounds"):
        results["targets"] = evaluate_targets(results)  # results from before the rounds keep their own
    plot(results, plot_path)
    md_path.write_text(markdown(results, json_path, plot_path, md_path))


if __name__ == "__main__":
    main()
