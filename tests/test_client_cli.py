"""The client CLI against a real TorchServe (REST and gRPC), as ops use it for smoke checks."""

import contextlib
import dataclasses
import io
import json
import os
import threading
import time

import pytest
import yaml
from PIL import Image

from client.__main__ import main
from ops.archive import MODEL_CONFIG, build_archive
from tests.helpers import TINY_VIDEO, shape_image_bytes, write_tiny_export

MAX_REQUEST_SIZE = 10 * 1024 * 1024  # config.properties
WORKERS_MODEL = "cli-workers"  # captioner.mar registered again by the CLI, to scale without touching captioner
VIDEO_MODEL = "cli-video"


def _cli(torchserve, *args):
    inference_port = torchserve.url("inference").rsplit(":", 1)[1]
    management_port = torchserve.url("management").rsplit(":", 1)[1]
    return main(
        [
            "--inference-port", inference_port, "--management-port", management_port,
            "--grpc-port", torchserve.properties["grpc_inference_port"],
            "--grpc-management-port", torchserve.properties["grpc_management_port"],
            "--key-file", str(torchserve.key_file),
            *args,
        ]
    )


def test_cli_captions_files_over_rest_and_grpc(torchserve, registered, tmp_path, capsys):
    paths = []
    for seed in range(3):
        path = tmp_path / f"scene{seed}.jpg"
        path.write_bytes(shape_image_bytes(seed)[0])
        paths.append(str(path))
    assert _cli(torchserve, "caption", *paths) == 0
    rest = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in rest] == paths
    assert _cli(torchserve, "caption", paths[0], "--grpc") == 0
    assert capsys.readouterr().out.strip() == rest[0]
    assert _cli(torchserve, "caption", paths[0], "--grpc", "--stream") == 0
    streamed = capsys.readouterr().out.strip()
    assert streamed.split(": ", 1)[1].strip() == rest[0].split(": ", 1)[1].strip()


def test_cli_captions_every_image_of_a_folder_in_name_order(torchserve, registered, tmp_path, capsys):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for seed, name in enumerate(["b.png", "a.jpg", "c.JPEG"]):
        (folder / name).write_bytes(shape_image_bytes(seed, fmt="PNG" if name.endswith("png") else "JPEG")[0])
    (folder / "notes.txt").write_text("not a picture")
    (folder / "nested").mkdir()
    assert _cli(torchserve, "caption", str(folder)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(folder / n) for n in ("a.jpg", "b.png", "c.JPEG")]
    with pytest.raises(SystemExit, match="folder without image or video files"):
        _cli(torchserve, "caption", str(folder / "nested"))


def test_cli_reports_a_refused_image(torchserve, registered, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert _cli(torchserve, "caption", str(bad)) == 1
    assert "ERROR" in capsys.readouterr().err


def test_cli_describe(torchserve, registered, capsys):
    assert _cli(torchserve, "describe") == 0
    assert '"modelName": "captioner"' in capsys.readouterr().out


def test_cli_passes_sampling_options_over_rest_and_grpc(torchserve, registered, tmp_path, capsys):
    path = tmp_path / "scene.jpg"
    path.write_bytes(shape_image_bytes(4)[0])
    options = ["--do-sample", "--temperature", "1.5", "--top-k", "8", "--num-captions", "2", "--seed", "3", "--json"]
    assert _cli(torchserve, "caption", str(path), *options) == 0
    rest = json.loads(capsys.readouterr().out)
    assert rest["method"] == "sample" and rest["seed"] == 3 and rest["top_k"] == 8
    assert _cli(torchserve, "caption", str(path), "--grpc", *options) == 0
    assert json.loads(capsys.readouterr().out)["captions"] == rest["captions"]
    assert _cli(torchserve, "caption", str(path), "--beam-size", "4", "--beam-groups", "3") == 1
    assert "beam_groups must divide beam_size" in capsys.readouterr().err


def test_cli_asks_for_a_language_and_shows_the_refusal_of_one_the_model_lacks(torchserve, registered, tmp_path,
                                                                             capsys):
    path = tmp_path / "scene.jpg"
    path.write_bytes(shape_image_bytes(5)[0])
    assert _cli(torchserve, "caption", str(path), "--language", "en", "--json") == 0
    assert json.loads(capsys.readouterr().out)["language"] == "en"
    assert _cli(torchserve, "caption", str(path), "--grpc", "--language", "de") == 1
    assert "this model's languages (en), got 'de'" in capsys.readouterr().err


def test_cli_captions_over_kserve_v2_rest_and_grpc_as_over_predictions(torchserve, registered, tmp_path, capsys):
    path = tmp_path / "scene.jpg"
    path.write_bytes(shape_image_bytes(4)[0])
    for options in ([], ["--beam-size", "3", "--num-captions", "2"]):
        assert _cli(torchserve, "caption", str(path), *options) == 0
        plain = capsys.readouterr().out
        assert _cli(torchserve, "caption", str(path), "--v2", *options) == 0
        assert capsys.readouterr().out == plain
        assert _cli(torchserve, "caption", str(path), "--v2", "--grpc", *options) == 0
        assert capsys.readouterr().out == plain
    assert _cli(torchserve, "caption", str(path), "--v2", "--json", "--do-sample", "--seed", "5") == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["method"] == "sample" and reply["seed"] == 5 and reply["language"] == "en"
    assert reply["caption"] == registered.caption(path.read_bytes(), do_sample=True, seed=5)["caption"]
    with pytest.raises(SystemExit, match="no streaming over v2"):
        _cli(torchserve, "caption", str(path), "--v2", "--stream")


def test_cli_without_a_server_or_with_a_wrong_key_file_says_so_in_one_line(tmp_path, capsys):
    """No server on the ports, a key file that is missing, a folder or not JSON: `error:` and exit 1."""
    from ops.server import free_ports

    image = tmp_path / "scene.jpg"
    image.write_bytes(shape_image_bytes(0)[0])
    keys = tmp_path / "key_file.json"
    keys.write_text(json.dumps({"management": {"key": "m"}, "inference": {"key": "i"}}))
    rest, management, grpc_port, grpc_management = (str(port) for port in free_ports(4))
    ports = ["--inference-port", rest, "--management-port", management, "--grpc-port", grpc_port,
             "--grpc-management-port", grpc_management, "--retries", "0"]
    cases = [
        (["--key-file", str(keys), "describe"], "is the server running?"),
        (["--key-file", str(keys), "caption", str(image), "--stream"], "is the server running?"),
        (["--key-file", str(keys), "caption", str(image), "--grpc"], "gRPC UNAVAILABLE"),
        (["--key-file", str(tmp_path / "none.json"), "describe"], "no TorchServe key file at"),
        (["--key-file", str(tmp_path), "describe"], "is not a TorchServe key file"),
        (["--key-file", str(image), "describe"], "is not a TorchServe key file"),
    ]
    for args, words in cases:
        assert main([*ports, *args]) == 1, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and "Traceback" not in err, (args, err)


def _images(tmp_path, *names):
    """Small scenes under these names (PNG for .png), as str paths."""
    paths = []
    for seed, name in enumerate(names):
        path = tmp_path / name
        path.write_bytes(shape_image_bytes(seed, fmt="PNG" if name.endswith(".png") else "JPEG")[0])
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def cli_workers(torchserve, registered):
    """`captioner.mar` registered as WORKERS_MODEL by `client register --workers 1`, with what the CLI printed.

    The archive's model-config.yaml asks minWorkers 2, which TorchServe 0.12 applies over initial_workers.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _cli(torchserve, "--model", WORKERS_MODEL, "register", "captioner.mar", "--workers", "1")
    client = dataclasses.replace(registered, model=WORKERS_MODEL)
    yield client, code, out.getvalue(), err.getvalue()
    client.unregister()


def _bounds(client) -> tuple[int, int, int]:
    (model,) = client.describe()
    return model["minWorkers"], model["maxWorkers"], len(model["workers"])


def test_cli_register_runs_the_workers_asked_for_not_the_archives_min_workers(cli_workers):
    client, code, out, err = cli_workers
    assert code == 0, err
    assert "registered with 2 initial workers" in json.loads(out)["status"], "the archive's minWorkers won"
    assert f"{WORKERS_MODEL} 1.0 is now scaled to 1" in err
    assert _bounds(client) == (1, 1, 1)


def test_cli_and_clients_refuse_worker_counts_torchserve_would_break_on(torchserve, cli_workers, grpc_client,
                                                                       tmp_path, capsys):
    client = cli_workers[0]
    with pytest.raises(SystemExit) as stop:
        _cli(torchserve, "--model", WORKERS_MODEL, "scale", "-1")
    assert stop.value.code == 2
    assert "argument min_workers: must be 0 or more, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli(torchserve, "--model", WORKERS_MODEL, "scale", "1", "--max-workers", "-2")
    assert "argument --max-workers: must be 0 or more, got -2" in capsys.readouterr().err
    assert _cli(torchserve, "--model", WORKERS_MODEL, "scale", "1", "--max-workers", "0") == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "error: max_workers (0) must be at least min_workers (1); leave it out for max = min\n"
    for scale in (client.scale, grpc_client.scale):
        with pytest.raises(ValueError, match="min_workers must be 0 or more, got -1"):
            scale(-1)
        with pytest.raises(ValueError, match=r"max_workers \(1\) must be at least min_workers \(2\)"):
            scale(2, 1)
    assert _bounds(client) == (1, 1, 1), "nothing was sent"
    (path,) = _images(tmp_path, "scene.jpg")
    assert _cli(torchserve, "--model", WORKERS_MODEL, "caption", path) == 0


def _noise_png(path, size_bytes: int) -> str:
    """An uncompressed PNG of random pixels about `size_bytes` long (noise: no format squeezes it)."""
    side = int((size_bytes / 3) ** 0.5)
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(path, format="PNG", compress_level=0)
    return str(path)


def test_an_option_does_not_make_a_file_that_fits_too_large(torchserve, registered, tmp_path, capsys):
    """A file under max_request_size whose base64 is over it is captioned with options too (multipart, not JSON)."""
    path = _noise_png(tmp_path / "large.png", int(MAX_REQUEST_SIZE * 0.85))
    assert os.path.getsize(path) < MAX_REQUEST_SIZE < os.path.getsize(path) * 4 / 3
    assert _cli(torchserve, "caption", path, "--json") == 0
    plain = json.loads(capsys.readouterr().out)
    assert _cli(torchserve, "caption", path, "--max-length", "3", "--json") == 0
    short = json.loads(capsys.readouterr().out)
    assert short["max_length"] == 3 and short["tokens"] == plain["tokens"][:3]
    assert _cli(torchserve, "caption", path, "--stream", "--max-length", "3") == 0
    assert capsys.readouterr().out.split(": ", 1)[1].split() == short["tokens"]


def test_a_file_over_max_request_size_fails_alone_and_names_the_limit(torchserve, registered, tmp_path, capsys):
    first, last = _images(tmp_path, "first.jpg", "last.png")
    too_large = tmp_path / "too_large.png"
    too_large.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(MAX_REQUEST_SIZE + 1024 * 1024))
    for options, limit in [([], "HTTP 413: the request is over the server's max_request_size (config.properties)"),
                           (["--beam-size", "1"], "HTTP 413: the request is over the server's max_request_size"),
                           (["--grpc"], "gRPC CANCELLED"), (["--grpc", "--stream"], "gRPC CANCELLED")]:
        assert _cli(torchserve, "caption", first, str(too_large), last, *options) == 1, options
        out, err = capsys.readouterr()
        assert [line.split(":")[0] for line in out.splitlines()] == [first, last], (options, out)
        (error,) = [line for line in err.splitlines() if "ERROR" in line]
        assert error.startswith(f"{too_large}: ERROR {limit}"), (options, err)
        if "--grpc" in options:
            assert "the file is 11.0 MiB" in error and "max_request_size" in error and "likely cause" in error


@pytest.mark.parametrize("transport", [[], ["--grpc"]], ids=["rest", "grpc"])
def test_cli_stream_reports_a_bad_or_missing_file_and_goes_on(torchserve, registered, tmp_path, capsys, transport):
    first, last = _images(tmp_path, "first.jpeg", "last.png")
    fake, missing = tmp_path / "fake.jpg", tmp_path / "missing.png"
    fake.write_bytes(b"this is not an image")
    assert _cli(torchserve, "caption", first, str(fake), str(missing), last, *transport) == 1
    captioned = capsys.readouterr()
    assert _cli(torchserve, "caption", first, str(fake), str(missing), last, "--stream", *transport) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert [line.split(": ")[0] for line in out.splitlines()] == [first, last]
    assert [line.split()[:2] for line in out.splitlines()] == [line.split()[:2] for line in captioned.out.splitlines()]
    assert err.splitlines() == captioned.err.splitlines() == [
        (f"{fake}: ERROR HTTP 415: body is not an image this service reads (20 bytes starting b'this is '): "
         "unknown or corrupt header; send JPEG, PNG, GIF, BMP, TIFF or WebP bytes"),
        f"{missing}: ERROR cannot read it: No such file or directory",
    ]


@pytest.mark.parametrize("transport", [[], ["--grpc"]], ids=["rest", "grpc"])
def test_a_stream_refused_while_the_model_has_no_worker_is_sent_again(torchserve, cli_workers, tmp_path, capsys,
                                                                     transport):
    client = cli_workers[0]
    (path,) = _images(tmp_path, "scene.jpg")
    client.scale(0)
    later = threading.Timer(2.0, client.scale, args=(1,))
    later.start()
    try:
        assert _cli(torchserve, "--model", WORKERS_MODEL, "caption", path, "--stream", *transport) == 0
    finally:
        later.join()
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: ") and "ERROR" not in err
    assert _bounds(client) == (1, 1, 1)


@pytest.mark.parametrize("mode", [[], ["--stream"], ["--grpc"], ["--grpc", "--stream"]],
                         ids=["rest", "rest-stream", "grpc", "grpc-stream"])
def test_cli_json_gives_one_object_per_file_failures_included(torchserve, registered, tmp_path, capsys, mode):
    first, last = _images(tmp_path, "first.jpg", "last.jpg")
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"this is not an image")
    assert _cli(torchserve, "caption", first, str(fake), last, "--max-length", "4", "--json", *mode) == 1
    replies = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [reply["file"] for reply in replies] == [first, str(fake), last]
    assert replies[0]["max_length"] == replies[2]["max_length"] == 4 and "error" not in replies[0]
    assert replies[1]["status"] == 415 and replies[1]["error"].startswith("HTTP 415: body is not an image")


@pytest.mark.parametrize("mode", [[], ["--stream"], ["--grpc"], ["--grpc", "--stream"]],
                         ids=["rest", "rest-stream", "grpc", "grpc-stream"])
def test_cli_without_a_server_stops_after_the_first_file_in_one_line(tmp_path, capsys, mode):
    """Each file would wait out the same retries: the first that finds no server ends the run."""
    from ops.server import free_ports

    paths = _images(tmp_path, *(f"scene{i}.jpg" for i in range(4)))
    rest, management, grpc_port, grpc_management = (str(port) for port in free_ports(4))
    give_up_after = 1.5
    started = time.monotonic()
    code = main(["--inference-port", rest, "--management-port", management, "--grpc-port", grpc_port,
                 "--grpc-management-port", grpc_management, "--key-file", "", "--give-up-after", str(give_up_after),
                 "caption", "--concurrency", "1", *paths, *mode])
    seconds = time.monotonic() - started
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("error:") or "ERROR" in line]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "is the server running?" in errors[0], err
    assert seconds < 2 * give_up_after + 1, f"{seconds:.1f} s: the files after the first waited too"


@pytest.fixture(scope="module")
def cli_video(model_store, registered, tmp_path_factory):
    """A tiny video model registered beside captioner (one worker, small clips)."""
    root = tmp_path_factory.mktemp("cli-video")
    export = write_tiny_export(root / "export", seed=2, **TINY_VIDEO)
    settings = yaml.safe_load(MODEL_CONFIG.read_text())
    settings.update(minWorkers=1, maxWorkers=1)
    config_file = root / "model-config.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    build_archive(export, model_store, model_name=VIDEO_MODEL, config_file=config_file, stage_root=root / "stage")
    registered.register(f"{VIDEO_MODEL}.mar", initial_workers=1)
    client = dataclasses.replace(registered, model=VIDEO_MODEL)
    yield client
    client.unregister()


def test_cli_captions_an_animated_gif_with_options_on_the_video_model(torchserve, cli_video, tmp_path, capsys):
    frames = [Image.new("RGB", (32, 32), (40 * i, 200 - 30 * i, 90)) for i in range(6)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    clip = cli_video.caption(path.read_bytes(), max_length=3)
    for mode in ([], ["--stream"], ["--v2"]):
        assert _cli(torchserve, "--model", VIDEO_MODEL, "caption", str(path), "--max-length", "3", "--json",
                    *mode) == 0, capsys.readouterr().err
        reply = json.loads(capsys.readouterr().out)
        assert (reply["model"], reply["max_length"], reply["tokens"]) == (VIDEO_MODEL, 3, clip["tokens"]), mode
