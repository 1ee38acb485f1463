"""A burst far above what TorchServe will queue: it refuses the excess, the clients' retries lose nothing.

    python -m ops.overload --export-dir build/export        # 300 requests, 48 at a time, job queue of 4
    make overload

TorchServe holds at most `job_queue_size` requests per model waiting for a worker
(config.properties; 100 there) and answers any beyond that at once with 503 and a
JSON body. This run starts its own TorchServe with a small queue and one worker,
so that a burst of `--concurrency` clients overflows it many times over, and counts
what happened: answered, refused (503 attempts), retried, lost, latency. It exits 1
when a request was lost or answered wrongly despite the client's retries, and
when nothing was refused (then the burst did not overload the server: raise
--concurrency).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from client.rest import CaptionClient
from ops.load import LoadReport, caption_senders, closed_loop, exit_status
from ops.own_server import check_export, own_server
from ops.request_corpus import scene_images
from training.cli import positive_int, user_errors


def run_overload(client: CaptionClient, *, requests: int = 300, concurrency: int = 48,
                 images: list[bytes] | None = None, progress: str | None = None) -> LoadReport:
    """`requests` valid images from `concurrency` clients at once, each retrying as `client` is set to."""
    images = images if images is not None else scene_images(8, seed=300)
    return closed_loop(caption_senders(client, images), requests=requests, concurrency=concurrency,
                       progress=progress)


def overload_failures(summary: dict[str, Any]) -> list[str]:
    failures = []
    if summary["lost"]:
        failures.append(f"{summary['lost']} of {summary['requests']} requests were lost despite the retries")
    if summary["failed"] > summary["lost"]:
        failures.append(f"{summary['failed'] - summary['lost']} requests got a wrong answer")
    if not summary["refused"]:
        failures.append("no request was refused: the burst did not overload the server (raise --concurrency)")
    return failures


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Overload TorchServe's job queue and count what the clients saw.")
    parser.add_argument("--export-dir", default="build/export", help="exported model to pack and serve")
    parser.add_argument("--requests", type=positive_int, default=300)
    parser.add_argument("--concurrency", type=positive_int, default=48)
    parser.add_argument("--job-queue-size", type=positive_int, default=4,
                        help="TorchServe's job_queue_size for this run")
    parser.add_argument("--workers", type=positive_int, default=1)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    check_export(args.export_dir)
    overrides = {"job_queue_size": str(args.job_queue_size)}
    with own_server(args.export_dir, overrides=overrides, prefix="overload-") as (_, client):
        client.register("captioner.mar")
        client.scale(args.workers)
        described = client.describe()[0]
        report = run_overload(client, requests=args.requests, concurrency=args.concurrency, progress="overload")
    summary = report.summary()
    print(json.dumps({
        "export_dir": str(args.export_dir), "job_queue_size": args.job_queue_size, "workers": args.workers,
        "batch_size": described.get("batchSize"), "concurrency": args.concurrency,
        "client": {"retries": client.retries, "give_up_after_s": client.give_up_after}, **summary,
    }))
    return exit_status(overload_failures(summary) + report.problems(limit=10))


if __name__ == "__main__":
    with user_errors():
        sys.exit(main())
