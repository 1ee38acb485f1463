"""gRPC client for TorchServe's inference (7070) and management (7071) services.

gRPC carries no per-request HTTP status from the handler, so a refused image
comes back as a normal reply whose JSON holds `error` and `status`; this client
turns that into `ServiceError`, like the REST client does.

A request larger than TorchServe's `max_request_size` gets no such reply: the
server resets the stream, and the call fails CANCELLED "Stream removed
(RST_STREAM ...)", which names no size; `transport_error_message` says when the
file's size is the likely cause.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Iterator

import grpc

from client.auth import TokenStore
from client.grpc_retry import GrpcRetries
from client.grpc_stubs import import_stubs
from client.rest import ServiceError, option_text, worker_bounds
from client.retry import call_again

# config.properties' max_request_size as this project ships it (TorchServe's gRPC message limit too), and
# gRPC's own default message limit: a file below that is too small for size to explain a reset stream.
SHIPPED_MAX_REQUEST_SIZE = 10 * 1024 * 1024
GRPC_DEFAULT_MESSAGE_SIZE = 4 * 1024 * 1024


def _is_uncaught(error: Exception) -> bool:
    """An exception TorchServe's gRPC handler did not catch (grpc-java answers those UNKNOWN)."""
    return isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNKNOWN


def _option_bytes(value: Any) -> bytes:
    return option_text(value).encode()


def transport_error_message(error: grpc.RpcError, sent_bytes: int) -> str:
    """`gRPC CODE: details`, and for a reset or refused call carrying a large file, that size is the likely cause."""
    code = error.code()
    message = f"gRPC {code.name}: {error.details()}"
    reset = code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    if reset and sent_bytes > GRPC_DEFAULT_MESSAGE_SIZE:
        message += (f"; the file is {sent_bytes / 2**20:.1f} MiB, and TorchServe resets a gRPC request over its "
                    f"max_request_size (config.properties; {SHIPPED_MAX_REQUEST_SIZE // 2**20} MiB as shipped): "
                    "that is the likely cause; send a smaller file, or raise max_request_size")
    return message


def is_unreachable(error: Exception) -> bool:
    """The server cannot be reached at all (UNAVAILABLE once the retries are spent): no other file will get through."""
    return isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAVAILABLE


class GrpcCaptionClient:
    """Captions over gRPC `Predictions`/`StreamPredictions`; management over its own service.

    `caption` is sent again while the server has no free worker (`client/grpc_retry.py`);
    `predict` sends once, for callers that check every reply themselves.
    """

    def __init__(
        self,
        inference_target: str = "127.0.0.1:7070",
        management_target: str = "127.0.0.1:7071",
        tokens: TokenStore | None = None,
        model: str = "captioner",
        version: str | None = None,
        timeout: float = 60.0,
        retries: GrpcRetries | None = None,
    ) -> None:
        self.pb, pb_grpc, self.mpb, mpb_grpc = import_stubs()
        self.retries = retries or GrpcRetries()
        self.tokens = tokens or TokenStore(None)
        self.model, self.version, self.timeout = model, version, timeout
        self._channels = [grpc.insecure_channel(inference_target), grpc.insecure_channel(management_target)]
        self.inference = pb_grpc.InferenceAPIsServiceStub(self._channels[0])
        self.management = mpb_grpc.ManagementAPIsServiceStub(self._channels[1])

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> "GrpcCaptionClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _metadata(self, api: str) -> list[tuple[str, str]]:
        header = self.tokens.header(api)
        return [("authorization", header["Authorization"])] if header else []

    def _request(self, image: bytes, options: dict[str, Any]):
        return self._predictions_request({"data": image, **{k: _option_bytes(v) for k, v in options.items()}})

    def _predictions_request(self, inputs: dict[str, bytes]):
        return self.pb.PredictionsRequest(model_name=self.model, model_version=self.version or "", input=inputs)

    def predict(self, inputs: dict[str, bytes]) -> bytes:
        """Send a `PredictionsRequest` with exactly these input fields; the reply's bytes, errors included.

        For callers that check the reply themselves (the bad-input corpus); `caption` is the usual call.
        """
        reply = self.inference.Predictions(
            self._predictions_request(inputs), metadata=self._metadata("inference"), timeout=self.timeout
        )
        return reply.prediction

    @staticmethod
    def _decode(payload: bytes) -> Any:
        body = json.loads(payload) if payload.strip() else None
        if isinstance(body, dict) and "error" in body:
            raise ServiceError(int(body.get("status", 400)), body)
        return body

    def ping(self) -> str:
        from google.protobuf import empty_pb2

        return self.inference.Ping(empty_pb2.Empty(), timeout=self.timeout).health

    def caption(self, image: bytes, *, field: str = "image", **options: Any) -> dict[str, Any]:
        """Caption one image (or clip); the options are `CaptionClient.caption`'s, sent as text inputs.

        `field` is accepted as `CaptionClient` takes it: over gRPC the file's bytes go
        under `data` for images and clips alike.
        """
        reply = self.retries.call(lambda: self.inference.Predictions(
            self._request(image, options), metadata=self._metadata("inference"), timeout=self.timeout
        ))
        return self._decode(reply.prediction)

    def caption_stream(self, image: bytes, *, field: str = "image", **options: Any) -> Iterator[dict[str, Any]]:
        """Yield word chunks as they are decoded, then the full result (`field` as in `caption`).

        TorchServe refuses a stream it cannot serve now (no worker, a full queue) in its
        first reply, so the call is made again as `caption` is until a first reply
        arrives; after that, words have been given out and nothing is sent again.
        """

        def first_reply():
            replies = self.inference.StreamPredictions(
                self._request(image, {**options, "stream": True}), metadata=self._metadata("inference"),
                timeout=self.timeout,
            )
            return replies, next(replies, None)

        replies, first = self.retries.call(first_reply)
        if first is None:
            return
        for reply in itertools.chain([first], replies):
            for line in reply.prediction.splitlines():
                chunk = self._decode(line)
                if chunk is not None:
                    yield chunk

    # --- management ---------------------------------------------------------------------------

    def _manage(self, method: str, request) -> Any:
        reply = getattr(self.management, method)(request, metadata=self._metadata("management"), timeout=180)
        try:
            return json.loads(reply.msg)
        except ValueError:
            return reply.msg

    def register(self, archive: str, initial_workers: int = 1) -> Any:
        return self._manage(
            "RegisterModel",
            self.mpb.RegisterModelRequest(url=archive, initial_workers=initial_workers, synchronous=True),
        )

    def scale(self, min_workers: int, max_workers: int | None = None, *, attempts: int = 3) -> Any:
        """Set the worker bounds, sending them again when the server failed unexpectedly.

        The race behind the REST client's retry (`CaptionClient.scale`) escapes TorchServe's
        gRPC handler uncaught, so it arrives as UNKNOWN; the same bounds are sent again,
        `attempts` times in all. TorchServe's own failures (INTERNAL for workers that did
        not start, NOT_FOUND, INVALID_ARGUMENT) are raised at once.
        """
        minimum, maximum = worker_bounds(min_workers, max_workers)  # ValueError before sending, as over REST
        request = self.mpb.ScaleWorkerRequest(
            model_name=self.model, model_version=self.version or "", min_worker=minimum,
            max_worker=maximum, synchronous=True,
        )
        return call_again(lambda: self._manage("ScaleWorker", request), _is_uncaught, attempts,
                          lambda retry: 0.25 * 2**retry)

    def describe(self) -> Any:
        return self._manage(
            "DescribeModel", self.mpb.DescribeModelRequest(model_name=self.model, model_version=self.version or "")
        )

    def unregister(self) -> Any:
        return self._manage(
            "UnregisterModel",
            self.mpb.UnregisterModelRequest(model_name=self.model, model_version=self.version or ""),
        )
