"""The client CLI against a real TorchServe (REST and gRPC), as ops use it for smoke checks."""

import json

import pytest

from client.__main__ import main
from tests.helpers import shape_image_bytes


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
