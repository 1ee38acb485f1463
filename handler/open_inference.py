"""The KServe v2 / Open Inference Protocol answer for one caption.

The handler reads v2 requests itself (`request_parsing.parse_v2_body`) instead of
through TorchServe's kservev2 envelope, so it writes the v2 answer here too, one
per request of the batch. Plain Python (no TorchServe import), unit tested directly.

    {"model_name": "captioner", "model_version": "1.0", "id": "...",
     "parameters": {"method": "greedy", "beam_size": 1, "max_length": 20, "language": "en"},
     "outputs": [{"name": "caption", "datatype": "BYTES", "shape": [1], "data": ["a red circle ..."]},
                 {"name": "score", "datatype": "FP32", "shape": [1], "data": [-0.02]}, ...,
                 {"name": "domain_score", "datatype": "FP32", "shape": [1], "data": [0.93]},
                 {"name": "in_domain", "datatype": "BOOL", "shape": [1], "data": [true]},
                 {"name": "language", "datatype": "BYTES", "shape": [1], "data": ["en"]},
                 {"name": "seed", "datatype": "INT64", "shape": [0], "data": []}]}

Tensors are flat, as v2 allows (row-major, `shape` says how to fold them):
TorchServe's OIP gRPC service reads each element of `data` as a scalar.
"""

from __future__ import annotations

from typing import Any

from handler.request_parsing import OpenInferenceCall


def _tensor(name: str, datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [len(data)], "data": data}


# The reply's settings that a v2 answer echoes in its `parameters` (those the request's method has).
REPLY_SETTINGS = ("method", "beam_size", "max_length", "language", "beam_groups", "diversity", "temperature",
                  "top_k", "top_p", "seed")


def _known(value: Any) -> list[Any]:
    """A one-element tensor's data, or none (shape [0]) for a value the reply leaves null."""
    return [] if value is None else [value]


def caption_tensors(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every output of one caption, from the handler's JSON result (`CaptionHandler.describe`).

    The runner-up beams (`n_best > 1`) are `alternatives` and `alternative_scores`,
    empty (shape [0]) otherwise, so every answer has the same outputs. `domain_score`
    and `in_domain` are empty too (shape [0]) where the JSON reply says null: an
    export without domain statistics (v2 tensors have no null element); `seed` is
    empty unless the caption was sampled. `attention` (T x G x G, one map per
    token) is there only when the request asked for it.
    """
    alternatives = result.get("alternatives", [])
    tensors = [
        _tensor("caption", "BYTES", [result["caption"]]),
        _tensor("score", "FP32", [result["score"]]),
        _tensor("tokens", "BYTES", list(result["tokens"])),
        _tensor("scores", "FP32", list(result["scores"])),
        _tensor("ended", "BOOL", [result["ended"]]),
        _tensor("alternatives", "BYTES", [a["caption"] for a in alternatives]),
        _tensor("alternative_scores", "FP32", [a["score"] for a in alternatives]),
        _tensor("domain_score", "FP32", _known(result["domain_score"])),
        _tensor("in_domain", "BOOL", _known(result["in_domain"])),
        _tensor("language", "BYTES", [result["language"]]),
        _tensor("seed", "INT64", _known(result.get("seed"))),
    ]
    if "attention" in result:
        tensors.append(_attention_tensor(result["attention"], result["grid_size"]))
    return tensors


def _attention_tensor(maps: list[list[list[float]]], grid: int) -> dict[str, Any]:
    """Each token's G x G map, flattened row-major into one FP32 tensor of shape [T, G, G]."""
    data = [weight for token_map in maps for row in token_map for weight in row]
    return {"name": "attention", "datatype": "FP32", "shape": [len(maps), grid, grid], "data": data}


def v2_response(result: dict[str, Any], call: OpenInferenceCall, request_id: str) -> dict[str, Any]:
    """The v2 answer: the request's own `id` (else TorchServe's) and the outputs it asked for."""
    return {
        "model_name": result["model"],
        "model_version": result["version"],
        "id": call.request_id or request_id,
        "parameters": {key: result[key] for key in REPLY_SETTINGS if key in result},
        "outputs": [tensor for tensor in caption_tensors(result) if tensor["name"] in call.outputs],
    }


def v2_error(error: dict[str, Any], call: OpenInferenceCall, request_id: str, model_name: str,
             model_version: str) -> dict[str, Any]:
    """A refused v2 request's answer: v2's `{"error": ...}` (with `status`), plus what a v2 answer holds.

    TorchServe's OIP gRPC service (ModelInfer) ignores the status the handler sets
    and reads every answer as a v2 response; one without `id`, `model_name`,
    `model_version` and `outputs` made its frontend throw and restart the worker.
    With them, a refused request comes back there as an `error` output, and its
    HTTP status as a `status` output (that service sends no status of its own).
    """
    return {
        **error,
        "model_name": model_name,
        "model_version": model_version,
        "id": call.request_id or request_id,
        "outputs": [_tensor("error", "BYTES", [error["error"]]), _tensor("status", "INT32", [error["status"]])],
    }
