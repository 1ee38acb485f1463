"""gRPC client for TorchServe's inference (7070) and management (7071) services.

gRPC carries no per-request HTTP status from the handler, so a refused image
comes back as a normal reply whose JSON holds `error` and `status`; this client
turns that into `ServiceError`, like the REST client does.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import grpc

from client.auth import TokenStore
from client.grpc_retry import GrpcRetries
from client.grpc_stubs import import_stubs
from client.rest import ServiceError
from client.retry import call_again


def _is_uncaught(error: Exception) -> bool:
    """An exception TorchServe's gRPC handler did not catch (grpc-java answers those UNKNOWN)."""
    return isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNKNOWN


def _option_bytes(value: Any) -> bytes:
    if isinstance(value, bool):
        return b"true" if value else b"false"
    return str(value).encode()


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
        """Yield word chunks as they are decoded, then the full result (`field` as in `caption`)."""
        replies = self.inference.StreamPredictions(
            self._request(image, {**options, "stream": True}), metadata=self._metadata("inference"),
            timeout=self.timeout,
        )
        for reply in replies:
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
        request = self.mpb.ScaleWorkerRequest(
            model_name=self.model, model_version=self.version or "", min_worker=min_workers,
            max_worker=max_workers or min_workers, synchronous=True,
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
