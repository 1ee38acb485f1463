"""A client of the Open Inference Protocol's gRPC service (KServe v2 `ModelInfer`), as TorchServe 0.12 serves it.

TorchServe serves it on the gRPC inference port beside its own service when
`ts_open_inference_protocol=true` (config.properties). Its frontend, read in its
source and seen in the tests, does a few things a plain v2 client would not expect:

- it forwards the input tensors and drops the request's `parameters` and `outputs`,
  so options travel as inputs here, each with a datatype the handler accepts;
- it base64-encodes every BYTES input for the handler (the image, and `language`,
  which the handler reads back from base64);
- it writes each BYTES output JSON-quoted (`"\\"a\\""`), so this client reads them as JSON;
- it drops the answer's `parameters` (the handler sends `language` and `seed` as outputs too);
- it ignores the status the handler sets: a refused request comes back as an answer
  whose outputs are `error` and `status` (the HTTP status REST would give), which this
  client raises as `ServiceError`.

    with OpenInferenceClient("127.0.0.1:7070", tokens) as oip:
        outputs = oip.infer(open("img.jpg", "rb").read(), beam_size=3, language="fr")
        print(outputs["caption"][0])
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import grpc

from client.auth import TokenStore
from client.grpc_retry import GrpcRetries
from client.grpc_stubs import import_open_inference_stubs
from client.rest import CaptionClient, ServiceError

# How each option travels as a v2 input tensor: its datatype and the InferTensorContents field.
_FLOAT_OPTIONS = {"temperature", "top_p", "diversity"}
_BOOL_OPTIONS = {"do_sample", "attention"}
_TEXT_OPTIONS = {"language"}
_CONTENTS = {"BYTES": "bytes_contents", "BOOL": "bool_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents"}


def option_tensor(name: str, value: Any) -> tuple[str, str, list[Any]]:
    """(name, datatype, contents) of one option: BOOL, FP64, BYTES (text) or INT64."""
    if name in _BOOL_OPTIONS:
        return name, "BOOL", [bool(value)]
    if name in _FLOAT_OPTIONS:
        return name, "FP64", [float(value)]
    if name in _TEXT_OPTIONS:
        return name, "BYTES", [str(value).encode()]
    return name, "INT64", [int(value)]


# The handler writes every float of a reply with at most 5 decimals (scores 5, domain score 4,
# attention 3); gRPC carries them as FP32, so 0.9305 arrives as 0.93049997. Rounding back to 5
# decimals gives the reply's own numbers (exactly, for values below 128 in magnitude).
_REPLY_DECIMALS = 5


def _output_values(tensor) -> list[Any]:
    """An output tensor's elements; BYTES ones unquoted (TorchServe sends each as a JSON string), FP32 as sent."""
    values = list(getattr(tensor.contents, _CONTENTS[tensor.datatype]))
    if tensor.datatype == "BYTES":
        return [json.loads(value.decode("utf-8")) for value in values]
    if tensor.datatype == "FP32":
        return [round(value, _REPLY_DECIMALS) for value in values]
    return values


class OpenInferenceClient:
    """`ModelInfer`, `ModelReady` and `ServerLive` over gRPC, with the inference token."""

    def __init__(self, target: str = "127.0.0.1:7070", tokens: TokenStore | None = None,
                 model: str = "captioner", version: str | None = None, timeout: float = 60.0,
                 retries: GrpcRetries | None = None) -> None:
        self.pb, pb_grpc = import_open_inference_stubs()
        self.retries = retries or GrpcRetries()  # `infer` and `caption` wait out a busy server; `infer_raw` does not
        self.tokens = tokens or TokenStore(None)
        self.model, self.version, self.timeout = model, version, timeout
        self._channel = grpc.insecure_channel(target)
        self.service = pb_grpc.GRPCInferenceServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "OpenInferenceClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _metadata(self) -> list[tuple[str, str]]:
        header = self.tokens.header("inference")
        return [("authorization", header["Authorization"])] if header else []

    def _tensor(self, name: str, datatype: str, contents: list[Any]):
        tensor = self.pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=[len(contents)])
        getattr(tensor.contents, _CONTENTS[datatype]).extend(contents)
        return tensor

    def request(self, image: bytes, request_id: str = "", *, field: str = "image", **options: Any):
        """The `ModelInferRequest` for one image (or clip, `field="video"`) and these options (`CaptionClient.caption`'s)."""
        inputs = [self._tensor(field, "BYTES", [image])]
        inputs += [self._tensor(*option_tensor(name, value)) for name, value in options.items()]
        return self.pb.ModelInferRequest(model_name=self.model, model_version=self.version or "", id=request_id,
                                         inputs=inputs)

    def infer_raw(self, request):
        """Send a `ModelInferRequest` as it is; the `ModelInferResponse`, refusals included."""
        return self.service.ModelInfer(request, metadata=self._metadata(), timeout=self.timeout)

    def _outputs(self, image: bytes, request_id: str, field: str, options: dict[str, Any]):
        """(the answer, its output values by name with `attention` folded), or `ServiceError` for a refusal."""
        request = self.request(image, request_id, field=field, **options)
        reply = self.retries.call(lambda: self.infer_raw(request))
        outputs: dict[str, Any] = {tensor.name: _output_values(tensor) for tensor in reply.outputs}
        if "error" in outputs:
            status = outputs.get("status", [400])[0]
            raise ServiceError(status, {"error": outputs["error"][0], "status": status, "id": reply.id})
        attention = next((tensor for tensor in reply.outputs if tensor.name == "attention"), None)
        if attention is not None:
            outputs["attention"] = fold(outputs["attention"], list(attention.shape))
        return reply, outputs

    def infer(self, image: bytes, request_id: str = "", *, field: str = "image", **options: Any) -> dict[str, Any]:
        """Caption one image (a video model's clip: `field="video"`): output values by name, plus `id`.

        `attention` comes folded to T x G x G. A refused request raises `ServiceError`
        with the status REST would give (the answer's `status` output).
        """
        reply, outputs = self._outputs(image, request_id, field, options)
        return {**outputs, "id": reply.id, "model_name": reply.model_name, "model_version": reply.model_version}

    def caption(self, image: bytes, *, field: str = "image", **options: Any) -> dict[str, Any]:
        """`infer`, as the usual JSON reply (`as_reply`), so callers of `CaptionClient.caption` can use either."""
        reply, outputs = self._outputs(image, "", field, options)
        return as_reply(outputs, reply.model_name, reply.model_version, reply.id)

    def model_ready(self) -> bool:
        reply = self.service.ModelReady(self.pb.ModelReadyRequest(name=self.model, version=self.version or ""),
                                        metadata=self._metadata(), timeout=self.timeout)
        return reply.ready

    def server_live(self) -> bool:
        return self.service.ServerLive(self.pb.ServerLiveRequest(), metadata=self._metadata(),
                                       timeout=self.timeout).live


def fold(data: list[Any], shape: list[int]) -> Any:
    """A flat row-major tensor (as v2 sends it) as nested lists of `shape`."""
    if math.prod(shape) != len(data):
        raise ValueError(f"{len(data)} values do not fill shape {shape}")
    for size in reversed(shape[1:]):
        data = [data[i:i + size] for i in range(0, len(data), size)]
    return data


class OpenInferenceRestClient(CaptionClient):
    """KServe v2 over REST: `POST /v2/models/<model>/infer`, with `CaptionClient`'s token and retries.

    Options go as the request's `parameters` (JSON-typed); the answer comes back as the
    usual JSON reply (`as_reply`), or as sent with `infer`. TorchServe serves no versioned
    v2 path, so `version` is refused.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.version:
            raise ValueError("TorchServe serves no versioned v2 path: call the default version, or use /predictions")

    def _predictions_url(self) -> str:
        return f"{self.inference_url}/v2/models/{self.model}/infer"

    def infer(self, image: bytes, request_id: str | None = None, *, field: str = "image",
              **options: Any) -> dict[str, Any]:
        """The v2 answer as sent; a refusal raises `ServiceError` with its status."""
        body: dict[str, Any] = {"inputs": [{"name": field, "datatype": "BYTES", "shape": [1],
                                            "data": [base64.b64encode(image).decode("ascii")]}]}
        if options:
            body["parameters"] = options
        if request_id:
            body["id"] = request_id
        return self.result(self.deliver(json=body))

    def caption(self, image: bytes, *, field: str = "image", **options: Any) -> dict[str, Any]:
        answer = self.infer(image, field=field, **options)
        tensors = {tensor["name"]: tensor for tensor in answer["outputs"]}
        values = {name: tensor["data"] for name, tensor in tensors.items()}
        if "attention" in tensors:
            values["attention"] = fold(values["attention"], tensors["attention"]["shape"])
        return as_reply(values, answer["model_name"], answer["model_version"], answer["id"],
                        answer.get("parameters", {}))

    def caption_stream(self, image: bytes, *, field: str = "image", **options: Any):
        raise ValueError("there is no streaming over v2: stream over /predictions or gRPC StreamPredictions")


def as_reply(outputs: dict[str, list[Any]], model: str, version: str, request_id: str,
             parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """A v2 answer's outputs (values by name, `attention` folded) as the JSON reply /predictions gives.

    The settings come from the answer's `parameters` where it has them (REST); over
    gRPC ModelInfer they are dropped, and only `language` and `seed` come back, as outputs.
    """
    def first(name: str) -> Any:
        values = outputs.get(name) or []
        return values[0] if values else None

    reply: dict[str, Any] = {
        "caption": first("caption"), "tokens": outputs.get("tokens", []), "scores": outputs.get("scores", []),
        "score": first("score"), "ended": first("ended"), **(parameters or {}), "language": first("language"),
        "domain_score": first("domain_score"), "in_domain": first("in_domain"),
        "model": model, "version": version, "id": request_id,
    }
    if first("seed") is not None:
        reply["seed"] = first("seed")
    if outputs.get("alternatives"):
        runners_up = [{"caption": caption, "score": score}
                      for caption, score in zip(outputs["alternatives"], outputs.get("alternative_scores", []))]
        reply["alternatives"] = runners_up
        reply["captions"] = [{"caption": reply["caption"], "score": reply["score"]}, *runners_up]
    if "attention" in outputs:
        reply["attention"] = outputs["attention"]
        reply["grid_size"] = len(outputs["attention"][0]) if outputs["attention"] else 0
    return reply
