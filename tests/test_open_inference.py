"""KServe v2 / Open Inference Protocol: `/v2/models/<name>/infer` and `/v2/health/*`.

TorchServe 0.12 sends `/v2/models/<name>/infer` to the handler like `/predictions`;
the handler reads the v2 body itself (`handler.request_parsing.parse_v2_body`), so
every request of a batch gets its own v2 answer (TorchServe's kservev2 envelope
answers only the first, pytorch/serve#2158). A caption over v2 must be the one
`/predictions` gives for the same image and options.
"""

from __future__ import annotations

import base64
import json
import math
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import requests

from client.auth import TokenStore
from client.open_inference import OpenInferenceClient, fold
from client.rest import ServiceError
from handler.caption_handler import CaptionHandler
from handler.request_parsing import BadRequest, RequestLimits, parse_request
from ops.request_corpus import scene_images
from tests.helpers import shape_image_bytes, torchserve_context, write_tiny_export

JPEG, _ = shape_image_bytes(5)
BATCH = 8  # batchSize in handler/model-config.yaml


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def image_input(data=None, datatype="BYTES", shape=(1,)) -> dict:
    return {"name": "image", "datatype": datatype, "shape": list(shape), "data": [_b64(JPEG)] if data is None else data}


def int_input(name: str, value, datatype="INT32") -> dict:
    return {"name": name, "datatype": datatype, "shape": [1], "data": [value]}


def v2_body(image: bytes, request_id: str | None = None, **options) -> dict:
    body = {"inputs": [image_input([_b64(image)]), *(int_input(k, v) for k, v in options.items())]}
    return body if request_id is None else {"id": request_id, **body}


def infer(server, body: dict, model: str = "captioner") -> requests.Response:
    return requests.post(
        f"{server.url('inference')}/v2/models/{model}/infer", json=body,
        headers=server.tokens().header("inference"), timeout=120,
    )


def outputs(reply: dict) -> dict[str, list]:
    """Output data by name (flat, as sent), after checking each output's shape matches its data."""
    for tensor in reply["outputs"]:
        assert math.prod(tensor["shape"]) == len(tensor["data"]), tensor
        assert tensor["name"] == "attention" or len(tensor["shape"]) == 1, tensor
    return {tensor["name"]: tensor["data"] for tensor in reply["outputs"]}


# --- health --------------------------------------------------------------------------------------


def test_v2_health_live_and_ready_answer_with_the_inference_token(torchserve, registered):
    base, token = torchserve.url("inference"), torchserve.tokens().header("inference")
    live = requests.get(f"{base}/v2/health/live", headers=token, timeout=30)
    ready = requests.get(f"{base}/v2/health/ready", headers=token, timeout=30)
    assert live.status_code == 200 and live.json() == {"live": True}, live.text
    assert ready.status_code == 200 and ready.json() == {"ready": True}, ready.text
    assert requests.get(f"{base}/v2/health/ready", timeout=30).status_code in (400, 401, 403), "tokens apply"


# --- one request ---------------------------------------------------------------------------------


def test_v2_infer_answers_the_caption_predictions_gives(torchserve, registered):
    reply = infer(torchserve, v2_body(JPEG, request_id="req-1", max_length=6, beam_size=2, n_best=2))
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("captioner", "1.0", "req-1")
    assert body["parameters"] == {"method": "beam", "beam_size": 2, "max_length": 6, "language": "en"}
    data = outputs(body)
    datatypes = {tensor["name"]: tensor["datatype"] for tensor in body["outputs"]}
    assert datatypes == {"caption": "BYTES", "score": "FP32", "tokens": "BYTES", "scores": "FP32",
                         "ended": "BOOL", "alternatives": "BYTES", "alternative_scores": "FP32",
                         "domain_score": "FP32", "in_domain": "BOOL", "language": "BYTES", "seed": "INT64"}
    expected = registered.caption(JPEG, max_length=6, beam_size=2, n_best=2)
    assert data["caption"] == [expected["caption"]] and data["tokens"] == expected["tokens"]
    assert data["score"] == [expected["score"]] and data["ended"] == [expected["ended"]]
    assert data["alternatives"] == [a["caption"] for a in expected["alternatives"]]
    assert data["domain_score"] == [expected["domain_score"]] and data["in_domain"] == [expected["in_domain"]]
    assert data["language"] == ["en"] and data["seed"] == [], "seed: sampled captions only"


def test_v2_outputs_pick_what_comes_back_and_parameters_carry_options(torchserve, registered):
    body = {"inputs": [image_input()], "parameters": {"max_length": 3}, "outputs": [{"name": "caption"}]}
    reply = infer(torchserve, body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert [tensor["name"] for tensor in answer["outputs"]] == ["caption"]
    assert answer["parameters"]["max_length"] == 3
    assert answer["outputs"][0]["data"] == [registered.caption(JPEG, max_length=3)["caption"]]
    assert isinstance(answer["id"], str) and answer["id"], "without an id of its own, TorchServe's request id"


# --- batches -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batching(registered):
    """The archive again as `oip_batch`, one worker that waits up to 10 s to fill a batch of 8.

    Requests sent 8 at a time are then decoded together in one batch; a lone
    request would wait the whole delay, so references come from `captioner`.
    """
    registered.register("captioner.mar", model_name="oip_batch", initial_workers=1, batch_size=BATCH,
                        max_batch_delay=10_000)
    client = type(registered)(registered.inference_url, registered.management_url, registered.tokens,
                              model="oip_batch", retries=0)
    yield client
    client.unregister()


def _in_batches(jobs: list, send) -> list:
    """Send `jobs` 8 at a time, each group released together so that it fills one batch."""
    assert len(jobs) % BATCH == 0
    barrier = threading.Barrier(BATCH)

    def together(job):
        barrier.wait(timeout=300)
        return send(job)

    with ThreadPoolExecutor(max_workers=BATCH) as pool:
        return list(pool.map(together, jobs))


def test_concurrent_v2_requests_each_get_the_caption_of_their_own_image(torchserve, registered, batching):
    images = scene_images(BATCH, seed=500)
    options = [{"max_length": 4 + i % 5, "beam_size": 1 + i % 3} for i in range(BATCH)]
    references = [registered.caption(image, **o)["caption"] for image, o in zip(images, options)]
    assert len(set(references)) == BATCH, "every image has its own caption, so a mix-up would show"
    pids = batching.worker_pids()

    def send(i):
        reply = infer(torchserve, v2_body(images[i], request_id=f"image-{i}", **options[i]), model="oip_batch")
        return reply.status_code, reply.json()

    for i, (status, body) in enumerate(_in_batches(list(range(BATCH)), send)):
        assert status == 200, body
        assert body["id"] == f"image-{i}" and body["model_name"] == "oip_batch"
        assert outputs(body)["caption"] == [references[i]], f"request {i} got another image's caption"
    assert batching.worker_pids() == pids, "no worker died"


def _bad_v2_requests() -> list[tuple[str, dict, int, str]]:
    """(kind, body, status, words the error must contain) for v2 requests the handler must refuse."""
    image = image_input()
    return [
        ("bad-base64", {"inputs": [image_input(["%%% not base64 %%%"])]}, 400, "base64"),
        ("no-image-input", {"inputs": [int_input("max_length", 5)]}, 400, "no 'image' input"),
        ("non-image-bytes", {"inputs": [image_input([_b64(b"hello, world")])]}, 415, "not an image"),
        ("truncated-image", {"inputs": [image_input([_b64(JPEG[: len(JPEG) // 2])])]}, 400, "truncated"),
        ("max-length-zero", {"inputs": [image, int_input("max_length", 0)]}, 400, "max_length must be between"),
        ("beam-size-too-large", {"inputs": [image, int_input("beam_size", 99)]}, 400, "beam_size"),
        ("beam-size-not-a-number", {"inputs": [image, int_input("beam_size", "three")]}, 400, "integer"),
        ("option-as-float", {"inputs": [image, int_input("beam_size", 2.0, "FP32")]}, 400, "datatype"),
        ("image-not-bytes", {"inputs": [image_input([1, 2, 3], "INT32", (3,))]}, 400, "datatype"),
        ("two-images", {"inputs": [image_input([_b64(JPEG)] * 2, shape=(2,))]}, 400, "one image per request"),
        ("unknown-input", {"inputs": [image, int_input("colour", 1)]}, 400, "unknown inputs"),
        ("stream-over-v2", {"inputs": [image, int_input("stream", 1, "BOOL")]}, 400, "no streaming over v2"),
        ("temperature-without-sampling", {"inputs": [image, int_input("temperature", 0.5, "FP32")]}, 400,
         "add do_sample=true"),
        ("sample-as-int", {"inputs": [image, int_input("do_sample", 1)]}, 400, "datatype BOOL"),
        ("language-not-the-models", {"inputs": [image, int_input("language", "ja", "BYTES")]}, 400,
         "language must be one of"),
        ("inputs-not-a-list", {"inputs": {"image": _b64(JPEG)}}, 400, "non-empty list"),
        ("unknown-output", {"inputs": [image], "outputs": [{"name": "logits"}]}, 400, "unknown outputs"),
        ("option-given-twice", {"inputs": [image, int_input("max_length", 4)], "parameters": {"max_length": 5}},
         400, "both"),
        ("unknown-parameter", {"inputs": [image], "parameters": {"colour": "red"}}, 400, "unknown parameters"),
        ("attention-output-unasked", {"inputs": [image], "outputs": [{"name": "attention"}]}, 400,
         "comes with the attention option"),
    ]


def test_bad_v2_requests_get_a_json_4xx_and_leave_their_batch_alone(torchserve, registered, batching):
    bad = _bad_v2_requests()
    images = scene_images(4, seed=900)
    references = [registered.caption(image)["caption"] for image in images]
    jobs = [("bad", i) for i in range(len(bad))] + [("good", i % len(images)) for i in range(3 * BATCH - len(bad))]
    random.Random(5).shuffle(jobs)
    pids = batching.worker_pids()

    def send(job):
        kind, index = job
        if kind == "good":
            reply = infer(torchserve, v2_body(images[index]), model="oip_batch")
            if reply.status_code != 200:
                return f"good image {index}: HTTP {reply.status_code}: {reply.text[:200]}"
            caption = outputs(reply.json())["caption"]
            return None if caption == [references[index]] else f"good image {index}: {caption} != {references[index]!r}"
        name, body, status, words = bad[index]
        reply = infer(torchserve, body, model="oip_batch")
        try:
            error = reply.json()
        except ValueError:
            return f"{name}: answer is not JSON: {reply.text[:200]!r}"
        if reply.status_code != status or error.get("status") != status:
            return f"{name}: expected {status}, got HTTP {reply.status_code}: {error}"
        return None if words.lower() in error.get("error", "").lower() else f"{name}: error lacks {words!r}: {error}"

    problems = [problem for problem in _in_batches(jobs, send) if problem]
    assert not problems, "\n".join(problems)
    assert batching.worker_pids() == pids, "no worker died"


# --- the handler alone, one batch of every kind ------------------------------------------------


def test_one_handler_batch_answers_v2_and_plain_requests_each_in_their_own_form(tmp_path):
    context, _ = torchserve_context(write_tiny_export(tmp_path / "export", seed=1), 4)
    handler = CaptionHandler()
    handler.initialize(context)
    rows = [
        {"body": v2_body(JPEG, request_id="a", max_length=5)},
        {"body": bytearray(JPEG)},
        {"body": {"inputs": [image_input(["%%%"])]}},
        {"body": json.dumps(v2_body(JPEG, request_id="d")).encode()},  # a v2 body as bytes (no Content-Type)
    ]
    answers = [json.loads(text) for text in handler.handle(rows, context)]
    statuses = [context.get_response_status(i)[0] for i in range(len(rows))]
    assert statuses == [200, 200, 400, 200]
    assert answers[0]["id"] == "a" and len(outputs(answers[0])["tokens"]) <= 5
    assert answers[1]["caption"] and "outputs" not in answers[1]
    assert "base64" in answers[2]["error"] and answers[2]["status"] == 400
    # What TorchServe's OIP gRPC service needs to read a refusal without restarting the worker.
    assert answers[2]["model_name"] == "captioner" and outputs(answers[2])["error"] == [answers[2]["error"]]
    assert outputs(answers[2])["status"] == [400]
    assert answers[3]["id"] == "d" and outputs(answers[3])["caption"] == [answers[1]["caption"]]


# --- every option of /predictions, over v2 -------------------------------------------------------

FOUR_LANGUAGES = RequestLimits(languages=("en", "fr", "de", "es"), attention_grid=2, decoder="soft_attention")
OPTION_SETS = [
    {"max_length": 7, "language": "de"},
    {"beam_size": 4, "num_captions": 3, "language": "fr"},
    {"beam_size": 6, "beam_groups": 3, "diversity": 0.8, "n_best": 2},
    {"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "seed": 4_000_000_000, "num_captions": 2},
    {"attention": True, "beam_size": 2},
]


def typed_inputs(options: dict) -> list[dict]:
    """Each option as the v2 input tensor a KServe client would send, typed as the handler documents."""
    datatypes = {bool: "BOOL", float: "FP32", str: "BYTES", int: "INT64"}
    return [int_input(name, value, datatypes[type(value)]) for name, value in options.items()]


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(o))
def test_every_option_reads_over_v2_as_it_does_on_predictions(options):
    plain = parse_request({"body": {"image": _b64(JPEG), **options}}, FOUR_LANGUAGES).options
    as_inputs = parse_request({"body": {"inputs": [image_input(), *typed_inputs(options)]}}, FOUR_LANGUAGES)
    as_parameters = parse_request({"body": {"inputs": [image_input()], "parameters": options}}, FOUR_LANGUAGES)
    assert as_inputs.options == plain and as_parameters.options == plain
    assert as_inputs.v2 is not None


def test_a_language_from_the_grpc_service_arrives_base64_and_reads_as_sent():
    """ModelInfer base64-encodes BYTES inputs before the handler sees them; REST sends the text."""
    def language(data: str) -> str:
        body = {"inputs": [image_input(), int_input("language", data, "BYTES")]}
        return parse_request({"body": body}, FOUR_LANGUAGES).options.language

    assert language("fr") == "fr" and language(_b64(b"fr")) == "fr" and language(_b64(b"es")) == "es"
    with pytest.raises(BadRequest, match=r"languages \(en, fr, de, es\), got 'ja'"):
        language(_b64(b"ja"))
    with pytest.raises(BadRequest, match="got 'ja'"):
        language("ja")


def test_sampled_and_attention_answers_carry_seed_language_and_maps_as_tensors(tmp_path):
    """A soft-attention model in process: a v2 answer holds what the JSON reply to the same request holds."""
    context, _ = torchserve_context(write_tiny_export(tmp_path / "export", seed=2, decoder="soft_attention"), 4)
    handler = CaptionHandler()
    handler.initialize(context)
    sampled = {"do_sample": True, "top_p": 0.9, "seed": 11, "num_captions": 2, "max_length": 6}
    beams = {"beam_size": 3, "num_captions": 2, "attention": True, "max_length": 5}
    rows = [{"body": {"image": _b64(JPEG), **sampled}}, {"body": {"inputs": [image_input(), *typed_inputs(sampled)]}},
            {"body": {"image": _b64(JPEG), **beams}}, {"body": {"inputs": [image_input()], "parameters": beams}}]
    plain_sample, v2_sample, plain_beams, v2_beams = [json.loads(text) for text in handler.handle(rows, context)]
    assert [context.get_response_status(i)[0] for i in range(len(rows))] == [200] * 4

    data = outputs(v2_sample)
    assert data["caption"] == [plain_sample["caption"]] and data["seed"] == [11] and data["language"] == ["en"]
    assert data["alternatives"] == [c["caption"] for c in plain_sample["captions"][1:]]
    assert v2_sample["parameters"] == {"method": "sample", "beam_size": 1, "max_length": 6, "language": "en",
                                       "temperature": 1.0, "top_k": 0, "top_p": 0.9, "seed": 11}
    assert "attention" not in data, "maps only when asked for"

    maps = next(tensor for tensor in v2_beams["outputs"] if tensor["name"] == "attention")
    tokens = len(plain_beams["tokens"])
    assert maps["datatype"] == "FP32" and maps["shape"] == [tokens, 2, 2]
    assert fold(maps["data"], maps["shape"]) == plain_beams["attention"]
    for index in range(tokens):
        assert sum(maps["data"][4 * index:4 * index + 4]) == pytest.approx(1.0, abs=0.01)
    assert outputs(v2_beams)["caption"] == [plain_beams["caption"]] and outputs(v2_beams)["seed"] == []


# --- the Open Inference Protocol's gRPC service (ModelInfer) ----------------------------------------


@pytest.fixture(scope="module")
def oip_grpc(torchserve, registered):
    with OpenInferenceClient(torchserve.grpc_target("grpc_inference"), torchserve.tokens()) as client:
        yield client


def test_model_infer_over_grpc_gives_the_caption_predictions_gives(oip_grpc, registered):
    assert oip_grpc.server_live() and oip_grpc.model_ready()
    metadata = oip_grpc.service.ModelMetadata(oip_grpc.pb.ModelMetadataRequest(name="captioner"),
                                              metadata=oip_grpc._metadata(), timeout=30)
    assert metadata.name == "captioner" and "1.0" in metadata.versions
    for options in ({"max_length": 6, "beam_size": 3, "num_captions": 2, "language": "en"},
                    {"do_sample": True, "top_p": 0.8, "temperature": 0.9, "seed": 21}):
        expected = registered.caption(JPEG, **options)
        answer = oip_grpc.infer(JPEG, request_id="oip-1", **options)
        assert (answer["id"], answer["model_name"], answer["model_version"]) == ("oip-1", "captioner", "1.0")
        assert answer["caption"] == [expected["caption"]] and answer["tokens"] == expected["tokens"]
        assert answer["scores"] == expected["scores"], "FP32 on the wire, rounded back to the reply's 5 decimals"
        assert answer["alternatives"] == [a["caption"] for a in expected.get("alternatives", [])]
        assert answer["language"] == ["en"] and answer["seed"] == ([21] if "seed" in options else [])
        assert answer["domain_score"] == [expected["domain_score"]]
        assert answer["in_domain"] == [expected["in_domain"]]


def test_model_infer_refusals_come_back_as_an_error_output_and_the_worker_lives(oip_grpc, registered, torchserve):
    pids = registered.worker_pids()
    with OpenInferenceClient(torchserve.grpc_target("grpc_inference"), TokenStore(None)) as no_token:
        with pytest.raises(grpc.RpcError) as refused:
            no_token.infer(JPEG)
    assert refused.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), refused.value
    for options, words in (({"beam_size": 99}, "beam_size must be between"),
                           ({"language": "ja"}, "got 'ja'"),
                           ({"temperature": 0.5}, "add do_sample=true")):
        with pytest.raises(ServiceError, match=words) as refused:
            oip_grpc.infer(JPEG, **options)
        assert refused.value.status == 400
    with pytest.raises(ServiceError, match="not an image") as refused:
        oip_grpc.infer(b"hello, world")
    assert refused.value.status == 415, "the status REST gives, as an output"
    assert oip_grpc.infer(JPEG)["caption"] == [registered.caption(JPEG)["caption"]]
    assert registered.worker_pids() == pids, "no worker restarted"
