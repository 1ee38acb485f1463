"""Bounded load test: many concurrent requests, some of them bad, against a real TorchServe.

    python -m ops.soak                                    # 2,000 requests, 16 at a time, 5% bad
    python -m ops.soak --requests 500 --kill-worker-after 100
    make soak

It packs the model in --export-dir, starts its own TorchServe (config.properties,
free loopback ports, a temporary folder), sends the load, stops the server and
prints one JSON object of figures. It exits 1 when a guarantee broke:

- a request got no answer (after the client's retries);
- a valid image got no caption, or another caption than when it was sent alone
  (which would also show answers going to the wrong request of a batch);
- a bad input did not get its defined answer (see `ops.request_corpus`);
- the workers' memory grew by more than --max-memory-growth-mb between the
  end of a warm-up (every kind of input once) and the end of the load.

With --kill-worker-after N it kills the worker process (SIGKILL, by the PID that
the describe call reports) once N answers are in, and reports how long
TorchServe took to have a new worker ready. `run_soak` is the same load against a
server someone else started; the tests run a short version of it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests
from requests.adapters import HTTPAdapter

from client.rest import CaptionClient
from ops.archive import build_archive
from ops.request_corpus import Probe, bad_input_corpus, scene_images
from ops.server import TorchServe, free_port_overrides


@dataclass
class SoakReport:
    """What a soak run saw; `failures()` lists the guarantees it broke."""

    requests: int = 0
    answered: int = 0
    valid: int = 0
    valid_captioned: int = 0
    bad: int = 0
    bad_as_defined: int = 0
    bad_kinds: int = 0
    statuses: Counter = field(default_factory=Counter)
    retries: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    worker_memory_mb_before: float | None = None
    worker_memory_mb_after: float | None = None
    kill: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def memory_growth_mb(self) -> float | None:
        """Growth of the workers' resident memory; None when a worker was replaced during the run."""
        if self.kill is not None or self.worker_memory_mb_before is None or self.worker_memory_mb_after is None:
            return None
        return self.worker_memory_mb_after - self.worker_memory_mb_before

    def failures(self, max_memory_growth_mb: float = 64.0) -> list[str]:
        failures = list(self.problems[:20])
        if len(self.problems) > 20:
            failures.append(f"... and {len(self.problems) - 20} more")
        if self.answered != self.requests:
            failures.append(f"{self.requests - self.answered} of {self.requests} requests got no answer")
        growth = self.memory_growth_mb
        if growth is not None and growth > max_memory_growth_mb:
            failures.append(f"worker memory grew by {growth:.0f} MB (bound {max_memory_growth_mb:.0f} MB)")
        if self.kill is not None and self.kill.get("worker_ready_s") is None:
            failures.append("no new worker became ready after the kill")
        return failures

    def figures(self) -> dict[str, Any]:
        latencies = sorted(self.latencies)

        def quantile(q: float) -> float | None:
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else None

        figures = {
            "requests": self.requests,
            "answered": self.answered,
            "valid_images": self.valid,
            "valid_captioned": self.valid_captioned,
            "valid_errors": self.valid - self.valid_captioned,
            "bad_inputs": self.bad,
            "bad_answered_as_defined": self.bad_as_defined,
            "bad_input_kinds": self.bad_kinds,
            "statuses": dict(sorted(self.statuses.items())),
            "client_retries": self.retries,
            "seconds": round(self.seconds, 1),
            "requests_per_second": round(self.requests / self.seconds, 1) if self.seconds else None,
            "latency_s": {"p50": quantile(0.5), "p99": quantile(0.99), "max": quantile(1.0)},
            "worker_memory_mb": {
                "after_warm_up": _round(self.worker_memory_mb_before),
                "after_load": _round(self.worker_memory_mb_after),
                "growth": _round(self.memory_growth_mb),
            },
        }
        if self.kill is not None:
            figures["worker_kill"] = self.kill
        return figures


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def worker_memory_mb(client: CaptionClient) -> float:
    """Resident memory of the model's worker processes (read from /proc by the PIDs describe reports)."""
    total = 0
    for pid in client.worker_pids():
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


class _WorkerKiller:
    """Kills the worker once, then times how long TorchServe takes to have a new one ready."""

    def __init__(self, client: CaptionClient, poll_s: float = 0.1) -> None:
        self.client = client
        self.poll_s = poll_s
        self.result: dict[str, Any] = {}
        self.thread: threading.Thread | None = None

    def kill(self) -> None:
        before = self.client.worker_pids()
        pid = before[0]
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        self.result = {"pid": pid, "new_pid": None, "worker_ready_s": None}
        self.thread = threading.Thread(target=self._watch, args=(pid, set(before), killed_at), daemon=True)
        self.thread.start()

    def _watch(self, pid: int, before: set[int], killed_at: float, timeout: float = 300.0) -> None:
        # With several workers the others stay READY throughout, so only a PID that did not
        # exist before the kill counts, and only once describe no longer lists the dead one.
        while time.monotonic() - killed_at < timeout:
            try:
                workers = self.client.describe()[0]["workers"]
            except (requests.RequestException, IndexError, KeyError):
                workers = []
            pids = {w.get("pid") for w in workers}
            ready = [w for w in workers if w.get("status") == "READY" and w.get("pid") not in before | {None}]
            if ready and pid not in pids:
                self.result.update(new_pid=ready[0]["pid"], worker_ready_s=round(time.monotonic() - killed_at, 2))
                return
            time.sleep(self.poll_s)

    def wait(self) -> dict[str, Any]:
        if self.thread is not None:
            self.thread.join()
        return self.result


def run_soak(
    client: CaptionClient,
    *,
    requests_total: int = 2000,
    concurrency: int = 16,
    bad_fraction: float = 0.05,
    images: list[bytes] | None = None,
    probes: list[Probe] | None = None,
    kill_worker_after: int | None = None,
    seed: int = 0,
) -> SoakReport:
    """Send `requests_total` requests, `concurrency` at a time, a `bad_fraction` of them from `probes`.

    The client's session gets a connection pool as large as `concurrency`, and
    its retries are counted in the report.
    """
    images = images if images is not None else scene_images(12, seed=1000 + seed)
    probes = probes if probes is not None else bad_input_corpus()
    client.session.mount("http://", HTTPAdapter(pool_connections=2, pool_maxsize=max(10, concurrency)))
    report = SoakReport(requests=requests_total)

    # References: each valid image alone. Warm-up: every probe once, so that the memory
    # baseline already includes what the largest inputs make the worker allocate.
    references = [client.caption(image)["caption"] for image in images]

    def warm_up(probe: Probe) -> str | None:
        response = client.post(**probe.request_kwargs())
        return probe.check(response.status_code, response.text)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        report.problems += [f"warm-up: {problem}" for problem in pool.map(warm_up, probes) if problem]
    report.worker_memory_mb_before = worker_memory_mb(client)
    retries_before = client.retried

    rng = random.Random(seed)
    bad_positions = set(rng.sample(range(requests_total), round(requests_total * bad_fraction))) if probes else set()
    plan: list[tuple[str, int]] = [
        ("bad", rng.randrange(len(probes))) if i in bad_positions else ("valid", rng.randrange(len(images)))
        for i in range(requests_total)
    ]
    report.bad_kinds = len({index for kind, index in plan if kind == "bad"})

    def send(kind: str, index: int) -> tuple[str, int, int | None, str, float]:
        started = time.perf_counter()
        try:
            if kind == "valid":
                response = client.post(data=images[index], extra_headers={"Content-Type": "image/jpeg"})
            else:
                response = client.post(**probes[index].request_kwargs())
            return kind, index, response.status_code, response.text, time.perf_counter() - started
        except requests.RequestException as error:
            return kind, index, None, f"{type(error).__name__}: {error}", time.perf_counter() - started

    killer = _WorkerKiller(client) if kill_worker_after is not None else None
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(send, kind, index) for kind, index in plan]
        for future in as_completed(futures):
            kind, index, status, text, seconds = future.result()
            report.latencies.append(seconds)
            if status is None:
                report.problems.append(f"{kind} request got no answer: {text[:200]}")
                continue
            report.answered += 1
            report.statuses[status] += 1
            if kind == "valid":
                report.valid += 1
                caption = _caption_of(text) if status == 200 else None
                if caption == references[index]:
                    report.valid_captioned += 1
                elif caption is None:
                    report.problems.append(f"valid image {index}: HTTP {status}: {text[:200]}")
                else:
                    report.problems.append(f"valid image {index}: caption {caption!r}, alone {references[index]!r}")
            else:
                report.bad += 1
                problem = probes[index].check(status, text)
                if problem is None:
                    report.bad_as_defined += 1
                else:
                    report.problems.append(problem)
            if killer is not None and report.answered == kill_worker_after:
                killer.kill()
    report.seconds = time.perf_counter() - started
    report.retries = client.retried - retries_before
    if killer is not None:
        report.kill = killer.wait()
    report.worker_memory_mb_after = worker_memory_mb(client)
    return report


def _caption_of(text: str) -> str | None:
    try:
        body = json.loads(text)
    except ValueError:
        return None
    return body.get("caption") if isinstance(body, dict) else None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Load TorchServe with good and bad requests and check every answer.")
    parser.add_argument("--export-dir", default="build/export", help="exported model to pack and serve")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bad-fraction", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--kill-worker-after", type=int, default=None, help="kill the worker after this many answers")
    parser.add_argument("--max-memory-growth-mb", type=float, default=64.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    export_dir = Path(args.export_dir)
    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        root = Path(folder)
        build_archive(export_dir, root / "model_store", stage_root=root / "stage")
        server = TorchServe(root / "serve", root / "model_store", overrides=free_port_overrides())
        server.start()
        try:
            client = CaptionClient(
                server.url("inference"), server.url("management"), server.tokens(), timeout=180.0
            )
            client.register("captioner.mar", initial_workers=args.workers)
            report = run_soak(
                client,
                requests_total=args.requests,
                concurrency=args.concurrency,
                bad_fraction=args.bad_fraction,
                kill_worker_after=args.kill_worker_after,
                seed=args.seed,
            )
        finally:
            server.stop()
    figures = {"export_dir": str(export_dir), "workers": args.workers, "concurrency": args.concurrency,
               **report.figures()}
    print(json.dumps(figures, indent=2))
    failures = report.failures(args.max_memory_growth_mb)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
