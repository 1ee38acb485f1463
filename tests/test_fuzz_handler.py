"""Property-based fuzzing of the handler in process: every answer a caption or a 4xx JSON error.

Batches mix fuzzed requests (`ops.fuzzing.request_strategies`) with valid ones
and go through TorchServe's own frame reader into `CaptionHandler.handle()`
with a real `Context`. The property (`ops.fuzzing.checks`): no exception, no
5xx, every refusal is {"error", "status"}, every valid request gets exactly
its caption from when it was sent alone, and a damaged image is captioned
exactly when Pillow can decode it. The "ci" profile keeps this to a few
hundred cases, the same ones every run; `make fuzz` runs thousands.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings

from ops.fuzzing.in_process import InProcessService, batches, check_batch
from ops.fuzzing.profiles import CI
from ops.fuzzing.request_strategies import STRATEGIES, json_documents
from tests.helpers import write_tiny_export


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    # 16 px images: the ResNet's cost dominates each case, and parsing is what is fuzzed.
    export = write_tiny_export(tmp_path_factory.mktemp("fuzz-export"), seed=1, image_size=16)
    service = InProcessService(export)
    yield service
    service.close()


@pytest.fixture(autouse=True)
def quiet_worker_logs(caplog):
    """TorchServe's reader logs a traceback for every body that is not the JSON its type says."""
    caplog.set_level(logging.CRITICAL, logger="root")


def _holds_for(strategy):
    @settings(CI)
    @given(batches(strategy))
    def check(service, batch):
        result = check_batch(service, batch)
        assert not result.problems, "\n".join(result.problems)

    return check


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_answer_is_a_caption_or_a_json_4xx(service, name):
    _holds_for(STRATEGIES[name])(service)


def test_the_fuzzed_cases_reach_every_status_class(service):
    """The strategies are worth running only if they make captions, 400s and 415s (and not just one)."""
    seen = set()

    @settings(CI, max_examples=40)
    @given(batches(json_documents()))
    def collect(batch):
        seen.update(answer.status for name, answer in check_batch(service, batch).answers if name != "valid")

    collect()
    assert {400, 415} <= seen, seen
