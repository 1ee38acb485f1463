"""A show-and-tell and a soft-attention archive side by side on one real TorchServe, over REST and gRPC.

Both are tiny random models packed like `make mar`, copied into the session's
model store and registered under their own names; the handler is the same, and
the exported config says which network each worker builds.
"""

from __future__ import annotations

import base64
import shutil

import pytest
import requests

from client.grpc_client import GrpcCaptionClient
from client.open_inference import OpenInferenceClient, fold
from client.rest import CaptionClient, ServiceError
from ops.archive import build_archive
from tests.helpers import shape_image_bytes, write_tiny_export

JPEG, _ = shape_image_bytes(6)
MODELS = {"show-tell": "show_tell", "soft-attention": "soft_attention"}  # model name -> decoder


@pytest.fixture(scope="module")
def side_by_side(registered, torchserve, model_store, tmp_path_factory):
    """Per model name, its REST and gRPC clients; both are unregistered afterwards."""
    root = tmp_path_factory.mktemp("attention-archives")
    clients = {}
    try:
        for name, decoder in MODELS.items():
            export = write_tiny_export(root / name, seed=2, decoder=decoder)
            archive = build_archive(export, root / "out", model_name=name, stage_root=root / "stage")
            shutil.copy2(archive, model_store / archive.name)
            assert "registered" in str(registered.register(archive.name, initial_workers=1))
            rest = CaptionClient(registered.inference_url, registered.management_url, registered.tokens, model=name)
            grpc = GrpcCaptionClient(
                torchserve.grpc_target("grpc_inference"), torchserve.grpc_target("grpc_management"),
                torchserve.tokens(), model=name,
            )
            clients[name] = (rest, grpc)
        yield clients
    finally:
        for rest, grpc in clients.values():
            grpc.close()
            rest.unregister()


def _check_maps(reply: dict) -> None:
    assert reply["grid_size"] == 2
    assert len(reply["attention"]) == len(reply["tokens"]) > 0
    for grid in reply["attention"]:
        assert [len(row) for row in grid] == [2, 2]
        assert sum(map(sum, grid)) == pytest.approx(1.0, abs=0.01)


def test_both_models_caption_over_rest_and_grpc(side_by_side):
    for name, (rest, grpc) in side_by_side.items():
        by_rest, by_grpc = rest.caption(JPEG, max_length=6), grpc.caption(JPEG, max_length=6)
        assert by_rest["model"] == by_grpc["model"] == name
        assert by_rest["caption"] == by_grpc["caption"]
        assert "attention" not in by_rest


def test_the_attention_model_returns_a_map_per_token(side_by_side):
    rest, grpc = side_by_side["soft-attention"]
    by_rest = rest.caption(JPEG, attention=True)
    by_grpc = grpc.caption(JPEG, attention=True)
    _check_maps(by_rest)
    assert by_grpc["attention"] == by_rest["attention"]
    beams = rest.caption(JPEG, attention=True, beam_size=3, num_captions=2)
    _check_maps(beams)
    assert all(len(c["attention"]) == len(c["tokens"]) for c in beams["captions"])


def test_the_attention_maps_come_over_the_open_inference_protocol_too(side_by_side, torchserve):
    """KServe v2 over REST and over its gRPC service (ModelInfer): one [T, G, G] FP32 tensor of the maps."""
    rest, _ = side_by_side["soft-attention"]
    expected = rest.caption(JPEG, attention=True, beam_size=2)
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(JPEG).decode()]},
                       {"name": "attention", "datatype": "BOOL", "shape": [1], "data": [True]}],
            "parameters": {"beam_size": 2}}
    reply = requests.post(f"{rest.inference_url}/v2/models/soft-attention/infer", json=body,
                          headers=rest.tokens.header("inference"), timeout=120)
    assert reply.status_code == 200, reply.text
    maps = next(tensor for tensor in reply.json()["outputs"] if tensor["name"] == "attention")
    assert maps["shape"] == [len(expected["tokens"]), 2, 2]
    assert fold(maps["data"], maps["shape"]) == expected["attention"]
    with OpenInferenceClient(torchserve.grpc_target("grpc_inference"), torchserve.tokens(),
                             model="soft-attention") as oip:
        answer = oip.infer(JPEG, attention=True, beam_size=2)
    assert answer["caption"] == [expected["caption"]]
    assert answer["attention"] == expected["attention"], "FP32 on the wire, rounded back to the reply's decimals"


def test_the_show_tell_model_answers_attention_with_a_400(side_by_side):
    rest, grpc = side_by_side["show-tell"]
    for client in (rest, grpc):
        with pytest.raises(ServiceError) as refused:
            client.caption(JPEG, attention=True)
        assert refused.value.status == 400
        assert "show_tell" in refused.value.body["error"] and "attention" in refused.value.body["error"]


@pytest.mark.parametrize("name", list(MODELS))
def test_streaming_works_with_both(side_by_side, name):
    rest, grpc = side_by_side[name]
    options = {"attention": True} if name == "soft-attention" else {}
    for client in (rest, grpc):
        chunks = list(client.caption_stream(JPEG, **options))
        result, words = chunks[-1], [c["token"] for c in chunks[:-1]]
        assert words == result["tokens"] and result["model"] == name
        if options:
            _check_maps(result)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_demo_page_shows_the_maps_of_an_attention_models_caption(side_by_side, torchserve, monkeypatch, name):
    from tests.test_demo_app import open_page

    page = open_page(torchserve, monkeypatch, CAPTION_MODEL=name)
    page.file_uploader(key="upload").set_value(("scene.jpg", JPEG, "image/jpeg"))
    page.run()
    assert not page.exception and not page.error, (page.exception, [e.value for e in page.error])
    rest, _ = side_by_side[name]
    expected = rest.caption(JPEG)["caption"]
    assert [h.value for h in page.subheader if h.value != "History"] == [expected]
    notes = " ".join(c.value for c in page.caption)
    if name == "soft-attention":
        assert len(page.image) == 2, "the preview, then the maps"
        assert "No attention maps" not in notes
    else:
        assert len(page.image) == 1, "the preview only"
        assert "No attention maps" in notes and "show_tell" in notes
        page.button(key="again").click()
        page.run()
        assert [h.value for h in page.subheader if h.value != "History"] == [expected]
        assert "No attention maps" in " ".join(c.value for c in page.caption)
