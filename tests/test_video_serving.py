"""The video model served beside the image model by the session's real TorchServe: REST, gRPC, batching,
streaming, the CLI, and the clips it must refuse without losing a worker.

A tiny random video model (4 frames of 32 px) is packed with `ops.archive.build_archive`, as
`make video-mar` packs the trained one, with a small frame limit so an oversized clip is cheap to make.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml
from PIL import Image

from client.__main__ import main as client_main
from client.grpc_client import GrpcCaptionClient
from client.open_inference import OpenInferenceClient
from client.rest import CaptionClient, ServiceError
from model.video_frames import read_clip
from ops.archive import MODEL_CONFIG, build_archive
from tests.helpers import TINY_VIDEO, shape_image_bytes, write_tiny_export
from training.video_data import clip_frames, random_clip, write_video

MODEL = "captioner-video"
MAX_FRAMES = 64


def _clip_frames(seed: int, frames: int = 24, size: int = 32) -> tuple[list[Image.Image], int]:
    record = {**random_clip(random.Random(seed), size), "frame_count": frames}
    return clip_frames(record), record["fps"]


def _container(frames: list[Image.Image], fps: int, suffix: str, tmp_path) -> bytes:
    if suffix == ".gif":
        buffer = io.BytesIO()
        frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=1000 // fps, loop=0)
        return buffer.getvalue()
    codec = {".mp4": "libx264", ".webm": "libvpx"}[suffix]
    return write_video(frames, tmp_path / f"clip{suffix}", fps, codec=codec).read_bytes()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("clips")
    frames, fps = _clip_frames(seed=4)
    made = {suffix: _container(frames, fps, suffix, folder) for suffix in (".mp4", ".webm", ".gif")}
    made["other.mp4"] = _container(*_clip_frames(seed=9), ".mp4", folder)
    long_frames, long_fps = _clip_frames(seed=5, frames=MAX_FRAMES + 16)
    made["too_long.mp4"] = _container(long_frames, long_fps, ".mp4", folder)
    return made


@pytest.fixture(scope="module")
def video(model_store, registered, tmp_path_factory) -> CaptionClient:
    """`captioner-video` registered beside `captioner`, batching up to 4 clips."""
    root = tmp_path_factory.mktemp("video-archive")
    export = write_tiny_export(root / "export", seed=2, **TINY_VIDEO)
    settings = yaml.safe_load(MODEL_CONFIG.read_text())
    settings.update(minWorkers=1, maxWorkers=1, batchSize=4, maxBatchDelay=300)
    settings["captioner"]["max_video_frames"] = MAX_FRAMES
    config_file = root / "model-config.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    build_archive(export, model_store, model_name=MODEL, config_file=config_file, stage_root=root / "stage")
    registered.register(f"{MODEL}.mar", initial_workers=1)
    client = dataclasses.replace(registered, model=MODEL, retries=0)
    yield client
    client.unregister()


def _post(torchserve, data: bytes, content_type: str) -> requests.Response:
    headers = {**torchserve.tokens().header("inference"), "Content-Type": content_type}
    return requests.post(f"{torchserve.url('inference')}/predictions/{MODEL}", data=data, headers=headers, timeout=60)


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.mark.parametrize("suffix,content_type", [(".mp4", "video/mp4"), (".webm", "video/webm"),
                                                 (".gif", "image/gif")])
def test_each_container_gets_a_caption_of_its_sampled_frames_over_rest(torchserve, video, clips, suffix,
                                                                       content_type):
    response = _post(torchserve, clips[suffix], content_type)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == MODEL and body["method"] == "greedy"
    assert body["tokens"], "the tiny model's caption should not be empty, or the comparison below is vacuous"
    # The same frames the server sampled, sent as JSON frames, get the very same caption and score.
    frames = read_clip(clips[suffix], TINY_VIDEO["num_frames"]).frames
    as_frames = video.deliver(json={"frames": [_png_base64(f) for f in frames]})
    assert as_frames.response.status_code == 200, as_frames.response.text
    assert as_frames.response.json()["tokens"] == body["tokens"]
    assert as_frames.response.json()["score"] == pytest.approx(body["score"], abs=1e-4)


def test_different_clips_get_answers_of_their_own(video, clips):
    first, second = video.caption(clips[".mp4"], field="video"), video.caption(clips["other.mp4"], field="video")
    assert (first["tokens"], first["score"]) != (second["tokens"], second["score"])


def test_multipart_json_and_beam_search(torchserve, video, clips):
    response = requests.post(
        f"{torchserve.url('inference')}/predictions/{MODEL}", files={"data": ("clip.mp4", clips[".mp4"], "video/mp4")},
        data={"beam_size": "3", "num_captions": "2"}, headers=torchserve.tokens().header("inference"), timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "beam" and len(body["captions"]) == 2
    assert video.caption(clips[".mp4"], field="video", beam_size=3, num_captions=2)["captions"] == body["captions"]


def test_an_mp4_over_kserve_v2_rest_and_model_infer(torchserve, video, clips):
    expected = video.caption(clips[".mp4"], field="video", beam_size=2)
    body = {"inputs": [{"name": "video", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(clips[".mp4"]).decode()]}], "parameters": {"beam_size": 2}}
    reply = requests.post(f"{torchserve.url('inference')}/v2/models/{MODEL}/infer", json=body,
                          headers=torchserve.tokens().header("inference"), timeout=60)
    assert reply.status_code == 200, reply.text
    by_rest = {tensor["name"]: tensor["data"] for tensor in reply.json()["outputs"]}
    with OpenInferenceClient(torchserve.grpc_target("grpc_inference"), torchserve.tokens(), model=MODEL) as oip:
        by_grpc = oip.infer(clips[".mp4"], field="video", beam_size=2)
    assert by_rest["caption"] == by_grpc["caption"] == [expected["caption"]]
    assert by_rest["tokens"] == by_grpc["tokens"] == expected["tokens"]


def test_an_mp4_over_grpc(torchserve, video, clips):
    with GrpcCaptionClient(torchserve.grpc_target("grpc_inference"), torchserve.grpc_target("grpc_management"),
                           torchserve.tokens(), model=MODEL) as grpc_client:
        body = grpc_client.caption(clips[".mp4"], max_length=8)
        chunks = list(grpc_client.caption_stream(clips[".mp4"], max_length=8))
    words = [c["token"] for c in chunks[:-1]]
    assert body["model"] == MODEL
    assert body["tokens"] == video.caption(clips[".mp4"], field="video", max_length=8)["tokens"] == words


def test_http_streaming_sends_the_words_of_a_clip_in_order(video, clips):
    chunks = list(video.caption_stream(clips[".webm"], field="video"))
    words = [c["token"] for c in chunks[:-1]]
    assert words == chunks[-1]["tokens"] == video.caption(clips[".webm"], field="video")["tokens"]


def test_bad_clips_get_4xx_naming_the_problem_and_no_worker_dies(torchserve, video, clips):
    pids = video.worker_pids()
    mp4 = clips[".mp4"]
    jpeg, _ = shape_image_bytes(1)
    cases = [
        (mp4[: len(mp4) // 2], "video/mp4", 400, "truncated or corrupt"),
        (clips["too_long.mp4"], "video/mp4", 413, f"max_video_frames={MAX_FRAMES}"),
        (jpeg, "image/jpeg", 415, "still JPEG"),
        (b"\x00\x01 some bytes that are no container", "application/octet-stream", 415, "not a video container"),
    ]
    for data, content_type, status, words in cases:
        response = _post(torchserve, data, content_type)
        assert response.status_code == status, response.text
        assert words in response.json()["error"]
    too_many = video.deliver(json={"frames": [_png_base64(Image.new("RGB", (8, 8)))] * (MAX_FRAMES + 1)})
    assert too_many.response.status_code == 413 and "max_video_frames" in too_many.response.json()["error"]
    assert video.worker_pids() == pids, "no worker died"
    assert video.caption(mp4, field="video")["model"] == MODEL


def test_a_batch_of_clips_with_one_truncated_fails_alone(video, clips):
    pids = video.worker_pids()
    payloads = [clips[".mp4"], clips[".webm"], clips[".mp4"][:500], clips[".gif"]] * 2

    def send(data):
        try:
            return video.caption(data, field="video", max_length=12)
        except ServiceError as error:
            return error

    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        together = list(pool.map(send, payloads))
    for index, result in enumerate(together):
        if index % 4 == 2:
            assert isinstance(result, ServiceError) and result.status == 400
        else:
            assert result["tokens"] == send(payloads[index])["tokens"], "batched as captioned alone"
    assert video.worker_pids() == pids


def test_the_image_model_still_serves_beside_it(registered, video):
    jpeg, _ = shape_image_bytes(3)
    assert registered.caption(jpeg)["model"] == "captioner"
    names = {m["modelName"] for m in registered.list_models()["models"]}
    assert {"captioner", MODEL} <= names


def test_the_cli_captions_a_video_file(torchserve, video, clips, tmp_path, capsys):
    path = tmp_path / "clip.mp4"
    path.write_bytes(clips[".mp4"])
    argv = ["--inference-port", torchserve.url("inference").rsplit(":", 1)[1],
            "--management-port", torchserve.url("management").rsplit(":", 1)[1],
            "--key-file", str(torchserve.key_file), "--model", MODEL]
    assert client_main([*argv, "caption", str(path), "--beam-size", "2"]) == 0
    expected = video.caption(clips[".mp4"], field="video", beam_size=2)["caption"]
    assert capsys.readouterr().out.strip() == f"{path}: {expected}"


def test_the_demo_page_captions_an_uploaded_clip_and_shows_its_sampled_frames(torchserve, video, clips,
                                                                              monkeypatch):
    from tests.test_demo_app import open_page

    page = open_page(torchserve, monkeypatch, CAPTION_VIDEO_MODEL=MODEL)
    page.toggle(key="use_video").set_value(True)
    page.run()
    page.file_uploader(key="video_upload").set_value(("clip.webm", clips[".webm"], "video/webm"))
    page.run()
    assert not page.exception and not page.error, (page.exception, [e.value for e in page.error])
    expected = video.caption(clips[".webm"], field="video", beam_size=1, max_length=20)
    assert [h.value for h in page.subheader if h.value != "History"] == [expected["caption"]]
    assert expected["frames_sampled"] == [3, 9, 15, 21]  # 4 of the 24 frames, as sample_frame_indices says
    strips = [image.captions for image in page.image if image.captions and image.captions[0].startswith("frame")]
    assert strips == [[f"frame {i}" for i in expected["frames_sampled"]]]
