"""REST client: caption images (plain or streamed) and call the management API.

Inference is idempotent, so failed attempts caused by the server are sent again
(`client.retry`): connection refused or reset, 502/503/504 (503 is also how
TorchServe refuses requests beyond its job queue when it is overloaded), and the
requests a worker had in hand when it died (TorchServe answers those with the
message "Worker died.", status 507 after a SIGKILL; it restarts the worker and
queues new requests until it is back). Waits grow exponentially with jitter and
follow `Retry-After` when the server sends one; the attempts stop after `retries`
retries or `give_up_after` seconds, whichever comes first, and then `caption`
raises `RetriesExhausted` naming the status and what was tried. The handler's own
4xx answers are never retried, and a request that itself kills every worker it
reaches is sent at most `worker_died_retries + 1` times.

A file with options travels as a multipart form: the file's bytes in the field
`data`, each option a field beside it, as TorchServe hands every form field to the
handler. A JSON body would carry the file in base64, a third larger, so a file
that fits under the server's `max_request_size` alone would not fit with an
option; and the form's `data` is read as an image by the image models and as a
clip by the video models, so no field name depends on the model.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import requests
from urllib3.exceptions import NewConnectionError

from client.auth import TokenStore
from client.retry import (  # noqa: F401 - RETRY_STATUSES, WORKER_DIED and should_retry are part of this API
    RETRY_STATUSES,
    WORKER_DIED,
    Delivery,
    backoff_s,
    call_again,
    is_worker_died,
    parse_body as _parse,
    retry_after_s,
    should_retry,
)

logger = logging.getLogger(__name__)


# What an answer without a body means: TorchServe's frontend refuses a body over `max_request_size`
# with a bare 413, before the handler (whose own 413s say which limit) sees it.
EMPTY_ANSWERS = {413: "the request is over the server's max_request_size (config.properties)"}


class ServiceError(RuntimeError):
    """The service answered with an error; `status` is the HTTP code, `body` the parsed reply."""

    def __init__(self, status: int, body: Any) -> None:
        # TorchServe leaves "message" out when the exception behind a 500 has none; its "type" then says what broke.
        message = (body.get("error") or body.get("message") or body.get("type")) if isinstance(body, dict) else body
        if not message:
            message = EMPTY_ANSWERS.get(status, "(the answer had no body)")
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


# Runtime exceptions TorchServe 0.12 raises when a scale-down races a busy worker (`CaptionClient.scale`).
SCALE_RACES = {"ConcurrentModificationException", "NullPointerException"}


def _is_scale_race(error: Exception) -> bool:
    return (isinstance(error, ServiceError) and error.status == 500 and isinstance(error.body, dict)
            and error.body.get("type") in SCALE_RACES)


class RetriesExhausted(ServiceError):
    """The server kept refusing (503, 502, 504, "Worker died.") until the client's retry bounds were reached."""

    def __init__(self, delivery: Delivery) -> None:
        super().__init__(delivery.response.status_code, _parse(delivery.response))
        hint = " (the server is overloaded: its job queue is full, or it has no worker)" if self.status == 503 else ""
        self.args = (f"{self.args[0]}{hint}; {delivery.give_up_message()}",)
        self.delivery = delivery
        self.attempts = delivery.attempts
        self.seconds = delivery.seconds


class Unreachable(requests.ConnectionError):
    """The last attempt did not reach the server, and the client's retry bounds were reached.

    `refused` is True when that attempt could not even open a connection (refused, no
    route): the server is down or elsewhere, so every other request would wait the same
    retries for nothing. A connection that opened and then broke is about one request.
    """

    def __init__(self, url: str, delivery: Delivery) -> None:
        self.refused = could_not_connect(delivery.error)
        reason = str(delivery.error)
        if self.refused and NEW_CONNECTION_FAILED in reason:  # urllib3 wraps the OS's reason in two reprs
            reason = reason.split(NEW_CONNECTION_FAILED, 1)[1].rstrip("\"')")
        super().__init__(f"cannot reach {url}: {reason}; {delivery.give_up_message()}")
        self.delivery = delivery


NEW_CONNECTION_FAILED = "Failed to establish a new connection: "


def could_not_connect(error: BaseException | None) -> bool:
    """Whether a `requests` error is a connection that never opened (urllib3's NewConnectionError inside)."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    reason = error.args[0] if isinstance(error, requests.ConnectionError) and error.args else None
    return isinstance(getattr(reason, "reason", reason), NewConnectionError)


def option_text(value: Any) -> str:
    """An option as text, for a form field or a gRPC input: booleans as the handler reads them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def worker_bounds(min_workers: int, max_workers: int | None = None) -> tuple[int, int]:
    """(min, max) worker counts to send, refused here when TorchServe would take them and break.

    TorchServe 0.12 applies a negative minimum (describe shows minWorkers -1 and no
    worker), answers 500 "Index -1 out of bounds", and every request of the model
    fails afterwards; a maximum below the minimum is no bound. No max means max = min;
    a max of 0 is a max given (and refused with a minimum above it), not "none".
    """
    maximum = min_workers if max_workers is None else max_workers
    for name, count in (("min_workers", min_workers), ("max_workers", maximum)):
        if count < 0:
            raise ValueError(f"{name} must be 0 or more, got {count}")
    if maximum < min_workers:
        raise ValueError(f"max_workers ({maximum}) must be at least min_workers ({min_workers}); "
                         f"leave it out for max = min")
    return min_workers, maximum


@dataclass
class CaptionClient:
    """Talks to one TorchServe instance.

    Args:
        inference_url: e.g. http://127.0.0.1:8080
        management_url: e.g. http://127.0.0.1:8081
        tokens: bearer tokens (from the server's key file).
        model: registered model name; `version` picks a version (default version when None).
        retries: most extra attempts for inference on connection errors, 502/503/504 and "Worker died.".
        backoff: first wait between attempts in seconds; doubles each time (jittered), up to `max_backoff`.
        give_up_after: seconds from the first attempt after which no new attempt starts.
        worker_died_retries: most extra attempts after "Worker died." answers (the request may be the cause).
    """

    inference_url: str = "http://127.0.0.1:8080"
    management_url: str = "http://127.0.0.1:8081"
    tokens: TokenStore | None = None
    model: str = "captioner"
    version: str | None = None
    retries: int = 12
    backoff: float = 0.25
    max_backoff: float = 5.0
    give_up_after: float = 60.0
    worker_died_retries: int = 2
    timeout: float = 60.0

    def __post_init__(self) -> None:
        self.session = requests.Session()
        if self.tokens is None:
            self.tokens = TokenStore(None)
        self.retried = 0  # attempts sent again, over this client's life
        self.scales_retried = 0  # scale requests sent again after TorchServe's scale-down race (see `scale`)
        self._retried_lock = threading.Lock()
        self._rng = random.Random()
        self._told_unreachable = False  # the first unreachable attempt is logged, once per client

    # --- inference --------------------------------------------------------------------------

    def _predictions_url(self) -> str:
        url = f"{self.inference_url}/predictions/{self.model}"
        return f"{url}/{self.version}" if self.version else url

    def deliver(self, extra_headers: dict[str, str] | None = None, **kwargs) -> Delivery:
        """POST one predictions request (`data=`, `json=` or `files=` as for `requests`), retrying as above.

        Never raises for the server's failures: the `Delivery` holds the last answer
        (or the last connection error), every attempt's status and the waits.
        """
        delivery = Delivery()
        started = time.monotonic()
        worker_deaths = 0
        while True:
            retryable = False
            try:
                headers = {**self.tokens.header("inference"), **(extra_headers or {})}
                response = self.session.post(self._predictions_url(), headers=headers, timeout=self.timeout, **kwargs)
                delivery.response, delivery.error = response, None
                delivery.statuses.append(response.status_code)
                retryable = should_retry(response)
                worker_deaths += is_worker_died(response)
            except (requests.ConnectionError, requests.Timeout) as error:
                delivery.response, delivery.error = None, error
                delivery.statuses.append(type(error).__name__)
                retryable = True
                self._tell_unreachable(error)
            delivery.seconds = time.monotonic() - started
            if not retryable:
                return delivery
            reason = self._stop_reason(delivery, worker_deaths)
            if reason is None:
                wait = self._next_wait(delivery)
                if delivery.seconds + wait > self.give_up_after:
                    reason = f"the next wait of {wait:.1f} s would pass the {self.give_up_after:.0f} s limit"
            if reason is not None:
                delivery.gave_up, delivery.reason = True, reason
                return delivery
            delivery.waits.append(wait)
            with self._retried_lock:
                self.retried += 1
            if delivery.response is not None:
                delivery.response.close()  # a streamed answer holds its connection until closed
            time.sleep(wait)

    def _tell_unreachable(self, error: Exception) -> None:
        """Say once that the server is not answering, so a waiting caller knows what the retries wait for."""
        with self._retried_lock:
            if self._told_unreachable or self.retries == 0:
                return
            self._told_unreachable = True
        logger.warning("%s does not answer (%s); retrying for up to %.0f s", self.inference_url,
                       type(error).__name__, self.give_up_after)

    def _stop_reason(self, delivery: Delivery, worker_deaths: int) -> str | None:
        if delivery.retried >= self.retries:
            return f"at most {self.retries} retries"
        if worker_deaths > self.worker_died_retries:
            return f"'{WORKER_DIED}' {worker_deaths} times: the request itself may stop the workers"
        return None

    def _next_wait(self, delivery: Delivery) -> float:
        """The server's `Retry-After` when it sent one, else exponential backoff with jitter."""
        told = retry_after_s(delivery.response) if delivery.response is not None else None
        if told is not None:
            return told
        with self._retried_lock:  # random.Random is not safe to share between threads unlocked
            return backoff_s(delivery.retried, self.backoff, self.max_backoff, self._rng)

    def post(self, extra_headers: dict[str, str] | None = None, **kwargs) -> requests.Response:
        """`deliver`, returning the last response whatever its status.

        Raises `Unreachable` (a `requests.ConnectionError`) or the last timeout when no
        attempt reached the server.
        """
        delivery = self.deliver(extra_headers, **kwargs)
        if delivery.response is None:
            raise self._unreachable(delivery)
        return delivery.response

    def _unreachable(self, delivery: Delivery) -> Exception:
        if isinstance(delivery.error, requests.Timeout):
            return delivery.error
        return Unreachable(self._predictions_url(), delivery)

    def result(self, delivery: Delivery) -> dict[str, Any]:
        """The caption a delivery brought, or the error explaining why there is none."""
        self._raise_for_failure(delivery)
        return delivery.response.json()

    def _raise_for_failure(self, delivery: Delivery) -> None:
        if delivery.response is None:
            raise self._unreachable(delivery)
        if delivery.gave_up:
            raise RetriesExhausted(delivery)
        if delivery.response.status_code != 200:
            raise ServiceError(delivery.response.status_code, _parse(delivery.response))

    def _send(self, image: bytes, options: dict[str, Any], **kwargs: Any) -> Delivery:
        """Deliver one file: its raw bytes when there are no options, else a multipart form (module docstring)."""
        form = {name: option_text(value) for name, value in options.items() if value is not None}
        if not form:
            return self.deliver(data=image, extra_headers={"Content-Type": "application/octet-stream"}, **kwargs)
        return self.deliver(files={"data": ("file", image, "application/octet-stream")}, data=form, **kwargs)

    def caption(self, image: bytes, *, field: str = "image", **options: Any) -> dict[str, Any]:
        """Caption one image (or a video model's clip). Options (README "Calling the service"): max_length,
        beam_size, num_captions (n_best), beam_groups, diversity, do_sample, temperature, top_k, top_p, seed,
        language, attention.

        `field` names the JSON field older versions of this client put the file under; the file now
        always travels as the raw body or the form's `data` field, which image and video models both
        read, so it is accepted and needs no value.
        """
        return self.result(self._send(image, options))

    def caption_stream(self, image: bytes, *, field: str = "image", **options: Any) -> Iterator[dict[str, Any]]:
        """Yield `{"index", "token"}` chunks as words are decoded, then the full result (`field` as in `caption`).

        Sent and retried as `caption` is, so a request refused before its stream starts
        (a 503 while the model has no worker) is sent again; once words flow, it is not.
        """
        delivery = self._send(image, {**options, "stream": True}, stream=True)
        self._raise_for_failure(delivery)
        with delivery.response as response:
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)

    # --- management ---------------------------------------------------------------------------

    def _manage(self, method: str, path: str, **params: Any) -> Any:
        response = self.session.request(
            method, f"{self.management_url}{path}", params={k: v for k, v in params.items() if v is not None},
            headers=self.tokens.header("management"), timeout=max(self.timeout, 180),
        )
        body = _parse(response)
        if response.status_code >= 400:
            raise ServiceError(response.status_code, body)
        return body

    def register(self, archive: str, *, model_name: str | None = None, initial_workers: int | None = None,
                 batch_size: int | None = None, max_batch_delay: int | None = None) -> Any:
        """Register an archive from the model store (e.g. `captioner.mar`), waiting until workers are up."""
        return self._manage(
            "POST", "/models", url=archive, model_name=model_name, initial_workers=initial_workers,
            batch_size=batch_size, max_batch_delay=max_batch_delay, synchronous="true",
        )

    def scale(self, min_workers: int, max_workers: int | None = None, version: str | None = None, *,
              attempts: int = 3) -> Any:
        """Set the model's worker bounds and wait until TorchServe has started or stopped the workers.

        Under load, TorchServe 0.12 can answer a synchronous scale-down with a bare 500
        (`{"code": 500, "type": "ConcurrentModificationException"}`): while it stops a
        worker, the management thread hands that worker's queued requests back to the
        model and walks a map the worker's own thread is still changing (the same loop
        can also meet a request that is already gone: a NullPointerException). The
        workers stopped before that one are gone, the others still run, and the new
        bounds are already set. Setting the same bounds again is safe and stops the
        rest, so such an answer is sent again, `attempts` times in all, with the
        client's backoff in between. Any other error, TorchServe's own 500 for workers
        that failed to start included, is raised at once. Counts TorchServe would take
        and break on (`worker_bounds`) raise ValueError before anything is sent.
        """
        minimum, maximum = worker_bounds(min_workers, max_workers)
        path = f"/models/{self.model}" + (f"/{version}" if version else "")
        bounds = {"min_worker": minimum, "max_worker": maximum, "synchronous": "true"}

        def before_sending_again(retry: int) -> float:
            with self._retried_lock:
                self.scales_retried += 1
                return backoff_s(retry, self.backoff, self.max_backoff, self._rng)

        return call_again(lambda: self._manage("PUT", path, **bounds), _is_scale_race, attempts, before_sending_again)

    def describe(self, version: str | None = None) -> list[dict[str, Any]]:
        return self._manage("GET", f"/models/{self.model}" + (f"/{version}" if version else ""))

    def list_models(self) -> Any:
        return self._manage("GET", "/models", limit=100)

    def set_default(self, version: str) -> Any:
        return self._manage("PUT", f"/models/{self.model}/{version}/set-default")

    def unregister(self, version: str | None = None) -> Any:
        return self._manage("DELETE", f"/models/{self.model}" + (f"/{version}" if version else ""))

    def worker_pids(self, version: str | None = None) -> list[int]:
        return sorted(w["pid"] for d in self.describe(version) for w in d["workers"] if w.get("pid"))
