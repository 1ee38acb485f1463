"""The bad-input corpus against a real TorchServe: every request gets its defined answer, no worker dies.

The corpus (`ops.request_corpus`) is generated here, not downloaded. A valid
image's caption is checked against the same archive run through the handler
outside TorchServe, so "still captions correctly" means the exact caption.
"""

from __future__ import annotations

import dataclasses
import json
import random
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from handler.caption_handler import CaptionHandler
from model.export_format import EXPORT_FILES, OPTIONAL_FILES
from ops.request_corpus import bad_input_corpus, encode, exif_rotated, scene, scene_images
from tests.helpers import torchserve_context


@pytest.fixture(scope="module")
def corpus():
    return bad_input_corpus()


@pytest.fixture(scope="module")
def strict(registered):
    """The session client without retries: a retry would hide a request that failed its batch."""
    return dataclasses.replace(registered, retries=0)


@pytest.fixture(scope="module")
def offline_handler(model_store, tmp_path_factory):
    """The handler on the very files inside the served archive, driven without TorchServe."""
    export_dir = tmp_path_factory.mktemp("served-export")
    with zipfile.ZipFile(model_store / "captioner.mar") as archive:
        packed = set(archive.namelist())
        for name in [*EXPORT_FILES, *(n for n in OPTIONAL_FILES if n in packed)]:
            (export_dir / name).write_bytes(archive.read(name))
        model_config = yaml.safe_load(archive.read("model-config.yaml"))
    context, _ = torchserve_context(export_dir, 1, model_config)
    handler = CaptionHandler()
    handler.initialize(context)

    def caption(image: bytes) -> str:
        return json.loads(handler.handle([{"body": bytearray(image)}], context)[0])["caption"]

    return caption


def _send_all(client, probes, concurrency=8):
    def send(probe):
        response = client.post(**probe.request_kwargs())
        return probe.check(response.status_code, response.text)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return [problem for problem in pool.map(send, probes) if problem]


def test_the_corpus_has_many_kinds_of_bad_input(corpus):
    refused = {p.kind for p in corpus if p.status >= 400}
    assert len(refused) >= 25, sorted(refused)
    assert {p.status for p in corpus} == {200, 400, 413, 415}
    assert all(p.words for p in corpus if p.status >= 400 and p.json_error), "every refusal names its problem"


def test_every_input_gets_its_defined_answer_and_no_worker_dies(strict, corpus, offline_handler):
    pids = strict.worker_pids()
    problems = _send_all(strict, corpus)
    assert not problems, "\n".join(problems)
    assert strict.worker_pids() == pids, "no worker died"
    image = scene_images(1, seed=4242)[0]
    assert strict.caption(image)["caption"] == offline_handler(image)


def test_exif_orientation_is_applied_before_captioning(strict, offline_handler):
    upright = scene(11)
    stored_turned = exif_rotated(upright, "PNG")  # lossless, so only the orientation differs
    assert strict.caption(stored_turned)["caption"] == strict.caption(encode(upright, "PNG"))["caption"]
    assert strict.caption(stored_turned)["caption"] == offline_handler(encode(upright, "PNG"))


def test_bad_requests_never_turn_good_ones_in_their_batches_into_errors(strict, corpus):
    bad = [p for p in corpus if p.status >= 400]
    images = scene_images(6, seed=300)
    references = [strict.caption(image)["caption"] for image in images]
    jobs = [("bad", i) for i in range(len(bad))] + [("good", i % len(images)) for i in range(len(bad))]
    random.Random(3).shuffle(jobs)
    pids = strict.worker_pids()

    def send(job):
        kind, index = job
        if kind == "bad":
            response = strict.post(**bad[index].request_kwargs())
            return bad[index].check(response.status_code, response.text)
        response = strict.post(data=images[index], extra_headers={"Content-Type": "image/jpeg"})
        if response.status_code != 200:
            return f"good image {index}: HTTP {response.status_code}: {response.text[:200]}"
        caption = response.json()["caption"]
        return None if caption == references[index] else f"good image {index}: {caption!r} != {references[index]!r}"

    with ThreadPoolExecutor(max_workers=16) as pool:  # twice the batch size: batches mix good and bad
        problems = [problem for problem in pool.map(send, jobs) if problem]
    assert not problems, "\n".join(problems)
    assert strict.worker_pids() == pids, "no worker died"
