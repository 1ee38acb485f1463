"""The one closed-loop load generator behind the soak, the drill, the overload run and the benchmarks.

`concurrency` clients, threads of this process, each send their next request as
soon as the last one is finished; each thread gets its own sender (its own HTTP
session), so they never wait on each other's connections. Every run is counted
the same way, so a p99 or a "lost" means the same thing in SECURITY.md and in
BENCHMARKS.md:

- a *request* is one call of the sender, retries included;
- *answered*: it got a real answer (a caption, or the handler's 4xx), after retries;
- *lost*: it got none: the server was never reached, or it still refused when the
  client gave up;
- *failed*: it did not get the answer it should have (lost ones included);
- *refused*: attempts the server answered with 503 (job queue full, no worker);
- *retried*: attempts sent again;
- latencies run from the first attempt to the final answer, over answered requests,
  and their percentiles come from `latency_ms`.

    report = closed_loop(make_send, requests=1000, concurrency=16)
    print(report.summary())          # or report.by_label() when phases were labelled

Run as a command, it sends that load of valid images to a TorchServe already
running from a working folder (`make serve`, `python -m ops.server start`) and
prints the summary as one JSON object; it exits 1 when a request failed:

    python -m ops.load --workdir build/serve --requests 500 --concurrency 8
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from client.rest import CaptionClient
from client.retry import Delivery
from ops.request_corpus import scene_images
from ops.server import TorchServe
from training.cli import positive_float, positive_int, user_errors

PERCENTILES = (50, 90, 99)


def latency_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 (linear interpolation between samples) and mean of `seconds`, in milliseconds."""
    if not seconds:
        return {f"p{p}": float("nan") for p in PERCENTILES} | {"mean": float("nan")}
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    summary = {f"p{p}": round(float(np.percentile(values, p)), 2) for p in PERCENTILES}
    summary["mean"] = round(float(values.mean()), 2)
    return summary


@dataclass
class Outcome:
    """What one request ended with."""

    ok: bool  # it got the answer it should have
    status: int | None = None  # the last HTTP status; None when the server was never reached
    attempts: int = 1
    refused: int = 0  # attempts answered 503
    lost: bool = False  # no real answer (unreachable, or still refused when the client gave up)
    tag: str = ""  # what the caller wants counted per answer (e.g. the model version that answered)
    detail: str = ""  # why it failed

    @classmethod
    def of(cls, delivery: Delivery, check: Callable[[int, str], str | None], tag: str = "") -> "Outcome":
        """Judge a client delivery: `check(status, body text)` returns None when the answer is right, else why not."""
        counts = dict(attempts=max(1, delivery.attempts), refused=delivery.refused, tag=tag)
        response = delivery.response
        if response is None:
            return cls(ok=False, lost=True, detail=f"no answer: {delivery.error}; {delivery.give_up_message()}",
                       **counts)
        if delivery.gave_up:
            return cls(ok=False, status=response.status_code, lost=True,
                       detail=f"HTTP {response.status_code}: {response.text[:200]}; {delivery.give_up_message()}",
                       **counts)
        problem = check(response.status_code, response.text)
        return cls(ok=problem is None, status=response.status_code, detail=problem or "", **counts)


Send = Callable[[int], Outcome]  # request number -> what it ended with


@dataclass
class Sample:
    label: str  # the phase the request was sent in
    started_s: float  # since the load started
    latency_s: float
    outcome: Outcome


@dataclass
class LoadReport:
    """Every request of one run; `summary` counts them."""

    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0

    def select(self, label: str | None = None) -> list[Sample]:
        return [s for s in self.samples if label is None or s.label == label]

    def summary(self, label: str | None = None) -> dict[str, Any]:
        samples = self.select(label)
        outcomes = [s.outcome for s in samples]
        answered = [s for s in samples if not s.outcome.lost]
        wall = self.wall_s if label is None else _span(samples)
        summary = {
            "requests": len(samples),
            "answered": len(answered),
            "failed": sum(not o.ok for o in outcomes),
            "lost": sum(o.lost for o in outcomes),
            "refused": sum(o.refused for o in outcomes),
            "retried": sum(o.attempts - 1 for o in outcomes),
            "statuses": {str(k): v for k, v in sorted(Counter(o.status for o in outcomes).items(), key=str)},
            "seconds": round(wall, 2),
            "requests_per_s": round(len(samples) / wall, 2) if wall > 0 else None,
            "latency_ms": latency_ms([s.latency_s for s in answered]),
        }
        summary["latency_ms"]["max"] = round(1000 * max((s.latency_s for s in answered), default=float("nan")), 2)
        tags = Counter(o.tag for o in outcomes if o.tag)
        if tags:
            summary["tags"] = dict(sorted(tags.items()))
        return summary

    def labels(self) -> list[str]:
        """Labels in the order their first request was sent."""
        return list(dict.fromkeys(s.label for s in sorted(self.samples, key=lambda s: s.started_s)))

    def by_label(self) -> dict[str, dict[str, Any]]:
        return {label: self.summary(label) for label in self.labels()}

    def problems(self, limit: int = 20) -> list[str]:
        """The first `limit` failures, each with its phase and why."""
        failed = [s for s in self.samples if not s.outcome.ok]
        lines = [f"[{s.label}] {s.outcome.detail}" if s.label else s.outcome.detail for s in failed[:limit]]
        if len(failed) > limit:
            lines.append(f"... and {len(failed) - limit} more")
        return lines


def _span(samples: list[Sample]) -> float:
    if not samples:
        return 0.0
    return max(s.started_s + s.latency_s for s in samples) - min(s.started_s for s in samples)


def closed_loop(
    make_send: Callable[[], Send],
    *,
    requests: int,
    concurrency: int,
    time_limit_s: float | None = None,
    stop: threading.Event | None = None,
    label: Callable[[], str] | None = None,
    on_sample: Callable[[int, Sample], None] | None = None,
    progress: str | None = None,
) -> LoadReport:
    """Send up to `requests` requests from `concurrency` clients; returns every one's outcome.

    Args:
        make_send: called once per client thread; the sender it returns turns a request
            number into an `Outcome` (an exception it raises counts as a lost request).
        time_limit_s: no request starts after this many seconds.
        stop: no request starts once this is set (the drill stops its load this way).
        label: the current phase, read when each request starts.
        on_sample: called after each request with the number finished so far, one call at a time.
        progress: a progress bar with this title on stderr.
    """
    if concurrency < 1:  # no client would send anything, and a caller waiting for requests would wait forever
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    sends = [make_send() for _ in range(concurrency)]
    counter = itertools.count()
    report = LoadReport()
    lock = threading.Lock()
    start = threading.Barrier(len(sends) + 1)
    bar = tqdm(total=requests if stop is None else None, desc=progress, disable=progress is None,
               file=sys.stderr, mininterval=2.0, unit="req")
    started = 0.0

    def should_stop() -> bool:
        return (stop is not None and stop.is_set()) or (
            time_limit_s is not None and time.perf_counter() - started > time_limit_s)

    def client(send: Send) -> None:
        start.wait()
        while not should_stop() and (index := next(counter)) < requests:
            phase = label() if label else ""
            t0 = time.perf_counter()
            try:
                outcome = send(index)
            except Exception as error:  # noqa: BLE001 - every failure is counted and reported
                outcome = Outcome(ok=False, status=getattr(error, "status", None), lost=True,
                                  detail=repr(error)[:300])
            sample = Sample(phase, t0 - started, time.perf_counter() - t0, outcome)
            with lock:
                report.samples.append(sample)
                bar.update(1)
                if on_sample is not None:
                    on_sample(len(report.samples), sample)

    threads = [threading.Thread(target=client, args=(send,), daemon=True) for send in sends]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    report.wall_s = time.perf_counter() - started
    bar.close()
    return report


# --- senders for the captioner -----------------------------------------------------------------


def caption_check(expected: str | None = None) -> Callable[[int, str], str | None]:
    """A check that the answer is a caption (`expected` itself, when given)."""

    def check(status: int, text: str) -> str | None:
        if status != 200:
            return f"HTTP {status}: {text[:200]}"
        body = _json_object(text)
        if "caption" not in body:
            return f"reply without a caption: {text[:200]}"
        if expected is not None and body["caption"] != expected:
            return f"caption {body['caption']!r}, expected {expected!r}"
        return None

    return check


def caption_senders(client: CaptionClient, images: Sequence[bytes],
                    expected: Sequence[str] | None = None) -> Callable[[], Send]:
    """A sender factory for `closed_loop`: request i captions image i (cycling), tagged with the version answering.

    Each client thread gets its own copy of `client` (its own HTTP session; the same
    tokens, model, version and retry settings).
    """
    checks = [caption_check(expected[i] if expected else None) for i in range(len(images))]

    def make_send() -> Send:
        own = dataclasses.replace(client)

        def send(number: int) -> Outcome:
            index = number % len(images)
            delivery = own.deliver(data=images[index], extra_headers={"Content-Type": "image/jpeg"})
            text = delivery.response.text if delivery.response is not None else ""
            version = str(_json_object(text).get("version", "")) if delivery.response is not None else ""
            return Outcome.of(delivery, checks[index], tag=version)

        return send

    return make_send


def _json_object(text: str) -> dict:
    try:
        body = json.loads(text)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# --- command line ------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Send a closed loop of valid images to a TorchServe already running from --workdir "
                    "(`make serve`) and print what the clients saw as one JSON object.")
    parser.add_argument("--workdir", default="build/serve",
                        help="the server's working folder (`ops.server start --workdir`), holding its "
                             "config.properties and key_file.json")
    parser.add_argument("--model", default="captioner", help="registered model to caption with")
    parser.add_argument("--requests", type=positive_int, default=200)
    parser.add_argument("--concurrency", type=positive_int, default=8, help="clients sending at once")
    parser.add_argument("--time-limit", type=positive_float, default=None,
                        help="seconds after which no request starts")
    return parser


def exit_status(failures: Sequence[str]) -> int:
    """A load command's end: each failure as a `FAILED:` line on stderr; status 1 when there is any."""
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    config = Path(args.workdir) / "config.properties"
    server = TorchServe(args.workdir, args.workdir, base_config=config) if config.is_file() else None
    if server is None or server.pid() is None:
        raise FileNotFoundError(f"no TorchServe runs from {args.workdir}; start one with `make serve`, "
                                "or pass the --workdir it was started with")
    client = CaptionClient(server.url("inference"), server.url("management"), server.tokens(), model=args.model)
    report = closed_loop(caption_senders(client, scene_images(8, seed=300)), requests=args.requests,
                         concurrency=args.concurrency, time_limit_s=args.time_limit, progress="load")
    print(json.dumps({"workdir": str(args.workdir), "model": args.model, "concurrency": args.concurrency,
                      **report.summary()}))
    return exit_status(report.problems(limit=10))


if __name__ == "__main__":
    with user_errors():
        sys.exit(main())
