"""REST client: caption images (plain or streamed) and call the management API.

Inference is idempotent, so failed attempts caused by the server are retried
with exponential backoff: connection refused or reset, 502/503/504, and the
requests a worker had in hand when it died (TorchServe answers those with the
message "Worker died.", status 507 after a SIGKILL; it restarts the worker and
queues new requests until it is back). The handler's own 4xx answers are
never retried. A request that itself kills every worker it reaches is sent at
most `retries + 1` times.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import requests

from client.auth import TokenStore


def _parse(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


RETRY_STATUSES = {502, 503, 504, 507}
WORKER_DIED = "Worker died."  # TorchServe's message for the requests of a worker that exited


def should_retry(response: requests.Response) -> bool:
    """Whether a failed inference attempt is the server's fault and worth sending again."""
    if response.status_code in RETRY_STATUSES:
        return True
    if response.status_code < 400:
        return False
    body = _parse(response)
    return isinstance(body, dict) and body.get("message") == WORKER_DIED


class ServiceError(RuntimeError):
    """The service answered with an error; `status` is the HTTP code, `body` the parsed reply."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("error") or body.get("message") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


@dataclass
class CaptionClient:
    """Talks to one TorchServe instance.

    Args:
        inference_url: e.g. http://127.0.0.1:8080
        management_url: e.g. http://127.0.0.1:8081
        tokens: bearer tokens (from the server's key file).
        model: registered model name; `version` picks a version (default version when None).
        retries: extra attempts for inference on connection errors and 502/503/504.
        backoff: first wait between attempts in seconds; doubles each time.
    """

    inference_url: str = "http://127.0.0.1:8080"
    management_url: str = "http://127.0.0.1:8081"
    tokens: TokenStore | None = None
    model: str = "captioner"
    version: str | None = None
    retries: int = 4
    backoff: float = 0.25
    timeout: float = 60.0

    def __post_init__(self) -> None:
        self.session = requests.Session()
        if self.tokens is None:
            self.tokens = TokenStore(None)
        self.retried = 0  # attempts sent again, over this client's life (read by ops.soak)
        self._retried_lock = threading.Lock()

    # --- inference --------------------------------------------------------------------------

    def _predictions_url(self) -> str:
        url = f"{self.inference_url}/predictions/{self.model}"
        return f"{url}/{self.version}" if self.version else url

    def post(self, extra_headers: dict[str, str] | None = None, **kwargs) -> requests.Response:
        """POST one predictions request (`data=`, `json=` or `files=` as for `requests`), retrying as above.

        Returns the last response, whatever its status; raises only when the
        server could not be reached on any attempt.
        """
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                headers = {**self.tokens.header("inference"), **(extra_headers or {})}
                response = self.session.post(self._predictions_url(), headers=headers, timeout=self.timeout, **kwargs)
                if attempt == self.retries or not should_retry(response):
                    return response
            except (requests.ConnectionError, requests.Timeout):
                if attempt == self.retries:
                    raise
            with self._retried_lock:
                self.retried += 1
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def caption(self, image: bytes, **options: Any) -> dict[str, Any]:
        """Caption one image. Options: max_length, beam_size, n_best.

        Without options the raw bytes are posted; with options, a JSON body.
        """
        if options:
            body = {"image": base64.b64encode(image).decode("ascii"), **options}
            response = self.post(json=body)
        else:
            response = self.post(data=image, extra_headers={"Content-Type": "application/octet-stream"})
        if response.status_code != 200:
            raise ServiceError(response.status_code, _parse(response))
        return response.json()

    def caption_stream(self, image: bytes, **options: Any) -> Iterator[dict[str, Any]]:
        """Yield `{"index", "token"}` chunks as words are decoded, then the full result."""
        body = {"image": base64.b64encode(image).decode("ascii"), "stream": True, **options}
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

    def scale(self, min_workers: int, max_workers: int | None = None, version: str | None = None) -> Any:
        path = f"/models/{self.model}" + (f"/{version}" if version else "")
        return self._manage(
            "PUT", path, min_worker=min_workers, max_worker=max_workers or min_workers, synchronous="true"
        )

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
