"""A sample of the fuzzed requests against the real TorchServe of the test session.

Each fuzzed request is sent at the same time as valid ones, so TorchServe can
batch them together. Every answer must be a caption or a 4xx JSON error, every
valid request must get exactly the caption it gets alone, and no worker may
die (the worker PIDs are the same at the end). The in-process tests
(tests/test_fuzz_handler.py) run many more cases; this checks that the
frontend in between changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings, strategies as st

from ops.fuzzing.cases import Case
from ops.fuzzing.checks import answer_problem, image_problem
from ops.fuzzing.in_process import valid_requests
from ops.fuzzing.profiles import CI
from ops.fuzzing.request_strategies import any_case
from ops.request_corpus import MAX_IMAGE_PIXELS


def _header_safe(text: str) -> bool:
    """Whether `requests` can send `text` in a header (latin-1, no control characters)."""
    return all(32 <= ord(ch) < 256 for ch in text)


def _sendable(case: Case) -> bool:
    """Sendable, and past TorchServe's frontend: a form field with an empty name gets its 500 (test below)."""
    parts = case.request.parts
    return all(_header_safe(p.content_type) and _header_safe(p.name) for p in parts) and (
        not case.request.multipart or all(p.name for p in parts)
    )


def _frontend_form_limit(request, status: int, text: str) -> bool:
    """TorchServe's own 500 for a url-encoded body its form decoder cannot read (SECURITY.md, "Known limits").

    Netty parses an `application/x-www-form-urlencoded` body before the handler sees
    it, and answers 500 `ErrorDataDecoderException` ("Bad string") for bytes that are
    no form, as many image files are. The worker is not involved (its PIDs are
    checked below); every other 5xx is still a failure.
    """
    urlencoded = not request.multipart and any(
        p.content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded" for p in request.parts)
    return urlencoded and status == 500 and '"ErrorDataDecoderException"' in text


def _answer(response) -> tuple[int, str]:
    """Status and body; a streamed reply (one JSON line per word) is judged by its last line, the result."""
    lines = [line for line in response.text.splitlines() if line.strip()]
    if response.status_code == 200 and len(lines) > 1:
        return 200, lines[-1]
    return response.status_code, response.text


@pytest.fixture(scope="module")
def strict(registered):
    """No retries: a retry would hide a request that failed its batch or killed its worker."""
    return dataclasses.replace(registered, retries=0)


@pytest.fixture(scope="module")
def references(strict):
    """What each valid request gets when it is sent alone."""
    answers = []
    for request in valid_requests():
        response = strict.post(**request.http_kwargs())
        assert response.status_code == 200, response.text
        answers.append(json.loads(response.text)["tokens"])
    return answers


def test_fuzzed_requests_beside_valid_ones_never_break_the_server(strict, references, caplog):
    caplog.set_level(logging.CRITICAL)
    valid = valid_requests()
    pids = strict.worker_pids()

    @settings(CI, max_examples=40)
    @given(st.lists(any_case().filter(_sendable), min_size=1, max_size=3))
    def send(cases):
        jobs = [("fuzzed", case.request, case) for case in cases] + [("valid", r, i) for i, r in enumerate(valid)]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            responses = list(pool.map(lambda job: strict.post(**job[1].http_kwargs()), jobs))
        problems = []
        for (kind, request, what), response in zip(jobs, responses):
            status, text = _answer(response)
            if kind == "valid":
                tokens = json.loads(text).get("tokens") if status == 200 else None
                if tokens != references[what]:
                    problems.append(f"valid request {what} got {status} {text[:200]!r} beside {cases!r:.400}")
                continue
            if _frontend_form_limit(request, status, text):
                continue
            problem = answer_problem(status, text)
            if problem is None and what.expect is not None and status != what.expect:
                problem = f"expected HTTP {what.expect}, got {status}: {text[:200]!r}"
            if problem is None and what.image is not None:
                problem = image_problem(what.image, status, MAX_IMAGE_PIXELS)
            if problem:
                problems.append(f"{what.strategy} {request!r:.400}: {problem}")
        assert not problems, "\n".join(problems)

    send()
    assert strict.worker_pids() == pids, "no worker died"


def test_a_form_field_without_a_name_is_refused_by_torchserve_before_the_handler(strict):
    """Found by fuzzing: TorchServe's frontend answers 500 (Netty "empty name") itself; the worker lives on.

    The handler never sees the request, so nothing in it can turn this into a 4xx;
    SECURITY.md lists it under the known limits.
    """
    pids = strict.worker_pids()
    response = strict.post(files=[("data", ("a.jpg", valid_requests()[0].parts[0].value, "image/jpeg")),
                                  ("", (None, b"3"))])
    assert response.status_code == 500 and "empty name" in response.text
    assert strict.worker_pids() == pids
