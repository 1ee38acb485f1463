"""The benchmarks' closed loop: `ops.load.closed_loop`, as the soak and the drill use it, timed as a `Run`.

Each client thread gets its own caller (its own HTTP session or a shared gRPC
channel). Every reply must be a caption; failures are counted and reported,
never retried (the callers are made with `retries=0`), so a failed request never
shows up as a slow success. The process CPU time used during the run is
recorded: the clients share the machine with the server, and that share is
reported, not hidden.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import psutil

from bench.stats import Run
from ops.load import Outcome, Send
from ops.load import closed_loop as drive

Caller = Callable[[bytes], dict]


def process_tree_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds used so far by process `pid` and its children (0 if unknown)."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def caption_sender(call: Caller, payloads: Sequence[bytes]) -> Send:
    """Request number i captions payload i (cycling); the reply must hold a caption."""

    def send(index: int) -> Outcome:
        body = call(payloads[index % len(payloads)])
        if "caption" not in body:
            return Outcome(ok=False, status=200, detail=f"reply without a caption: {str(body)[:200]}")
        return Outcome(ok=True, status=200)

    return send


def closed_loop(
    make_caller: Callable[[], Caller],
    payloads: Sequence[bytes],
    *,
    concurrency: int,
    requests: int,
    warmup: int = 0,
    server_pid: int | None = None,
) -> Run:
    """Send `requests` requests from `concurrency` clients after `warmup` unmeasured ones."""
    senders = [caption_sender(make_caller(), payloads) for _ in range(concurrency)]
    if warmup:
        drive(iter(senders).__next__, requests=warmup, concurrency=concurrency)
    server_cpu_before = process_tree_cpu_s(server_pid)
    client_cpu_before = time.process_time()
    report = drive(iter(senders).__next__, requests=requests, concurrency=concurrency)
    client_cpu = time.process_time() - client_cpu_before
    server_cpu = process_tree_cpu_s(server_pid) - server_cpu_before
    captioned = [s.latency_s for s in report.samples if s.outcome.ok]
    problems = report.problems(limit=1)
    return Run(
        images=len(captioned), wall_s=report.wall_s, latencies_s=captioned,
        extra={
            "errors": len(report.samples) - len(captioned),
            "client_cpu_cores": round(client_cpu / report.wall_s, 3),
            "server_cpu_ms_per_image": round(1000 * server_cpu / max(len(captioned), 1), 2),
            **({"first_error": problems[0]} if problems else {}),
        },
    )
