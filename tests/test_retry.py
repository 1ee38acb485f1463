"""The client's retry bounds and `Retry-After`, against a real HTTP server on loopback that refuses on purpose.

TorchServe refuses an overload with 503 but never sends `Retry-After`; a proxy or
rate limiter in front of it may. This server stands in for such a proxy: it
answers the first N requests 503 (with or without `Retry-After`), then a caption.
What the client decided to wait is read from its `Delivery`, not timed.

The same server stands in for TorchServe's management API where a real one cannot
be made to fail on demand: a synchronous scale-down that races a busy worker (see
`CaptionClient.scale`) answers with exactly the bare 500 replayed here, and the
drill (`tests/test_drill.py`) scales a real TorchServe under load.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from client.__main__ import main as cli
from client.rest import CaptionClient, RetriesExhausted, ServiceError
from client.retry import retry_after_s

CAPTION = {"caption": "a red circle", "version": "1.0"}
REFUSAL = {"code": 503, "type": "ServiceUnavailableException", "message": "Model \"captioner\" has no worker"}
# TorchServe's answer to a synchronous scale-down that raced a busy worker: the exception had no message.
SCALE_RACE = {"code": 500, "type": "ConcurrentModificationException"}
SCALED = {"status": "Workers scaled to 1 for model: captioner"}
SCALE_TO_1 = "PUT /models/captioner?min_worker=1&max_worker=1&synchronous=true"


class RefusingServer:
    """Answers `refusals` requests with `status` and the body `refusal` (adding `Retry-After: retry_after`
    when set), then 200 with `answer`; POST and PUT alike. `requests` lists each one's method and path."""

    def __init__(self, refusals: int, retry_after: str | None = None, *, status: int = 503,
                 refusal: dict = REFUSAL, answer: dict = CAPTION) -> None:
        self.refusals = refusals
        self.retry_after = retry_after
        self.seen = 0
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.seen += 1
                owner.requests.append(f"{self.command} {self.path}")
                refused = owner.seen <= owner.refusals
                body = json.dumps(refusal if refused else answer).encode()
                self.send_response(status if refused else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if refused and owner.retry_after is not None:
                    self.send_header("Retry-After", owner.retry_after)
                self.end_headers()
                self.wfile.write(body)

            do_PUT = do_POST  # the management API's scale is a PUT

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "RefusingServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def client(self, **settings) -> CaptionClient:
        return CaptionClient(f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.port}", **settings)


def test_refusals_are_retried_with_growing_jittered_waits():
    with RefusingServer(refusals=3) as server:
        client = server.client(backoff=0.05, max_backoff=1.0)
        delivery = client.deliver(data=b"image")
    assert delivery.statuses == [503, 503, 503, 200] and not delivery.gave_up
    assert (delivery.retried, delivery.refused) == (3, 3)
    for retry, wait in enumerate(delivery.waits):  # half of 0.05 * 2**retry fixed, the other half random
        assert 0.025 * 2**retry <= wait <= 0.05 * 2**retry
    assert client.result(delivery) == CAPTION


def test_retry_after_is_waited_out_as_given():
    with RefusingServer(refusals=2, retry_after="1") as server:
        delivery = server.client(backoff=0.01).deliver(data=b"image")
    assert delivery.statuses == [503, 503, 200]
    assert delivery.waits == [1.0, 1.0], "the server's Retry-After, not the 10 ms backoff"


def test_retry_after_as_an_http_date_is_read():
    class Response:
        headers = {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}

    assert retry_after_s(Response()) == 0.0, "a date in the past means now"


def test_the_client_gives_up_after_its_retries_and_says_so():
    with RefusingServer(refusals=100) as server:
        client = server.client(retries=3, backoff=0.01)
        with pytest.raises(RetriesExhausted) as error:
            client.caption(b"image")
        assert server.seen == 4
    message = str(error.value)
    assert error.value.status == 503 and error.value.attempts == 4
    assert message.startswith("HTTP 503: ") and "overloaded" in message
    assert "gave up after 4 attempts in" in message and "at most 3 retries" in message


def test_the_client_gives_up_when_the_next_wait_passes_its_time_limit():
    with RefusingServer(refusals=100, retry_after="30") as server:
        client = server.client(retries=10, give_up_after=5.0)
        with pytest.raises(RetriesExhausted) as error:
            client.caption(b"image")
        assert server.seen == 1, "a Retry-After past the limit ends the attempts at once"
    assert "gave up after 1 attempts" in str(error.value) and "5 s limit" in str(error.value)


def test_the_cli_retries_and_reports_giving_up(tmp_path, capsys):
    image = tmp_path / "img.jpg"
    image.write_bytes(b"image")
    with RefusingServer(refusals=1) as server:
        assert cli(["--inference-port", str(server.port), "--key-file", "", "caption", str(image)]) == 0
    assert capsys.readouterr().out.strip() == f"{image}: a red circle"
    with RefusingServer(refusals=100) as server:
        code = cli(["--inference-port", str(server.port), "--key-file", "", "--retries", "2",
                    "caption", str(image)])
    assert code == 1
    err = capsys.readouterr().err
    assert "ERROR HTTP 503" in err and "gave up after 3 attempts" in err


def test_a_scale_answered_with_a_bare_500_is_sent_again():
    with RefusingServer(refusals=2, status=500, refusal=SCALE_RACE, answer=SCALED) as server:
        assert server.client(backoff=0.01).scale(1) == SCALED
    assert server.requests == [SCALE_TO_1] * 3, "the same bounds each time"


def test_a_scale_that_keeps_failing_raises_and_names_what_broke():
    with RefusingServer(refusals=100, status=500, refusal=SCALE_RACE, answer=SCALED) as server:
        with pytest.raises(ServiceError) as error:
            server.client(backoff=0.01).scale(1, attempts=2)
    assert server.requests == [SCALE_TO_1] * 2
    assert error.value.status == 500 and str(error.value) == "HTTP 500: ConcurrentModificationException"


def test_torchserves_own_500_for_workers_that_did_not_start_is_not_sent_again():
    failed = {"code": 500, "type": "InternalServerException",
              "message": "Failed to start workers for model captioner version: null"}
    with RefusingServer(refusals=100, status=500, refusal=failed, answer=SCALED) as server:
        with pytest.raises(ServiceError) as error:
            server.client(backoff=0.01).scale(1)
    assert server.requests == [SCALE_TO_1]
    assert str(error.value) == f"HTTP 500: {failed['message']}"


def test_a_scale_the_server_refuses_is_not_sent_again():
    missing = {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: captioner"}
    with RefusingServer(refusals=100, status=404, refusal=missing, answer=SCALED) as server:
        with pytest.raises(ServiceError) as error:
            server.client(backoff=0.01).scale(1)
    assert server.requests == [SCALE_TO_1]
    assert str(error.value) == "HTTP 404: Model not found: captioner"


def test_worker_counts_torchserve_would_break_on_are_refused_before_sending():
    """TorchServe 0.12 applies min_worker=-1 and then fails every request of the model: nothing of that is sent."""
    with RefusingServer(refusals=0, answer=SCALED) as server:
        client = server.client()
        for min_workers, max_workers, words in [(-1, None, "min_workers must be 0 or more, got -1"),
                                                (1, -1, "max_workers must be 0 or more, got -1"),
                                                (1, 0, r"max_workers \(0\) must be at least min_workers \(1\)"),
                                                (2, 1, r"max_workers \(1\) must be at least min_workers \(2\)")]:
            with pytest.raises(ValueError, match=words):
                client.scale(min_workers, max_workers)
        assert server.requests == []
        assert client.scale(0, 0) == client.scale(1, 3) == SCALED
    assert server.requests == ["PUT /models/captioner?min_worker=0&max_worker=0&synchronous=true",
                               "PUT /models/captioner?min_worker=1&max_worker=3&synchronous=true"]


def test_the_cli_behind_make_scale_sends_a_failed_scale_again_and_says_so(capsys):
    with RefusingServer(refusals=1, status=500, refusal=SCALE_RACE, answer=SCALED) as server:
        assert cli(["--management-port", str(server.port), "--key-file", "", "scale", "1"]) == 0
    assert server.requests == [SCALE_TO_1] * 2
    out, err = capsys.readouterr()
    assert json.loads(out) == SCALED
    assert "sent again (1 time(s))" in err
