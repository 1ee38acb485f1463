"""The bad-input corpus over gRPC `Predictions`: every request gets its defined answer, no worker dies.

gRPC has no per-request status: a refused request comes back as a reply whose
JSON holds `error` and `status`. `Probe.over_grpc` says where the gRPC answer
differs from the HTTP one (no Content-Type; the size limit enforced by the gRPC
server itself).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc

from client.grpc_client import GrpcCaptionClient
from ops.request_corpus import Probe, bad_input_corpus, scene_images

# What the gRPC server answers a message over its maxInboundMessageSize (max_request_size);
# CANCELLED when it resets the stream before the client has sent the whole message.
SIZE_REFUSALS = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED)


def _send(client: GrpcCaptionClient, probe: Probe) -> str | None:
    """None when the gRPC answer is the defined one, else what is wrong."""
    expected = probe.over_grpc()
    try:
        prediction = client.predict(expected.grpc_inputs())
    except grpc.RpcError as error:
        if not expected.json_error and error.code() in SIZE_REFUSALS:
            return None
        return f"{probe.kind}: gRPC error {error.code()}: {error.details()}"
    if not expected.json_error:
        return f"{probe.kind}: the gRPC server should have refused it, but a reply came: {prediction[:200]!r}"
    return expected.check_grpc_reply(prediction)


def test_every_probe_has_a_grpc_form():
    for probe in bad_input_corpus():
        inputs = probe.over_grpc().grpc_inputs()
        assert inputs and all(isinstance(value, bytes) for value in inputs.values()), probe.kind


def test_every_input_over_grpc_gets_its_defined_answer_and_no_worker_dies(grpc_client, registered):
    pids = registered.worker_pids()
    with ThreadPoolExecutor(max_workers=8) as pool:  # the batch size: batches mix probes
        problems = [problem for problem in pool.map(lambda p: _send(grpc_client, p), bad_input_corpus()) if problem]
    assert not problems, "\n".join(problems)
    assert registered.worker_pids() == pids, "no worker died"
    image = scene_images(1, seed=4343)[0]
    assert grpc_client.caption(image)["caption"] == registered.caption(image)["caption"]
