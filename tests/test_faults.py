"""A worker killed under load: TorchServe restarts it and the client's retries lose no valid request.

The test kills only the worker process its own session's TorchServe started,
by the PID the describe call reports.
"""

from __future__ import annotations

import dataclasses
import json

from ops.request_corpus import encode, scene
from ops.soak import run_soak


def test_a_killed_worker_is_replaced_and_no_valid_request_is_lost(registered):
    # Large photos keep the worker busy decoding, so the kill lands while it holds a batch.
    images = [encode(scene(seed).resize((2400, 2400)), "JPEG", quality=85) for seed in range(900, 904)]
    client = dataclasses.replace(registered, timeout=300.0)  # queued requests wait out the restart
    pids = client.worker_pids()
    report = run_soak(
        client, requests_total=48, concurrency=16, bad_fraction=0.0, images=images, probes=[], kill_worker_after=1
    )
    print(json.dumps(report.figures()))
    assert report.kill["pid"] == pids[0]
    assert report.failures() == [], "every valid request was answered with its caption"
    assert report.valid_captioned == 48
    now = client.worker_pids()
    assert report.kill["new_pid"] not in (None, pids[0]) and report.kill["new_pid"] in now and pids[0] not in now
    assert len(now) == len(pids), "the killed worker was replaced, not dropped"
    assert report.retries > 0, "requests in the killed worker's batch failed once and were sent again"
    assert report.statuses == {200: 48}
