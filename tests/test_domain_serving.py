"""`domain_score` and `in_domain` in every reply: the handler in process, and the session's TorchServe.

The tiny random model's features say little about what an image shows, so these
tests check the plumbing: every reply of a batch carries its own image's values,
the same as it gets alone and over every protocol, and an export without
statistics replies null. That a photo is flagged by a trained model is checked in
`tests/test_trained_model.py`.
"""

from __future__ import annotations

import base64
import json
import logging

import pytest
import requests

from handler.caption_handler import CaptionHandler
from tests.helpers import shape_image_bytes, torchserve_context, write_domain_export, write_tiny_export
from tests.test_handler import _streamed_chunks
from tests.test_open_inference import infer, outputs, v2_body

SCENES = [shape_image_bytes(seed)[0] for seed in range(4)]
FP32 = {"captioner": {"precision": "fp32"}}  # exact comparisons: fp32 embeddings do not depend on the batch


@pytest.fixture(scope="module")
def domain_export(tmp_path_factory):
    export, _ = write_domain_export(tmp_path_factory.mktemp("domain") / "export")
    return export


def handle(export, rows, settings=FP32):
    context, reader = torchserve_context(export, len(rows), settings)
    handler = CaptionHandler()
    handler.initialize(context)
    texts = handler.handle(rows, context)
    statuses = [context.get_response_status(i)[0] for i in range(len(rows))]
    return texts, statuses, reader


def batch_rows():
    """One request of every form: raw JPEG, JSON with beam search, form with options, v2, streamed, and a bad one."""
    b64 = base64.b64encode(SCENES[1]).decode()
    return [
        {"body": bytearray(SCENES[0])},
        {"body": {"image": b64, "beam_size": 2, "n_best": 2}},
        {"data": bytearray(SCENES[2]), "max_length": bytearray(b"5")},
        {"body": v2_body(SCENES[3], request_id="v2")},
        {"body": {"image": base64.b64encode(SCENES[0]).decode(), "stream": True}},
        {"body": bytearray(b"not an image")},
    ]


def test_every_reply_of_a_batch_carries_its_own_images_domain_score(domain_export):
    texts, statuses, reader = handle(domain_export, batch_rows())
    assert statuses == [200, 200, 200, 200, 200, 415]
    plain = [json.loads(texts[i]) for i in (0, 1, 2)]
    v2 = outputs(json.loads(texts[3]))
    streamed = [c for c in _streamed_chunks(reader) if "caption" in c]
    assert texts[4] == "" and len(streamed) == 1, "the stream's last line is the whole reply"
    refused = json.loads(texts[5])
    assert "domain_score" not in refused and refused["status"] == 415, "a refused request has no image to score"
    got = [(r["domain_score"], r["in_domain"]) for r in plain] + [(v2["domain_score"][0], v2["in_domain"][0]),
                                                                  (streamed[0]["domain_score"], streamed[0]["in_domain"])]
    for score, in_domain in got:
        assert isinstance(score, float) and 0 < score <= 1 and in_domain is (score >= 0.5)
    # Each alone, in a batch of one: the same values, so a request's score is its own image's.
    alone = []
    for row, image in zip(batch_rows()[:5], [*SCENES, SCENES[0]]):
        text, _, reader = handle(domain_export, [row])
        reply = json.loads(text[0]) if text[0] else next(c for c in _streamed_chunks(reader) if "caption" in c)
        reply = {k: outputs(reply)[k][0] for k in ("domain_score", "in_domain")} if "outputs" in reply else reply
        alone.append((reply["domain_score"], reply["in_domain"]))
    assert got == alone
    assert len({score for score, _ in got[:4]}) == 4, "four different images, four different scores"
    assert got[4] == got[0], "the same image streamed scores the same"


def test_scores_under_bf16_are_close_to_fp32s(domain_export):
    """The encoder under bf16 autocast; its maps' summaries are cast to fp32 and scored in float64."""
    rows = [{"body": bytearray(image)} for image in SCENES]
    fp32 = [json.loads(t)["domain_score"] for t in handle(domain_export, rows)[0]]
    bf16 = [json.loads(t)["domain_score"] for t in handle(domain_export, rows, {"captioner": {"precision": "bf16"}})[0]]
    assert fp32 != bf16 and max(abs(a - b) for a, b in zip(fp32, bf16)) <= 0.02, (fp32, bf16)


def test_an_export_without_statistics_loads_and_replies_null(tmp_path, caplog):
    export = write_tiny_export(tmp_path / "old", seed=1)
    with caplog.at_level(logging.INFO, logger="handler.caption_handler"):
        texts, statuses, _ = handle(export, [{"body": bytearray(SCENES[0])}, {"body": v2_body(SCENES[1])}])
    assert statuses == [200, 200]
    assert "no domain statistics (replies carry domain_score null)" in caplog.text
    reply = json.loads(texts[0])
    assert reply["caption"] and reply["domain_score"] is None and reply["in_domain"] is None
    v2 = outputs(json.loads(texts[1]))  # v2 tensors have no null: the outputs are there, empty
    assert v2["domain_score"] == [] and v2["in_domain"] == [] and v2["caption"]


def test_the_worker_log_says_the_statistics_are_loaded(domain_export, caplog):
    with caplog.at_level(logging.INFO, logger="handler.caption_handler"):
        handle(domain_export, [{"body": bytearray(SCENES[0])}])
    assert "domain statistics loaded (fitted on 48 images; layer4_mean 512 threshold " in caplog.text
    assert ", layer3_mean_std 512 threshold " in caplog.text


# --- the session's TorchServe -------------------------------------------------------------------


def test_rest_grpc_streams_and_v2_replies_carry_the_same_domain_score(torchserve, registered, grpc_client):
    rest = registered.caption(SCENES[0])
    assert isinstance(rest["domain_score"], float) and isinstance(rest["in_domain"], bool)
    assert rest["in_domain"] is (rest["domain_score"] >= 0.5)
    expected = (rest["domain_score"], rest["in_domain"])
    grpc = grpc_client.caption(SCENES[0])
    grpc_streamed = list(grpc_client.caption_stream(SCENES[0]))[-1]
    http_streamed = list(registered.caption_stream(SCENES[0]))[-1]
    v2 = outputs(infer(torchserve, v2_body(SCENES[0])).json())
    assert (grpc["domain_score"], grpc["in_domain"]) == expected
    assert (grpc_streamed["domain_score"], grpc_streamed["in_domain"]) == expected
    assert (http_streamed["domain_score"], http_streamed["in_domain"]) == expected
    assert (v2["domain_score"], v2["in_domain"]) == ([expected[0]], [expected[1]])
    # The session model's statistics were fitted on generated scenes: a new one is in domain.
    assert all(registered.caption(image)["in_domain"] for image in SCENES[1:])


def test_rest_multipart_reply_carries_the_fields(torchserve, registered):
    reply = requests.post(f"{torchserve.url('inference')}/predictions/captioner", files={"data": SCENES[2]},
                          data={"beam_size": "2"}, headers=torchserve.tokens().header("inference"), timeout=60)
    assert reply.status_code == 200, reply.text
    assert {"domain_score", "in_domain"} <= set(reply.json())
