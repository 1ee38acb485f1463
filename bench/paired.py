"""The targets' ratios, each from rounds in which both of its sides were measured back to back.

On a shared machine the speed of the cores drifts over minutes (another
tenant, the clock), and a full `make bench` lasts most of an hour. A ratio of
the served throughput, measured near the end, to the in-process one, measured
near the start, then measures that drift as much as the pipelines. So the
served phase runs in rounds: every precision, protocol and concurrency served
once, then the in-process handler and the seed-style pipeline that the targets
compare them with. A target is the median over the rounds of that round's
ratio, and every round's ratio is kept beside it.

The server tuning's latency check pairs closer still: `alternating_latencies`
sends one lone request, then captions one image in process, and so on, so the
two medians it compares come from the same seconds.

A round is a list of records, one per measurement:
    {"part": "served", "precision": "fp32", "protocol": "rest", "concurrency": 32, "images_per_s": ..., "p50_ms": ...}
    {"part": "in_process", "precision": "fp32", "batch_size": 8, "images_per_s": ..., "p50_ms": ...}
    {"part": "baseline", "images_per_s": ..., "p50_ms": ...}
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.stats import Run

Round = list[dict[str, Any]]


def record(part: str, run: Run, **where: Any) -> dict[str, Any]:
    """One measurement of a round: which pipeline (`part` and `where`), its throughput and median latency."""
    summary = run.summary()
    return {"part": part, **where, "images_per_s": summary["images_per_s"], "p50_ms": summary["latency_ms"]["p50"]}


def find(round_: Round, **where: Any) -> dict[str, Any] | None:
    """The record of `round_` that matches every key of `where`."""
    return next((r for r in round_ if all(r.get(key) == value for key, value in where.items())), None)


def paired_ratio(rounds: Sequence[Round], figure: str, numerator: dict[str, Any],
                 denominator: dict[str, Any]) -> dict[str, Any] | None:
    """`figure` of the `numerator` pipeline over that of the `denominator`, round by round.

    Returns {"median": ..., "rounds": [one ratio per round]}, using only the rounds
    that measured both sides; None when no round did.
    """
    ratios = []
    for round_ in rounds:
        top, bottom = find(round_, **numerator), find(round_, **denominator)
        if top and bottom and bottom[figure] > 0:
            ratios.append(top[figure] / bottom[figure])
    if not ratios:
        return None
    return {"median": round(statistics.median(ratios), 3), "rounds": [round(r, 3) for r in ratios]}


def alternating_latencies(first: Callable[[bytes], Any], second: Callable[[bytes], Any], payloads: Sequence[bytes],
                          pairs: int, warmup_pairs: int = 1) -> tuple[list[float], list[float]]:
    """Seconds per call of `first` and of `second`, called in turn on the same payload, `pairs` times.

    The first `warmup_pairs` pairs are not timed. Alternating call by call leaves the machine
    no time to change speed between the two sides, and neither side always runs first.
    """
    first_s: list[float] = []
    second_s: list[float] = []
    for index in range(warmup_pairs + pairs):
        payload = payloads[index % len(payloads)]
        order = ((first, first_s), (second, second_s))
        for call, times in (order if index % 2 == 0 else order[::-1]):
            started = time.perf_counter()
            call(payload)
            if index >= warmup_pairs:
                times.append(time.perf_counter() - started)
    return first_s, second_s
