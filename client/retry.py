"""When to send an inference request again, how long to wait first, and when to give up.

An overloaded TorchServe refuses what does not fit in its job queue at once
(503 with a JSON body; it sends no Retry-After), and a restarting worker fails the
requests it held. Both pass: sending again later succeeds. Waits grow exponentially
with jitter, so that clients refused together do not all come back together; a
`Retry-After` from the server (or a proxy in front of it) is waited out as given.
Attempts are bounded in number and in total time, so a client never retries forever.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, TypeVar

import requests

T = TypeVar("T")

RETRY_STATUSES = {502, 503, 504, 507}
WORKER_DIED = "Worker died."  # TorchServe's message for the requests of a worker that exited


def parse_body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def is_worker_died(response: requests.Response) -> bool:
    body = parse_body(response)
    return isinstance(body, dict) and body.get("message") == WORKER_DIED


def should_retry(response: requests.Response) -> bool:
    """Whether a failed inference attempt is the server's fault and worth sending again."""
    if response.status_code in RETRY_STATUSES:
        return True
    if response.status_code < 400:
        return False
    return is_worker_died(response)


def retry_after_s(response: requests.Response) -> float | None:
    """The `Retry-After` header in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def backoff_s(retry: int, first: float, most: float, rng: random.Random) -> float:
    """Wait before retry number `retry` (0-based): `first * 2**retry` capped at `most`, the upper half jittered."""
    delay = min(most, first * 2**retry)
    return delay / 2 + rng.uniform(0, delay / 2)


def call_again(call: Callable[[], T], transient: Callable[[Exception], bool], attempts: int,
               wait_s: Callable[[int], float]) -> T:
    """`call()`, made again after `wait_s(retry)` seconds while it raises what `transient` accepts.

    For management calls that are safe to repeat (setting worker bounds): at most
    `attempts` calls; the last one's exception, or any other, is raised.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    for retry in range(attempts - 1):
        try:
            return call()
        except Exception as error:
            if not transient(error):
                raise
        time.sleep(wait_s(retry))
    return call()


@dataclass
class Delivery:
    """Every attempt of one request: what came back last, and what it took."""

    response: requests.Response | None = None  # the last answer; None when the server was never reached
    error: Exception | None = None  # the last connection error or timeout
    statuses: list[int | str] = field(default_factory=list)  # each attempt's HTTP status or exception name
    waits: list[float] = field(default_factory=list)  # seconds waited before each retry
    seconds: float = 0.0
    gave_up: bool = False  # the last attempt failed for a reason worth retrying, and the bounds were reached
    reason: str = ""  # why the retries stopped, when they gave up

    @property
    def attempts(self) -> int:
        return len(self.statuses)

    @property
    def retried(self) -> int:
        return max(0, self.attempts - 1)

    @property
    def refused(self) -> int:
        """Attempts the server refused with 503 (a full job queue, or no worker)."""
        return sum(1 for status in self.statuses if status == 503)

    def give_up_message(self) -> str:
        return f"gave up after {self.attempts} attempts in {self.seconds:.1f} s ({self.reason})"
