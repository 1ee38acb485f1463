"""Bounded load test: many concurrent requests, some of them bad, against a real TorchServe.

    python -m ops.soak                                    # 10,000 requests, 16 at a time, 5% bad
    python -m ops.soak --requests 500 --kill-worker-after 100
    make soak

It packs the model in --export-dir, starts its own TorchServe (config.properties,
free loopback ports, a temporary folder), sends the load, stops the server and
prints one JSON object of figures. It exits 1 when a guarantee broke:

- a request got no answer (after the client's retries);
- a valid image got no caption, or another caption than when it was sent alone
  (which would also show answers going to the wrong request of a batch);
- a bad input did not get its defined answer (see `ops.request_corpus`);
- the workers' resident memory, measured after a warm-up (every kind of input
  once), halfway and at the end, grew by more than --max-memory-growth-percent
  (5% by default) over the first measurement, or by more than
  --max-memory-growth-mb when that is given.

With --kill-worker-after N it kills the worker process (SIGKILL, by the PID that
the describe call reports) once N answers are in, and reports how long
TorchServe took to have a new worker ready. `run_soak` is the same load against a
server someone else started; the tests run a short version of it. The load
itself is `ops.load.closed_loop`, the generator the drill and the benchmarks use.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil
import requests

from client.rest import CaptionClient
from ops.load import LoadReport, Outcome, Sample, Send, caption_check, closed_loop, exit_status
from ops.request_corpus import Probe, bad_input_corpus, scene_images
from ops.own_server import check_export, own_server
from training.cli import fraction, non_negative_float, positive_int, user_errors

MEMORY_GROWTH_PERCENT = 5.0


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
    load: LoadReport = field(default_factory=LoadReport)
    worker_memory_mb: dict[str, float | None] = field(default_factory=dict)  # start, middle, end
    kill: dict[str, Any] | None = None  # None or empty: no worker was killed
    problems: list[str] = field(default_factory=list)

    @property
    def worker_memory_mb_before(self) -> float | None:
        return self.worker_memory_mb.get("start")

    @property
    def worker_memory_mb_after(self) -> float | None:
        return self.worker_memory_mb.get("end")

    def _comparable(self) -> bool:
        """Memory is compared only when the same workers ran throughout (no kill) and every reading was made."""
        readings = [self.worker_memory_mb.get(when) for when in ("start", "middle", "end")]
        return not self.kill and all(reading is not None and reading > 0 for reading in readings)

    @property
    def memory_growth_mb(self) -> float | None:
        """Largest growth of the workers' resident memory over the start; None when not comparable."""
        if not self._comparable():
            return None
        memory = self.worker_memory_mb
        return max(memory["middle"], memory["end"]) - memory["start"]

    @property
    def memory_growth_percent(self) -> float | None:
        growth = self.memory_growth_mb
        return None if growth is None else 100.0 * growth / self.worker_memory_mb["start"]

    def failures(self, max_memory_growth_mb: float | None = None,
                 max_memory_growth_percent: float | None = MEMORY_GROWTH_PERCENT) -> list[str]:
        failures = list(self.problems[:20])
        if len(self.problems) > 20:
            failures.append(f"... and {len(self.problems) - 20} more")
        if self.answered != self.requests:
            failures.append(f"{self.requests - self.answered} of {self.requests} requests got no answer")
        memory = ", ".join(f"{when} {_round(mb)} MB" for when, mb in self.worker_memory_mb.items())
        growth, percent = self.memory_growth_mb, self.memory_growth_percent
        if growth is not None and max_memory_growth_mb is not None and growth > max_memory_growth_mb:
            failures.append(f"worker memory grew by {growth:.0f} MB ({memory}; bound {max_memory_growth_mb:.0f} MB)")
        if percent is not None and max_memory_growth_percent is not None and percent > max_memory_growth_percent:
            failures.append(
                f"worker memory grew by {percent:.1f}% ({memory}; bound {max_memory_growth_percent:g}%)")
        if self.kill and self.kill.get("worker_ready_s") is None:
            failures.append("no new worker became ready after the kill")
        return failures

    def figures(self) -> dict[str, Any]:
        figures = {
            **self.load.summary(),
            "valid_images": self.valid,
            "valid_captioned": self.valid_captioned,
            "valid_errors": self.valid - self.valid_captioned,
            "bad_inputs": self.bad,
            "bad_answered_as_defined": self.bad_as_defined,
            "bad_input_kinds": self.bad_kinds,
            "worker_memory_mb": {
                **{when: _round(mb) for when, mb in self.worker_memory_mb.items()},
                "growth": _round(self.memory_growth_mb),
                "growth_percent": None if self.memory_growth_percent is None else round(self.memory_growth_percent, 2),
            },
        }
        if self.kill:
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
    requests_total: int = 10_000,
    concurrency: int = 16,
    bad_fraction: float = 0.05,
    images: list[bytes] | None = None,
    probes: list[Probe] | None = None,
    kill_worker_after: int | None = None,
    seed: int = 0,
    progress: str | None = None,
) -> SoakReport:
    """Send `requests_total` requests, `concurrency` at a time, a `bad_fraction` of them from `probes`.

    Each client thread gets its own copy of `client` (its own HTTP session, the same
    tokens and retry settings); their retries are counted in the report.
    """
    images = images if images is not None else scene_images(12, seed=1000 + seed)
    probes = probes if probes is not None else bad_input_corpus()
    report = SoakReport(requests=requests_total)

    # References: each valid image alone. Warm-up: every probe once, so that the memory
    # baseline already includes what the largest inputs make the worker allocate.
    references = [client.caption(image)["caption"] for image in images]

    def warm_up(probe: Probe) -> str | None:
        response = client.post(**probe.request_kwargs())
        return probe.check(response.status_code, response.text)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        report.problems += [f"warm-up: {problem}" for problem in pool.map(warm_up, probes) if problem]
    report.worker_memory_mb["start"] = worker_memory_mb(client)

    rng = random.Random(seed)
    bad_positions = set(rng.sample(range(requests_total), round(requests_total * bad_fraction))) if probes else set()
    plan: list[tuple[str, int]] = [
        ("bad", rng.randrange(len(probes))) if i in bad_positions else ("valid", rng.randrange(len(images)))
        for i in range(requests_total)
    ]
    report.bad_kinds = len({index for kind, index in plan if kind == "bad"})

    # Each valid image must get the caption it got alone.
    valid_checks = [_labelled(f"valid image {i}", caption_check(reference)) for i, reference in enumerate(references)]

    def make_send() -> Send:
        own = dataclasses.replace(client)  # its own session; TokenStore shared

        def send(number: int) -> Outcome:
            kind, index = plan[number]
            if kind == "valid":
                delivery = own.deliver(data=images[index], extra_headers={"Content-Type": "image/jpeg"})
                return Outcome.of(delivery, valid_checks[index], tag=kind)
            return Outcome.of(own.deliver(**probes[index].request_kwargs()), probes[index].check, tag=kind)

        return send

    killer = _WorkerKiller(client) if kill_worker_after is not None else None

    def on_sample(finished: int, sample: Sample) -> None:
        if killer is not None and finished == kill_worker_after:
            killer.kill()
        if finished == requests_total // 2:
            report.worker_memory_mb["middle"] = worker_memory_mb(client)

    load = closed_loop(make_send, requests=requests_total, concurrency=concurrency, on_sample=on_sample,
                       progress=progress)
    report.load = load
    report.seconds = load.wall_s
    for sample in load.samples:
        outcome = sample.outcome
        report.retries += outcome.attempts - 1
        if outcome.status is not None and not outcome.lost:
            report.answered += 1
            report.statuses[outcome.status] += 1
        if outcome.tag == "valid":
            report.valid += 1
            report.valid_captioned += outcome.ok
        elif outcome.tag == "bad":
            report.bad += 1
            report.bad_as_defined += outcome.ok
    report.problems += load.problems(limit=len(load.samples))
    if killer is not None:
        report.kill = killer.wait()  # {} when the kill point was never reached: no kill, as SoakReport reads it
    report.worker_memory_mb.setdefault("middle", None)
    report.worker_memory_mb["end"] = worker_memory_mb(client)
    return report


def _labelled(label: str, check: Callable[[int, str], str | None]) -> Callable[[int, str], str | None]:
    """`check`, its problems prefixed with `label` (which request of the soak it was)."""

    def labelled(status: int, text: str) -> str | None:
        problem = check(status, text)
        return None if problem is None else f"{label}: {problem}"

    return labelled


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Load TorchServe with good and bad requests and check every answer.")
    parser.add_argument("--export-dir", default="build/export", help="exported model to pack and serve")
    parser.add_argument("--requests", type=positive_int, default=10_000)
    parser.add_argument("--concurrency", type=positive_int, default=16)
    parser.add_argument("--bad-fraction", type=fraction, default=0.05, help="share of bad inputs, from 0 to 1")
    parser.add_argument("--workers", type=positive_int, default=1)
    parser.add_argument("--kill-worker-after", type=positive_int, default=None,
                        help="kill the worker after this many answers (fewer than --requests)")
    parser.add_argument("--max-memory-growth-percent", type=non_negative_float, default=MEMORY_GROWTH_PERCENT,
                        help="most growth of the workers' memory over its first reading, in percent")
    parser.add_argument("--max-memory-growth-mb", type=non_negative_float, default=None,
                        help="also an absolute bound, in MB")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the checks that compare two options."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    # The kill happens once that many answers are in: at or past the last one it would never
    # happen, and the run would report a kill with no worker to wait for.
    if args.kill_worker_after is not None and args.kill_worker_after >= args.requests:
        parser.error(f"argument --kill-worker-after: must be below --requests ({args.requests}), "
                     f"got {args.kill_worker_after}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_export(args.export_dir)
    with own_server(args.export_dir, prefix="soak-") as (_, client):
        client.register("captioner.mar")
        client.scale(args.workers)  # model-config.yaml's minWorkers would win over initial_workers
        report = run_soak(
            client,
            requests_total=args.requests,
            concurrency=args.concurrency,
            bad_fraction=args.bad_fraction,
            kill_worker_after=args.kill_worker_after,
            seed=args.seed,
            progress="soak",
        )
    figures = {"export_dir": str(args.export_dir), "workers": args.workers, "concurrency": args.concurrency,
               **report.figures()}
    print(json.dumps(figures, indent=2))
    return exit_status(report.failures(args.max_memory_growth_mb, args.max_memory_growth_percent))


if __name__ == "__main__":
    with user_errors():
        sys.exit(main())
