"""A closed-loop load generator: `concurrency` clients, each sending its next request when the last is answered.

Clients are threads in this process; each gets its own caller (its own HTTP
session), so they never wait on each other's connections. The process CPU
time used during the run is recorded: the clients share the machine with the
server, and that share is reported, not hidden.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Callable, Sequence

import psutil

from bench.stats import Run

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


def closed_loop(
    make_caller: Callable[[], Caller],
    payloads: Sequence[bytes],
    *,
    concurrency: int,
    requests: int,
    warmup: int = 0,
    server_pid: int | None = None,
) -> Run:
    """Send `requests` requests from `concurrency` clients after `warmup` unmeasured ones.

    Every reply must be a caption (`"caption"` in the body); failures are counted
    and reported, never retried.
    """
    callers = [make_caller() for _ in range(concurrency)]
    if warmup:
        _drive(callers, payloads, warmup)
    server_cpu_before = process_tree_cpu_s(server_pid)
    client_cpu_before = time.process_time()
    latencies, errors, wall = _drive(callers, payloads, requests)
    client_cpu = time.process_time() - client_cpu_before
    server_cpu = process_tree_cpu_s(server_pid) - server_cpu_before
    return Run(
        images=len(latencies), wall_s=wall, latencies_s=latencies,
        extra={
            "errors": len(errors),
            "client_cpu_cores": round(client_cpu / wall, 3),
            "server_cpu_ms_per_image": round(1000 * server_cpu / max(len(latencies), 1), 2),
            **({"first_error": errors[0]} if errors else {}),
        },
    )


def _drive(callers: list[Caller], payloads: Sequence[bytes], requests: int) -> tuple[list[float], list[str], float]:
    counter = itertools.count()
    latencies: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(len(callers) + 1)

    def client(call: Caller) -> None:
        start.wait()
        while (index := next(counter)) < requests:
            payload = payloads[index % len(payloads)]
            t0 = time.perf_counter()
            try:
                body = call(payload)
                if "caption" not in body:
                    raise ValueError(f"reply without a caption: {str(body)[:200]}")
            except Exception as error:  # noqa: BLE001 - every failure is counted and reported
                errors.append(repr(error)[:300])
                continue
            latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(call,), daemon=True) for call in callers]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - started
