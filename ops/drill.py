"""Live operations under load: scale, add a version, switch, roll back and remove it while requests keep coming.

    python -m ops.drill --export-dir build/export
    make drill

It starts its own TorchServe with the export packed twice, as version 1.0
(`captioner.mar`) and version 2.0 (`captioner-2.0.mar`, the same weights, as an
operator would ship a rebuilt archive). A closed loop of valid images runs from
the first phase to the last, while the drill

1. serves 1.0 on 2 workers, scales to 4, then down to 1;
2. registers 2.0, makes it the default, rolls back to 1.0, unregisters 2.0,

waiting in each steady phase until --dwell-requests more requests have finished.
Every reply must be the image's caption (both versions hold the same weights, so
the caption is the same whichever answers); the client retries what the server
refuses or fails while workers come and go, and those retries are counted.
TorchServe 0.12 drops the requests a worker holds when a scale-down stops it,
without an answer (pytorch/serve issue #1101), so the drill's clients give each
attempt --attempt-timeout seconds and send it again after that. A scale-down
under load can itself fail with a bare 500 (`CaptionClient.scale` says why); the
client sends it again, and each operation's `sent_again` counts those; after each
scale the drill reads the worker count back. It prints one JSON line of figures
per phase (requests, failed, retried, refused, p50/p99, the versions that
answered) and exits 1 when any valid request failed or a scale left another
worker count than it asked for.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from client.rest import CaptionClient
from ops.load import LoadReport, Sample, caption_senders, closed_loop, exit_status
from ops.own_server import archive_name, check_export, own_server
from ops.request_corpus import scene_images
from training.cli import positive_float, positive_int, user_errors

NEW_VERSION = "2.0"


@dataclass
class DrillReport:
    load: LoadReport
    # each operation: phase, call, seconds, sent_again; a scale also the workers it should leave and those it left
    steps: list[dict[str, Any]] = field(default_factory=list)

    def phases(self) -> dict[str, dict[str, Any]]:
        phases = {}
        for label, summary in self.load.by_label().items():
            keep = ("requests", "answered", "failed", "lost", "retried", "refused", "seconds")
            phases[label] = {key: summary[key] for key in keep} | {
                "p50_ms": summary["latency_ms"]["p50"], "p99_ms": summary["latency_ms"]["p99"],
                "versions": summary.get("tags", {}),
            }
        return phases

    def figures(self) -> dict[str, Any]:
        total = self.load.summary()
        return {
            "requests": total["requests"], "failed": total["failed"], "lost": total["lost"],
            "retried": total["retried"], "refused": total["refused"], "seconds": total["seconds"],
            "p50_ms": total["latency_ms"]["p50"], "p99_ms": total["latency_ms"]["p99"],
            "phases": self.phases(), "operations": self.steps,
        }

    def failures(self) -> list[str]:
        failures = self.load.problems()
        if not self.load.samples:
            failures.append("no request was sent")
        missing = [label for label, phase in self.phases().items() if phase["requests"] == 0]
        if missing:
            failures.append(f"no request ran during {', '.join(missing)}")
        for step in self.steps:
            if "workers" in step and step["workers"] != step["expected_workers"]:
                failures.append(f"{step['operation']} left {step['workers']} worker(s)")
        return failures


class _Phases:
    """The current phase's name, and waiting until enough requests of it have finished."""

    def __init__(self, first: str) -> None:
        self.name = first
        self.finished: dict[str, int] = {}
        self.changed = threading.Condition()

    def __call__(self) -> str:
        return self.name

    def enter(self, name: str) -> None:
        with self.changed:
            self.name = name

    def count(self, _: int, sample: Sample) -> None:
        with self.changed:
            self.finished[sample.label] = self.finished.get(sample.label, 0) + 1
            self.changed.notify_all()

    def dwell(self, requests: int, timeout_s: float) -> None:
        """Wait until `requests` requests sent in this phase have finished (at most `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while self.finished.get(self.name, 0) < requests and time.monotonic() < deadline:
                self.changed.wait(timeout=1.0)


def run_drill(client: CaptionClient, *, new_archive: str, concurrency: int = 8, dwell_requests: int = 40,
              images: list[bytes] | None = None, dwell_timeout_s: float = 300.0,
              attempt_timeout_s: float = 20.0, give_up_after_s: float = 120.0,
              progress: str | None = None, log: Callable[[str], None] = lambda line: None) -> DrillReport:
    """Run the operations on `client`'s model (1.0 registered) while a closed loop of valid images runs.

    The load's clients wait `attempt_timeout_s` for each attempt (a request dropped by a
    scale-down is then sent again) and give up after `give_up_after_s`.
    """
    loaded = dataclasses.replace(client, timeout=attempt_timeout_s, give_up_after=give_up_after_s)
    images = images if images is not None else scene_images(8, seed=400)
    expected = [client.caption(image)["caption"] for image in images]
    phases = _Phases("1.0 on 2 workers")
    steps: list[dict[str, Any]] = []

    def operate(during: str, after: str, call: Callable[[], Any], description: str,
                workers: int | None = None) -> None:
        """Run one operation; for a scale, `workers` is the count 1.0 must then have (read back with describe)."""
        phases.enter(during)
        log(f"{description} ...")
        started, resent = time.monotonic(), client.scales_retried
        call()
        step = {"phase": during, "operation": description, "seconds": round(time.monotonic() - started, 2),
                "sent_again": client.scales_retried - resent}
        if workers is not None:
            step |= {"expected_workers": workers, "workers": len(client.describe("1.0")[0]["workers"])}
        steps.append(step)
        phases.enter(after)
        phases.dwell(dwell_requests, dwell_timeout_s)

    stop = threading.Event()
    result: dict[str, LoadReport] = {}

    def load() -> None:
        result["load"] = closed_loop(
            caption_senders(loaded, images, expected), requests=10**9, concurrency=concurrency, stop=stop,
            label=phases, on_sample=phases.count, progress=progress,
        )

    client.scale(2)
    runner = threading.Thread(target=load, daemon=True)
    runner.start()
    try:
        phases.dwell(dwell_requests, dwell_timeout_s)
        operate("scaling 2 -> 4", "1.0 on 4 workers", lambda: client.scale(4), "scale to 4 workers", workers=4)
        operate("scaling 4 -> 1", "1.0 on 1 worker", lambda: client.scale(1), "scale to 1 worker", workers=1)
        operate(f"registering {NEW_VERSION}", f"{NEW_VERSION} registered, 1.0 default",
                lambda: client.register(new_archive, initial_workers=1), f"register {new_archive}")
        operate(f"setting {NEW_VERSION} default", f"{NEW_VERSION} default",
                lambda: client.set_default(NEW_VERSION), f"make {NEW_VERSION} the default")
        operate("rolling back", "rolled back to 1.0", lambda: client.set_default("1.0"), "roll back to 1.0")
        operate(f"unregistering {NEW_VERSION}", "1.0 alone",
                lambda: client.unregister(NEW_VERSION), f"unregister {NEW_VERSION}")
    finally:
        stop.set()
        runner.join()
    return DrillReport(result["load"], steps)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Scale, switch versions and roll back under a steady load.")
    parser.add_argument("--export-dir", default="build/export", help="exported model to pack and serve")
    parser.add_argument("--concurrency", type=positive_int, default=8)
    parser.add_argument("--dwell-requests", type=positive_int, default=40,
                        help="requests to finish in each steady phase before the next operation")
    parser.add_argument("--attempt-timeout", type=positive_float, default=20.0,
                        help="seconds a client waits for one attempt before sending it again")
    parser.add_argument("--give-up-after", type=positive_float, default=120.0,
                        help="seconds after which a client gives up")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    check_export(args.export_dir)
    with own_server(args.export_dir, versions=("1.0", NEW_VERSION), prefix="drill-") as (_, client):
        client.register(archive_name("1.0"))
        report = run_drill(client, new_archive=archive_name(NEW_VERSION), concurrency=args.concurrency,
                           dwell_requests=args.dwell_requests, attempt_timeout_s=args.attempt_timeout,
                           give_up_after_s=args.give_up_after, progress="drill",
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps({"export_dir": str(args.export_dir), "concurrency": args.concurrency,
                      "client": {"retries": client.retries, "attempt_timeout_s": args.attempt_timeout,
                                 "give_up_after_s": args.give_up_after},
                      **report.figures()}))
    return exit_status(report.failures())


if __name__ == "__main__":
    with user_errors():
        sys.exit(main())
