"""`make bench`: the seed-style pipeline, the handler in process and the served model, measured in one run.

    python -m bench                 # full run: tunes the server, writes BENCHMARKS.md, docs/bench.json, docs/bench.png
    python -m bench --quick         # fewer repeats and requests, no tuning; writes build/bench/quick/
    python -m bench --device cuda   # the same on a GPU, with in-process batches up to 256

Every figure is the median of `--repeats` runs; the runs of the different
pipelines are interleaved, so a burst of other work on the machine hurts all
of them alike rather than one. The served phase runs in `--repeats` rounds, each
ending with the in-process runs the targets compare it with (bench/paired.py).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench import environment, paired, report
from bench.agreement import DEFAULT_AGREEMENT_DATA, DEFAULT_AGREEMENT_EXPORT, caption_agreement
from bench.agreement import VARIANTS as AGREEMENT_VARIANTS
from bench.baseline import SeedStylePipeline
from bench.experiments import (
    decoding_step_experiment,
    handler_setting_experiments,
    image_decode_experiment,
    precision_experiments,
)
from bench.in_process import InProcessPipeline
from bench.inputs import MODEL_SHAPES, jpeg_set, write_calibration_images, write_random_export
from bench.profile import stage_times_ms
from bench.served import ServedConfig, ServedModel
from bench.stats import median_of_runs
from model.precision import BF16_CPU_FLAGS, INT8_CPU_FLAGS, PRECISIONS, choose_precision, read_cpu_flags

# The server configuration used when not tuning (--quick, --no-tune): the best of the
# tuning runs on the 2-core machine (BENCHMARKS.md, "Server configurations tried").
DEFAULT_SERVED = ServedConfig(workers=2, threads=2, batch_size=8, max_batch_delay_ms=5)
# Configurations tried by the full run; the fastest at the highest concurrency among those
# that keep a lone request's latency within the target wins.
TUNING_CANDIDATES = (
    ServedConfig(workers=1, threads=2, batch_size=8, max_batch_delay_ms=20),  # the defaults before tuning
    ServedConfig(workers=1, threads=2, batch_size=8, max_batch_delay_ms=5),
    ServedConfig(workers=2, threads=1, batch_size=8, max_batch_delay_ms=5),
    ServedConfig(workers=2, threads=2, batch_size=8, max_batch_delay_ms=5),
    ServedConfig(workers=2, threads=2, batch_size=32, max_batch_delay_ms=5),
    # TorchServe's cpu_launcher_enable: each of the two workers pinned to its own core.
    ServedConfig(workers=2, threads=1, batch_size=8, max_batch_delay_ms=5, cpu_launcher=True),
    # Last: another OpenMP wait policy means restarting the server.
    ServedConfig(workers=1, threads=2, batch_size=8, max_batch_delay_ms=5, omp_wait_policy="default"),
)
LATENCY_TARGET = 1.25  # served p50 at concurrency 1 / in-process batch-1 latency


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _served_config(text: str) -> ServedConfig:
    workers, threads, batch_size, delay = _ints(text)
    return ServedConfig(workers, threads, batch_size, delay)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and requests, no tuning (a few minutes)")
    parser.add_argument("--model", choices=sorted(MODEL_SHAPES), default="coco",
                        help="coco: vocabulary 10,000, embed 256, hidden 512, 224 px; tiny: for tests")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]; the handler and TorchServe follow it")
    parser.add_argument("--parts", default="baseline,in-process,served", help="which pipelines to measure")
    parser.add_argument("--batch-sizes", type=_ints, default=None, help="in-process batch sizes (default 1,8,32; "
                        "on CUDA 1,8,32,64,256)")
    parser.add_argument("--concurrency", type=_ints, default=[1, 8, 32], help="served concurrency levels")
    parser.add_argument("--protocols", default="rest,grpc", help="served protocols: rest, grpc")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (default 3; --quick 2)")
    parser.add_argument("--served-config", type=_served_config, default=None, metavar="W,T,B,D",
                        help="workers, torch threads per worker, batch size, max batch delay (ms); skips tuning")
    parser.add_argument("--no-tune", action="store_true", help=f"serve with {DEFAULT_SERVED.label}")
    parser.add_argument("--no-experiments", action="store_true", help="skip the on/off optimisation experiments")
    parser.add_argument("--no-compiled", action="store_true",
                        help="leave the compiled and int8 encoders out of the precision experiments (they compile "
                             "for minutes)")
    parser.add_argument("--precisions", default=None,
                        help="handler precisions measured in process and served (default: fp32 and what "
                             "`precision: auto` picks here); e.g. fp32,bf16,int8")
    parser.add_argument("--agreement-export", default=None,
                        help=f"trained export whose held-out captions each precision must keep (default "
                             f"{DEFAULT_AGREEMENT_EXPORT} when present; 'none' skips it)")
    parser.add_argument("--agreement-data", default=DEFAULT_AGREEMENT_DATA,
                        help="generated shapes set with annotations/captions_val.json and images/")
    parser.add_argument("--agreement-images", type=int, default=None,
                        help="held-out images captioned per precision (default all; --quick 48)")
    parser.add_argument("--work-dir", default="build/bench", help="exported model, archive and server folders")
    parser.add_argument("--out-json", default=None, help="default docs/bench.json (--quick: build/bench/quick/)")
    parser.add_argument("--out-md", default=None, help="default BENCHMARKS.md (--quick: build/bench/quick/)")
    parser.add_argument("--out-plot", default=None, help="default docs/bench.png (--quick: build/bench/quick/)")
    return parser


def settings(args: argparse.Namespace) -> dict:
    """How much to measure: the full run or the quick one."""
    quick = args.quick
    device = torch.device(args.device)
    batch_sizes = args.batch_sizes or ([1, 8, 32, 64, 256] if device.type == "cuda" else [1, 8, 32])
    tune = not (quick or args.no_tune or args.served_config)
    served_configs = TUNING_CANDIDATES if tune else [args.served_config or DEFAULT_SERVED]
    if "served" in args.parts:
        # The served throughput is compared with the handler in process at the served batch size.
        batch_sizes = sorted(set(batch_sizes) | {c.batch_size for c in served_configs})
    out = Path("build/bench/quick") if quick else None
    auto = auto_precision(device)
    precisions = [p for p in (args.precisions.split(",") if args.precisions else ["fp32", auto]) if p]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise SystemExit(f"--precisions: unknown {', '.join(unknown)}; known: {', '.join(PRECISIONS)}")
    agreement_export = args.agreement_export or (DEFAULT_AGREEMENT_EXPORT if Path(DEFAULT_AGREEMENT_EXPORT,
                                                                                   "config.json").is_file() else "none")
    return {
        "precisions": list(dict.fromkeys(precisions)),
        "auto_precision": auto,
        "agreement_export": None if agreement_export == "none" else agreement_export,
        "agreement_data": args.agreement_data,
        "agreement_images": args.agreement_images or (48 if quick else None),
        "quick": quick,
        "repeats": args.repeats or (2 if quick else 3),
        "distinct_images": 8 if quick else 32,
        "baseline_images": 6 if quick else 24,
        "in_process_images": 16 if quick else 64,  # per run and batch size (at least 2 batches)
        "reference_images": 8 if quick else 32,  # per in-process reference run in each served round
        "request_rounds": 2 if quick else 4,  # served requests per run = rounds x concurrency (at least 8)
        "batch_sizes": batch_sizes,
        "concurrency": args.concurrency,
        "protocols": [p for p in args.protocols.split(",") if p],
        "parts": [p for p in args.parts.split(",") if p],
        "tune": tune,
        "experiments": not (quick or args.no_experiments),
        "out_json": Path(args.out_json or (out / "results.json" if out else "docs/bench.json")),
        "out_md": Path(args.out_md or (out / "BENCHMARKS.md" if out else "BENCHMARKS.md")),
        "out_plot": Path(args.out_plot or (out / "bench.png" if out else "docs/bench.png")),
    }


def auto_precision(device: torch.device) -> str:
    """What `precision: auto` picks for a worker on `device` (model/precision.py)."""
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return choose_precision("auto", device_type=device.type, cpu_flags=read_cpu_flags(), cuda_bf16=cuda_bf16).name


def precision_summary(plan: dict) -> dict:
    """The CPU flags that decide the precision, and what was measured."""
    flags = read_cpu_flags()
    relevant = sorted({"amx_bf16", "amx_int8", *BF16_CPU_FLAGS, *INT8_CPU_FLAGS})
    return {"auto": plan["auto_precision"], "measured": plan["precisions"],
            "cpu_flags": {flag: flag in flags for flag in relevant}}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(args: argparse.Namespace) -> dict:
    plan = settings(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device; use --device cpu")
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)  # every in-process pipeline uses the whole machine
    started = time.perf_counter()
    results: dict = {
        "environment": environment.describe(device),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in plan.items()},
        "model": {"shape": args.model, **vars(MODEL_SHAPES[args.model])},
        "precision": precision_summary(plan),
    }
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    export_dir = write_random_export(MODEL_SHAPES[args.model], work_dir / "export")
    write_calibration_images(export_dir)  # for precision int8, packed with the archive like a real export's
    jpegs = jpeg_set(plan["distinct_images"])
    results["inputs"] = {"images": len(jpegs), "size": "640x480", "format": "JPEG",
                         "mean_kib": round(sum(map(len, jpegs)) / len(jpegs) / 1024, 1)}
    log(f"model {args.model} exported; {len(jpegs)} JPEGs of {results['inputs']['mean_kib']} KiB on average")

    in_process = {}
    if "in-process" in plan["parts"]:
        for name in plan["precisions"]:
            in_process[name] = InProcessPipeline(export_dir, str(device), {"torch_threads": threads, "precision": name},
                                                 max_batch=max(plan["batch_sizes"]))
    baseline = SeedStylePipeline(export_dir, device) if "baseline" in plan["parts"] else None
    if in_process or baseline:
        results.update(measure_in_process(plan, jpegs, baseline, in_process))
    if in_process and plan["experiments"]:
        results["experiments"] = handler_setting_experiments(
            export_dir, device, jpegs, threads, repeats=plan["repeats"], images=plan["in_process_images"] // 2, log=log)
        results["precision_experiments"] = precision_experiments(
            export_dir, device, jpegs, threads, repeats=plan["repeats"], images=plan["in_process_images"] // 2, log=log,
            compiled=not args.no_compiled)
        results["decoding_step"] = decoding_step_experiment(export_dir, device, repeats=plan["repeats"], log=log)
        results["image_decode"] = image_decode_experiment(MODEL_SHAPES[args.model].image_size,
                                                          repeats=plan["repeats"], log=log)
    if plan["agreement_export"]:
        results["agreement"] = caption_agreement(
            plan["agreement_export"], plan["agreement_data"], work_dir / "agreement", device, threads,
            variants=list(AGREEMENT_VARIANTS) if device.type == "cpu" else ["fp32", "bf16"],
            limit=plan["agreement_images"], log=log)
    if "served" in plan["parts"]:
        results["served"] = measure_served(plan, args, export_dir, device, jpegs, work_dir,
                                           baseline=baseline, in_process=in_process)
    if in_process:
        profile_batch = results.get("served", {}).get("config", {}).get("batch_size", 8)
        results["profile"] = {"batch_size": profile_batch, "by_precision": {
            name: stage_times_ms(pipeline, jpegs, profile_batch) for name, pipeline in in_process.items()}}
        default = plan["auto_precision"] if plan["auto_precision"] in in_process else plan["precisions"][0]
        results["profile"]["ms_per_image"] = results["profile"]["by_precision"][default]
    results["environment"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    results["duration_s"] = round(time.perf_counter() - started, 1)
    results["targets"] = report.evaluate_targets(results)
    report.write_all(results, plan["out_json"], plan["out_md"], plan["out_plot"])
    log(f"done in {results['duration_s']} s: {plan['out_md']}, {plan['out_json']}, {plan['out_plot']}")
    for target in results["targets"]:
        log(f"{'met' if target['met'] else 'NOT met'}: {target['name']} ({target['measured']})")
    return results


def measure_in_process(plan: dict, jpegs, baseline, in_process: dict[str, InProcessPipeline]) -> dict:
    """Seed-style baseline and the handler in each precision at each batch size, `repeats` interleaved rounds."""
    base_runs = []
    batch_runs = {(name, b): [] for name in in_process for b in plan["batch_sizes"]}
    if baseline:
        baseline.run(jpegs[:2])  # warm-up
    for (name, b) in batch_runs:
        in_process[name].run(jpegs, b, 1)
    for round_ in range(plan["repeats"]):
        if baseline:
            images = [jpegs[(round_ * 7 + i) % len(jpegs)] for i in range(plan["baseline_images"])]
            base_runs.append(baseline.run(images))
            log(f"seed-style baseline, run {round_ + 1}: {base_runs[-1].images_per_s:.2f} images/s")
        for (name, b), runs in batch_runs.items():
            runs.append(in_process[name].run(jpegs, b, _batches(plan["in_process_images"], b)))
            log(f"in-process {name} batch {b}, run {round_ + 1}: {runs[-1].images_per_s:.2f} images/s")
    out = {}
    if baseline:
        out["baseline"] = median_of_runs(base_runs)
    if in_process:
        out["in_process"] = [{"precision": name, "batch_size": b, "start_s": round(in_process[name].start_s, 1),
                              **median_of_runs(runs)} for (name, b), runs in batch_runs.items()]
    return out


def _batches(images: int, batch_size: int) -> int:
    """Batches for a run of about `images` images: at least two, so a run is never one lone batch."""
    return max(2, math.ceil(images / batch_size))


def measure_references(plan: dict, jpegs, baseline, in_process: dict, served_batch: int) -> paired.Round:
    """The in-process pipelines that the targets compare the served model with: the handler at the
    served batch size and at batch 1 in each precision, and the seed-style pipeline, one run each."""
    records = []
    for name, pipeline in in_process.items():
        for batch in dict.fromkeys([served_batch, 1]):
            run = pipeline.run(jpegs, batch, _batches(plan["reference_images"], batch))
            records.append(paired.record("in_process", run, precision=name, batch_size=batch))
    if baseline:
        records.append(paired.record("baseline", baseline.run(jpegs[:plan["baseline_images"]])))
    return records


def measure_served(plan: dict, args, export_dir: Path, device: torch.device, jpegs, work_dir: Path,
                   baseline=None, in_process: dict | None = None) -> dict:
    """The served model in rounds (bench/paired.py): each round serves every precision at every protocol
    and concurrency once, then measures the in-process references, so each target's two sides are
    measured minutes apart at most. The served tables are the medians of the rounds' runs."""
    # Tuning serves the default (`auto`) precision; its lone-request latency is held to its own in-process one.
    reference = plan["auto_precision"] if plan["auto_precision"] in plan["precisions"] else plan["precisions"][0]
    with ServedModel(export_dir, work_dir / "served", str(device)) as served:
        tuning = tune(served, plan, jpegs, (in_process or {}).get(reference)) if plan["tune"] else []
        if tuning:
            config = pick_config(tuning)
        else:
            config = args.served_config or DEFAULT_SERVED
        out = {"config": config.to_dict(), "label": config.label, "tuning": tuning, "rounds": []}
        runs = {(precision, protocol, concurrency): [] for precision in plan["precisions"]
                for protocol in plan["protocols"] for concurrency in plan["concurrency"]}
        failed: dict[str, str] = {}
        for round_ in range(plan["repeats"]):
            # Alternate the order, so the precision deployed last is measured first in the next round.
            order = plan["precisions"] if round_ % 2 == 0 else plan["precisions"][::-1]
            records: paired.Round = []
            for precision in order:
                if precision in failed:
                    continue
                if served.config is None or served.config.precision != precision:
                    why = _deploy(served, replace(config, precision=precision), jpegs)
                    if why:
                        failed[precision] = why
                        continue
                    out.setdefault("torchserve_description", _describe_summary(served.description))
                for protocol in plan["protocols"]:
                    for concurrency in plan["concurrency"]:
                        run = served.measure(protocol, jpegs, concurrency=concurrency,
                                             requests=_served_requests(plan, concurrency), warmup=max(2, concurrency))
                        runs[precision, protocol, concurrency].append(run)
                        records.append(paired.record("served", run, precision=precision, protocol=protocol,
                                                     concurrency=concurrency))
                        log(f"round {round_ + 1}: served {precision} {protocol} concurrency {concurrency}: "
                            f"{records[-1]['images_per_s']:.2f} images/s, p50 {records[-1]['p50_ms']} ms")
            records += measure_references(plan, jpegs, baseline, in_process or {}, config.batch_size)
            out["rounds"].append(records)
        for protocol in plan["protocols"]:
            out[protocol] = [
                {"precision": precision, "concurrency": concurrency,
                 "requests": _served_requests(plan, concurrency), **median_of_runs(runs[precision, protocol, concurrency])}
                for precision in plan["precisions"] for concurrency in plan["concurrency"]
                if runs[precision, protocol, concurrency]]
        if failed:
            out["failed"] = failed
    return out


def _served_requests(plan: dict, concurrency: int) -> int:
    return max(8, plan["request_rounds"] * concurrency)


def _deploy(served: ServedModel, config: ServedConfig, jpegs) -> str | None:
    """Deploy `config` and warm its workers up; why it could not start, or None when it did.

    A configuration that cannot start (workers outlasting startupTimeout while they compile,
    say) is reported in the results and must not end the run.
    """
    try:
        served.deploy(config)
    except Exception as error:  # noqa: BLE001 - see the docstring
        why = f"{type(error).__name__}: {error}"[:300]
        log(f"{config.label}: could not deploy: {why}")
        return why
    served.warm_up(jpegs)
    log(f"serving with {config.label}")
    return None


def tune(served: ServedModel, plan: dict, jpegs, reference: InProcessPipeline | None = None) -> list[dict]:
    """Each candidate measured twice, in forward then reverse order, so that a change in the
    machine's load during tuning favours no candidate; the figures are the means of the two.

    Each candidate's lone requests alternate with `reference` (the handler in process) captioning
    at batch 1, so the latency target compares figures of the same seconds (bench/paired.py says why)."""
    top_concurrency = max(plan["concurrency"])
    measured: dict[ServedConfig, list[dict[str, float]]] = {c: [] for c in TUNING_CANDIDATES}
    failed: dict[ServedConfig, str] = {}
    for order in (TUNING_CANDIDATES, TUNING_CANDIDATES[::-1]):
        for candidate in order:
            if candidate in failed:
                continue
            why = _deploy(served, candidate, jpegs)
            if why:
                failed[candidate] = why
                continue
            # Lone requests first, as in the rounds (concurrency 1 before 8 and 32).
            alone = _lone_latency(served, reference, jpegs)
            busy = served.measure("rest", jpegs, concurrency=top_concurrency, requests=2 * top_concurrency,
                                  warmup=top_concurrency).summary()
            figures = {"images_per_s_at_max_concurrency": busy["images_per_s"],
                       "server_cpu_ms_per_image": busy["server_cpu_ms_per_image"], **alone}
            measured[candidate].append(figures)
            against = figures.get("p50_alone_vs_in_process")
            log(f"tuning {candidate.label}: {busy['images_per_s']:.2f} images/s at concurrency {top_concurrency}, "
                f"p50 {figures['p50_ms_at_concurrency_1']:.0f} ms alone"
                + ("" if against is None else f" ({against:.2f} of in process)"))
    tuning = []
    for candidate, passes in measured.items():
        if not passes:
            tuning.append({"config": candidate.to_dict(), "label": candidate.label, "failed": failed.get(candidate)})
            continue
        means = {key: round(statistics.mean(p[key] for p in passes), 3) for key in passes[0]}
        tuning.append({"config": candidate.to_dict(), "label": candidate.label, **means, "passes": passes})
    return tuning


LONE_REQUESTS = 12  # per tuning pass, each followed or preceded by one image captioned in process


def _lone_latency(served: ServedModel, reference: InProcessPipeline | None, jpegs) -> dict[str, float]:
    """p50 of a lone REST request, and its ratio to the handler in process at batch 1, the two
    called in turn (bench/paired.py): a configuration is held to the latency target on figures
    from the same seconds."""
    if reference is None:
        alone = served.measure("rest", jpegs, concurrency=1, requests=LONE_REQUESTS, warmup=2).summary()
        return {"p50_ms_at_concurrency_1": alone["latency_ms"]["p50"]}
    call = served.rest_caller()

    def caption_served(jpeg: bytes) -> None:
        if "caption" not in call(jpeg):
            raise RuntimeError("a lone request was answered without a caption")

    alone_s, in_process_s = paired.alternating_latencies(caption_served, lambda jpeg: reference.handle([jpeg]),
                                                         jpegs, pairs=LONE_REQUESTS)
    alone_ms, in_process_ms = 1000 * statistics.median(alone_s), 1000 * statistics.median(in_process_s)
    return {"p50_ms_at_concurrency_1": round(alone_ms, 2), "p50_ms_in_process": round(in_process_ms, 2),
            "p50_alone_vs_in_process": round(alone_ms / in_process_ms, 3)}


# Candidates within this share of the best throughput are a tie, settled by the lone request's latency.
THROUGHPUT_TIE = 0.05


def meets_latency_target(candidate: dict) -> bool:
    """Whether the candidate's lone-request p50 stayed within LATENCY_TARGET of the handler in
    process in every pass, not only on average: on a shared machine one pass can flatter a
    configuration (a lone request on a one-thread worker read 1.04 of in process in one pass and
    1.38 in the other)."""
    return all(ratio <= LATENCY_TARGET for ratio in report.latency_ratio_per_pass(candidate))


def pick_config(tuning: list[dict]) -> ServedConfig:
    """Among the configurations that meet the latency target in every pass, those within
    THROUGHPUT_TIE of the highest throughput at top concurrency; of these, the one with the
    lowest lone-request p50. When none meets the target, the same among all of them."""
    started = [t for t in tuning if "failed" not in t]
    if not started:
        reasons = "; ".join(f"{t.get('label', t['config'])}: {t['failed']}" for t in tuning)
        raise RuntimeError(f"no server configuration tried could start its workers ({reasons})")
    pool = [t for t in started if meets_latency_target(t)] or started
    best = max(t["images_per_s_at_max_concurrency"] for t in pool)
    near = [t for t in pool if t["images_per_s_at_max_concurrency"] >= (1 - THROUGHPUT_TIE) * best]
    chosen = min(near, key=lambda t: t["p50_ms_at_concurrency_1"])
    return ServedConfig(**chosen["config"])


def _describe_summary(description: list[dict]) -> dict:
    model = description[0]
    return {key: model.get(key) for key in ("modelName", "batchSize", "maxBatchDelay", "minWorkers", "maxWorkers")} | {
        "workers": len(model.get("workers", []))}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
