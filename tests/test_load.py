"""A short soak (`ops.soak`) against the session's TorchServe: every request answered, memory bounded.

The full run (2,000 requests, 16 at a time) is `make soak`; this is the same
code with fewer requests, so that it fits in the default test run.
"""

from __future__ import annotations

import json

from ops.request_corpus import scene_images
from ops.soak import run_soak

MEMORY_GROWTH_BOUND_MB = 64.0


def test_short_soak_answers_everything_and_keeps_worker_memory_bounded(registered):
    report = run_soak(
        registered, requests_total=120, concurrency=16, bad_fraction=0.05, images=scene_images(4, seed=500), seed=1
    )
    print(json.dumps(report.figures()))
    assert report.failures(MEMORY_GROWTH_BOUND_MB) == []
    assert report.answered == report.requests == 120
    assert report.valid_captioned == report.valid == 114 and report.bad_as_defined == report.bad == 6
    assert report.retries == 0, "no attempt failed on the server's side"
    assert report.memory_growth_mb is not None
