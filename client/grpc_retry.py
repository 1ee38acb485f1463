"""gRPC inference sent again when TorchServe could not run it now, as the REST client does on a 503.

Over gRPC, TorchServe 0.12 answers what REST answers 503 (the job queue is full, or
the model has no worker at the moment) with INTERNAL and the words in `NO_WORKER`,
and a request whose worker died with INTERNAL "Worker died."; a server that is not
listening (yet) is UNAVAILABLE. Those pass: the same request later succeeds. Every
other status (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, ...) is final. Waits and
bounds are the REST client's (`client/retry.py`): jittered exponential backoff, at
most `retries` retries and no new attempt after `give_up_after` seconds.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from client.rest import CaptionClient
from client.retry import WORKER_DIED, backoff_s

T = TypeVar("T")
NO_WORKER = "has no worker to serve inference request"  # TorchServe's words for REST's 503

logger = logging.getLogger(__name__)


def is_transient(error: Exception) -> bool:
    """Whether a failed gRPC inference call is worth sending again."""
    if not isinstance(error, grpc.RpcError):
        return False
    code, details = error.code(), error.details() or ""
    return code == grpc.StatusCode.UNAVAILABLE or (
        code == grpc.StatusCode.INTERNAL and (NO_WORKER in details or WORKER_DIED in details)
    )


@dataclass
class GrpcRetries:
    """How often and how long a gRPC client sends an inference call again (`CaptionClient`'s defaults)."""

    retries: int = CaptionClient.retries
    backoff: float = CaptionClient.backoff
    max_backoff: float = CaptionClient.max_backoff
    give_up_after: float = CaptionClient.give_up_after
    worker_died_retries: int = CaptionClient.worker_died_retries
    retried: int = 0  # calls sent again, over this object's life
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def call(self, send: Callable[[], T]) -> T:
        """`send()`, again after a wait while it fails for a reason that passes; then its last error."""
        started, worker_deaths = time.monotonic(), 0
        for retry in range(self.retries + 1):
            try:
                return send()
            except grpc.RpcError as error:
                worker_deaths += WORKER_DIED in (error.details() or "")
                if not is_transient(error) or retry == self.retries or worker_deaths > self.worker_died_retries:
                    raise
                with self._lock:
                    wait = backoff_s(retry, self.backoff, self.max_backoff, self._rng)
                    self.retried += 1
                if time.monotonic() - started + wait > self.give_up_after:
                    raise
                if retry == 0:
                    first_sentence = (error.details() or "").split(". ")[0][:160]
                    logger.warning("gRPC %s: %s; retrying for up to %.0f s", error.code().name, first_sentence,
                                   self.give_up_after)
                time.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")
