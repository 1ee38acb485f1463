"""A burst well above TorchServe's job queue: its 503 refusals are JSON, and the client's retries lose nothing.

A TorchServe of this module's own with `job_queue_size=2` (the session's has 100)
serves the session's tiny model; 32 clients at once overflow it many times over.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from client.rest import CaptionClient
from ops.load import caption_senders, closed_loop
from ops.overload import overload_failures, run_overload
from ops.request_corpus import scene_images
from ops.server import TorchServe, free_port_overrides

IMAGES = scene_images(4, seed=700)


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory, model_store):
    server = TorchServe(tmp_path_factory.mktemp("overload"), model_store,
                        overrides={**free_port_overrides(), "job_queue_size": "2"})
    server.start()
    try:
        overloaded = CaptionClient(server.url("inference"), server.url("management"), server.tokens(), timeout=120.0)
        overloaded.register("captioner.mar")
        overloaded.scale(1)
        yield overloaded
    finally:
        server.stop()


def test_torchserve_refuses_what_its_queue_cannot_hold_with_a_json_503(small_queue):
    once = dataclasses.replace(small_queue, retries=0)

    def post(number: int):
        return once.post(data=IMAGES[number % len(IMAGES)], extra_headers={"Content-Type": "image/jpeg"})

    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(post, range(64)))
    refused = [r for r in responses if r.status_code == 503]
    assert refused, "a burst of 32 against a queue of 2 is refused in part"
    assert {r.status_code for r in responses} <= {200, 503}
    body = json.loads(refused[0].text)
    assert refused[0].headers["Content-Type"].startswith("application/json")
    assert body["code"] == 503 and body["type"] == "ServiceUnavailableException" and body["message"]


def test_an_overload_burst_loses_nothing_with_the_clients_retries(small_queue):
    report = run_overload(small_queue, requests=200, concurrency=32, images=IMAGES)
    summary = report.summary()
    print(json.dumps(summary))
    assert overload_failures(summary) == [], report.problems()
    assert summary["answered"] == summary["requests"] == 200 and summary["lost"] == 0
    assert summary["refused"] > 0 and summary["retried"] >= summary["refused"]
    assert summary["statuses"] == {"200": 200}


def test_without_retries_the_same_burst_loses_requests(small_queue):
    once = dataclasses.replace(small_queue, retries=0)
    report = closed_loop(caption_senders(once, IMAGES), requests=100, concurrency=32)
    summary = report.summary()
    assert summary["lost"] > 0 and summary["retried"] == 0
    assert all("gave up after 1 attempts" in s.outcome.detail for s in report.samples if s.outcome.lost)
