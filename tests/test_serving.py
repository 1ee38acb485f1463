"""End to end against a real TorchServe: management API, REST, gRPC, streaming, batching, metrics."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import psutil
import pytest
import requests

from client.grpc_client import GrpcCaptionClient
from client.grpc_retry import GrpcRetries
from client.open_inference import OpenInferenceClient
from client.rest import ServiceError
from ops.server import WORKER_ENV
from tests.helpers import shape_image_bytes

JPEG, _ = shape_image_bytes(2)


def _predictions_url(torchserve, model="captioner"):
    return f"{torchserve.url('inference')}/predictions/{model}"


# --- management API ---------------------------------------------------------------------------


def test_management_calls_need_the_management_token(torchserve, registered):
    url = f"{torchserve.url('management')}/models"
    refused = requests.post(url, params={"url": "captioner.mar", "model_name": "intruder"}, timeout=30)
    assert refused.status_code in (400, 401, 403), refused.text
    wrong_key = torchserve.tokens().header("inference")  # a valid key, but for the other API
    assert requests.get(url, headers=wrong_key, timeout=30).status_code in (400, 401, 403)
    listed = registered.list_models()
    assert [m["modelName"] for m in listed["models"]] == ["captioner"]


def test_inference_needs_the_inference_token(torchserve, registered):
    response = requests.post(_predictions_url(torchserve), data=JPEG, headers={"Content-Type": "image/jpeg"})
    assert response.status_code in (400, 401, 403)


def test_scale_up_over_rest_and_down_over_grpc_shows_in_describe(registered, grpc_client):
    registered.scale(2)
    assert len(registered.describe()[0]["workers"]) == 2
    grpc_client.scale(1)
    assert len(registered.describe()[0]["workers"]) == 1
    assert len(grpc_client.describe()[0]["workers"]) == 1


def test_workers_get_the_passive_openmp_wait_policy(registered):
    expected = os.environ.get("OMP_WAIT_POLICY", WORKER_ENV["OMP_WAIT_POLICY"])
    pids = registered.worker_pids()
    assert pids
    assert all(psutil.Process(pid).environ().get("OMP_WAIT_POLICY") == expected for pid in pids)


def test_register_and_unregister_a_second_model(registered):
    registered.register("captioner.mar", model_name="scratch", initial_workers=1)
    scratch = type(registered)(registered.inference_url, registered.management_url, registered.tokens, model="scratch")
    assert scratch.describe()[0]["modelName"] == "scratch"
    assert scratch.caption(JPEG)["model"] == "scratch"
    scratch.unregister()
    with pytest.raises(ServiceError) as error:
        scratch.describe()
    assert error.value.status == 404


def _grpc_clients(torchserve, model: str, retries: GrpcRetries) -> list:
    """A `Predictions` client and a `ModelInfer` client of `model`, with these retries."""
    target, tokens = torchserve.grpc_target("grpc_inference"), torchserve.tokens()
    return [GrpcCaptionClient(target, torchserve.grpc_target("grpc_management"), tokens, model, retries=retries),
            OpenInferenceClient(target, tokens, model, retries=retries)]


def test_grpc_captions_wait_for_a_worker_as_rest_ones_do(torchserve, registered):
    """No worker for a moment: TorchServe answers gRPC INTERNAL "no worker", which both gRPC clients wait out."""
    registered.register("captioner.mar", model_name="waiting", initial_workers=1)
    waiting = type(registered)(registered.inference_url, registered.management_url, registered.tokens, model="waiting")
    patient = _grpc_clients(torchserve, "waiting", GrpcRetries(backoff=0.5))
    hasty = _grpc_clients(torchserve, "waiting", GrpcRetries(retries=0))
    try:
        for client, without_retries in zip(patient, hasty):
            waiting.scale(0, 0)
            with pytest.raises(grpc.RpcError) as refused:
                without_retries.caption(JPEG)
            assert refused.value.code() == grpc.StatusCode.INTERNAL and "no worker" in refused.value.details()
            scale_up = threading.Timer(2.0, lambda: waiting.scale(1))
            scale_up.start()
            assert client.caption(JPEG)["model"] == "waiting"
            scale_up.join()
            retried = client.retries.retried
            assert retried > 0, type(client).__name__
            with pytest.raises(ServiceError):
                client.caption(b"\xff\xd8\xff not a jpeg")
            assert client.retries.retried == retried, "a refused image is final"
    finally:
        for client in patient + hasty:
            client.close()
        waiting.unregister()


def test_remote_and_outside_store_urls_are_refused(registered, tmp_path):
    outside = tmp_path / "elsewhere.mar"
    outside.write_bytes(b"not really an archive")
    for url in ("http://127.0.0.1:9/evil.mar", f"file://{outside}"):
        with pytest.raises(ServiceError) as error:
            registered.register(url, model_name="evil")
        assert error.value.status in (400, 403, 404), error.value.body


# --- REST inference --------------------------------------------------------------------------


def test_rest_raw_bytes(torchserve, registered):
    headers = {**torchserve.tokens().header("inference"), "Content-Type": "image/jpeg"}
    response = requests.post(_predictions_url(torchserve), data=JPEG, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "greedy" and body["model"] == "captioner" and body["version"] == "1.0"
    assert len(body["tokens"]) == len(body["scores"])


def test_rest_raw_bytes_ignore_a_query_string_as_readme_says(torchserve, registered):
    """TorchServe 0.12 does not pass a raw-bytes request's query string on: options go in a form or JSON."""
    headers = {**torchserve.tokens().header("inference"), "Content-Type": "image/jpeg"}
    response = requests.post(_predictions_url(torchserve), params={"beam_size": "3"}, data=JPEG, headers=headers,
                             timeout=60)
    assert response.status_code == 200 and response.json()["method"] == "greedy", response.text


def _post_form(torchserve, options: dict[str, str]) -> requests.Response:
    """The test image as a multipart file field, with `options` as text fields."""
    return requests.post(
        _predictions_url(torchserve),
        files={"data": ("scene.jpg", JPEG, "image/jpeg")},
        data=options,
        headers=torchserve.tokens().header("inference"),
        timeout=60,
    )


def test_rest_multipart_with_options(torchserve, registered):
    response = _post_form(torchserve, {"beam_size": "3", "max_length": "6"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "beam" and body["beam_size"] == 3 and len(body["tokens"]) <= 6


def test_rest_base64_json(registered):
    body = registered.caption(JPEG, beam_size=2, n_best=2)
    assert body["method"] == "beam" and len(body["alternatives"]) == 1


def test_rest_sampling_returns_several_captions_reproducibly(registered):
    options = {"do_sample": True, "temperature": 1.5, "num_captions": 3, "seed": 5}
    body = registered.caption(JPEG, **options)
    assert body["method"] == "sample" and body["seed"] == 5
    assert 1 <= len(body["captions"]) <= 3 and body["captions"][0]["caption"] == body["caption"]
    assert registered.caption(JPEG, **options)["captions"] == body["captions"]


@pytest.mark.parametrize(
    "options, words",
    [
        ({"do_sample": True, "temperature": 50}, "temperature must be between 0.05 and 2.0"),
        ({"beam_size": 4, "beam_groups": 3}, "beam_groups must divide beam_size"),
    ],
)
def test_rest_out_of_range_decoding_options_get_a_400_naming_them(registered, options, words):
    with pytest.raises(ServiceError) as error:
        registered.caption(JPEG, **options)
    assert error.value.status == 400 and words in error.value.body["error"]


def test_rest_multipart_option_out_of_range_gets_a_400(torchserve, registered):
    response = _post_form(torchserve, {"do_sample": "true", "top_p": "0"})
    assert response.status_code == 400 and "top_p must be greater than 0.0" in response.json()["error"]


def test_rest_bad_image_gets_json_4xx(torchserve, registered):
    headers = {**torchserve.tokens().header("inference"), "Content-Type": "image/jpeg"}
    response = requests.post(_predictions_url(torchserve), data=b"\xff\xd8\xff garbage", headers=headers, timeout=60)
    assert 400 <= response.status_code < 500
    assert "error" in response.json()


def test_a_file_posted_as_a_form_gets_a_4xx_that_says_so(torchserve, registered):
    """`curl --data-binary @file` without a Content-Type: TorchServe parses the body as an HTML form."""
    form = {**torchserve.tokens().header("inference"), "Content-Type": "application/x-www-form-urlencoded"}
    # Bytes with an '=' become a field named by the bytes before it; without one, no field arrives.
    named = requests.post(_predictions_url(torchserve), data=b"\x89PNG\x1a\x00\x01" + b"\x02" * 500 + b"=\x03\x04",
                          headers=form, timeout=60)
    assert named.status_code == 415, named.text
    assert "arrived as form fields" in named.json()["error"] and len(named.text) < 1000
    nameless = requests.post(_predictions_url(torchserve), data=b"\x89PNG\x1a\x00\x01binary", headers=form,
                             timeout=60)
    assert nameless.status_code == 400 and "application/x-www-form-urlencoded" in nameless.json()["error"]


def test_http_streaming_sends_words_in_order(registered):
    chunks = list(registered.caption_stream(JPEG))
    result = chunks[-1]
    words = [c["token"] for c in chunks[:-1]]
    assert [c["index"] for c in chunks[:-1]] == list(range(len(words)))
    assert words == result["tokens"] and " ".join(words) == result["caption"]


def test_batch_with_one_corrupt_image_fails_alone(registered):
    pids = registered.worker_pids()
    corrupt = JPEG[: len(JPEG) // 2]
    payloads = [JPEG] * 8
    payloads[5] = corrupt

    def send(image):
        try:
            return registered.caption(image)
        except ServiceError as error:
            return error

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(send, payloads))
    errors = [r for r in results if isinstance(r, ServiceError)]
    assert len(errors) == 1 and results[5] is errors[0] and 400 <= errors[0].status < 500
    assert len({r["caption"] for r in results if isinstance(r, dict)}) == 1
    assert registered.worker_pids() == pids, "no worker died"


# --- gRPC ------------------------------------------------------------------------------------


def test_grpc_predictions(grpc_client, registered):
    body = grpc_client.caption(JPEG, max_length=5)
    assert body["caption"] == registered.caption(JPEG, max_length=5)["caption"]


def test_grpc_passes_sampling_and_diverse_options_as_text(grpc_client, registered):
    for options in ({"do_sample": True, "top_k": 3, "num_captions": 2, "seed": 8},
                    {"beam_size": 4, "beam_groups": 2, "diversity": 0.8, "num_captions": 4}):
        assert grpc_client.caption(JPEG, **options)["captions"] == registered.caption(JPEG, **options)["captions"]


def test_grpc_stream_predictions_word_by_word(grpc_client, registered):
    chunks = list(grpc_client.caption_stream(JPEG))
    result = chunks[-1]
    words = [c["token"] for c in chunks[:-1]]
    assert words == result["tokens"]
    pids = registered.worker_pids()
    assert list(grpc_client.caption_stream(JPEG))[-1]["caption"] == result["caption"]
    assert registered.worker_pids() == pids


def test_grpc_bad_image_is_an_error(grpc_client):
    with pytest.raises(ServiceError):
        grpc_client.caption(b"definitely not an image")


def test_grpc_management_describe(grpc_client, registered):
    described = grpc_client.describe()
    assert described[0]["modelName"] == "captioner"


# --- metrics ---------------------------------------------------------------------------------


def test_prometheus_shows_request_counters_and_handler_metrics(torchserve, registered):
    registered.caption(JPEG)
    text = requests.get(f"{torchserve.url('metrics')}/metrics", timeout=30).text
    assert "ts_inference_requests_total" in text
    assert "CaptionDecodeSteps" in text
