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
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import requests

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


class ServiceError(RuntimeError):
    """The service answered with an error; `status` is the HTTP code, `body` the parsed reply."""

    def __init__(self, status: int, body: Any) -> None:
        # TorchServe leaves "message" out when the exception behind a 500 has none; its "type" then says what broke.
        message = (body.get("error") or body.get("message") or body.get("type")) if isinstance(body, dict) else body
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
    """No attempt reached the server before the client's retry bounds were reached."""

    def __init__(self, url: str, delivery: Delivery) -> None:
        super().__init__(f"cannot reach {url}: {delivery.error}; {delivery.give_up_message()}")
        self.delivery = delivery


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
        if delivery.response is None:
            raise self._unreachable(delivery)
        if delivery.gave_up:
            raise RetriesExhausted(delivery)
        if delivery.response.status_code != 200:
            raise ServiceError(delivery.response.status_code, _parse(delivery.response))
        return delivery.response.json()

    def caption(self, image: bytes, *, field: str = "image", **options: Any) -> dict[str, Any]:
        """Caption one image (or a clip, with `field="video"`, for a video model). Options (README
        "Calling the service"): max_length, beam_size, num_captions (n_best), beam_groups, diversity,
        do_sample, temperature, top_k, top_p, seed.

        Without options the raw bytes are posted; with options, a JSON body holding them under `field`.
        """
        if options:
            body = {field: base64.b64encode(image).decode("ascii"), **options}
            delivery = self.deliver(json=body)
        else:
            delivery = self.deliver(data=image, extra_headers={"Content-Type": "application/octet-stream"})
        return self.result(delivery)

    def caption_stream(self, image: bytes, *, field: str = "image", **options: Any) -> Iterator[dict[str, Any]]:
        """Yield `{"index", "token"}` chunks as words are decoded, then the full result."""
        body = {field: base64.b64encode(image).decode("ascii"), "stream": True, **options}
        with self.session.post(
            self._predictions_url(), json=body, headers=self.tokens.header("inference"), stream=True,
            timeout=self.timeout,
        ) as response:
            if response.status_code != 200:
                raise ServiceError(response.status_code, _parse(response))
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
        that failed to start included, is raised at once.
        """
        path = f"/models/{self.model}" + (f"/{version}" if version else "")
        bounds = {"min_worker": min_workers, "max_worker": max_workers or min_workers, "synchronous": "true"}

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
