"""Safe defaults, each checked against a real TorchServe: tokens, loopback, model sources, weights, sizes.

Most tests use the session's server (started from the project's config.properties,
only the ports changed). Key expiry needs a server whose keys last seconds, so
that one is started here without any model.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import grpc
import psutil
import pytest
import requests
import torch

from client.__main__ import main as cli_main
from client.auth import TokenStore
from client.grpc_client import GrpcCaptionClient
from client.rest import CaptionClient, ServiceError
from handler.caption_handler import CaptionHandler
from model.export_format import ExportError
from ops.archive import build_archive
from ops.request_corpus import MAX_REQUEST_SIZE, scene_images
from ops.server import TorchServe, free_port_overrides, read_properties
from tests.helpers import torchserve_context, write_tiny_export

ROOT = Path(__file__).resolve().parent.parent
JPEG = scene_images(1, seed=77)[0]
REFUSED = (400, 401, 403)  # TorchServe answers a bad token with 400 (InvalidKeyException)


def _keys(server: TorchServe) -> dict:
    return json.loads(server.key_file.read_text())


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class PicklePayload:
    """Unpickling this creates the file `marker`: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tampered_export(directory: Path, marker: Path) -> Path:
    """A valid tiny export whose model.safetensors was replaced by a pickle carrying a payload."""
    export_dir = write_tiny_export(directory, seed=3)
    torch.save({"encoder.fc.weight": PicklePayload(marker)}, export_dir / "model.safetensors")
    return export_dir


# --- defaults in config.properties -------------------------------------------------------------


def test_the_shipped_config_keeps_the_safe_defaults():
    properties = read_properties(ROOT / "config.properties")
    for key in ("inference_address", "management_address", "metrics_address"):
        assert properties[key].startswith("http://127.0.0.1:"), key
    assert properties["grpc_inference_address"] == properties["grpc_management_address"] == "127.0.0.1"
    assert properties.get("disable_token_authorization", "false") == "false"
    assert float(properties["token_expiration_min"]) <= 60
    assert properties["install_py_dep_per_model"] == "false"
    never = re.compile(properties["allowed_urls"], re.IGNORECASE)  # TorchServe matches each URL in full
    for url in ("http://example.com/m.mar", "https://x/m.mar", "file:///srv/model_store/m.mar", "s3://b/m.mar"):
        assert not never.fullmatch(url), url
    assert int(properties["max_request_size"]) == MAX_REQUEST_SIZE


# --- loopback ----------------------------------------------------------------------------------


def test_every_port_of_the_server_listens_on_loopback_only(torchserve, registered):
    java = psutil.Process(torchserve.pid())
    listening = [c.laddr for c in java.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    configured = {int(torchserve.url(api).rsplit(":", 1)[1]) for api in ("inference", "management", "metrics")}
    configured |= {int(torchserve.properties[key]) for key in ("grpc_inference_port", "grpc_management_port")}
    assert configured <= {address.port for address in listening}, "all five endpoints were found"
    not_loopback = [a for a in listening if not _loopback(a.ip)]
    assert not_loopback == [], "nothing listens on another interface (or on all of them)"


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    address = getattr(address, "ipv4_mapped", None) or address  # Java listens on ::ffff:127.0.0.1
    return address.is_loopback


def test_the_metrics_port_takes_no_token_which_is_why_it_stays_on_loopback(torchserve, registered):
    response = requests.get(f"{torchserve.url('metrics')}/metrics", timeout=30)
    assert response.status_code == 200


# --- tokens ------------------------------------------------------------------------------------

ENDPOINTS = [
    ("inference", "POST", "/predictions/captioner"),
    ("inference", "GET", "/ping"),
    ("inference", "GET", "/models"),  # management path on the inference port
    ("management", "GET", "/models"),
    ("management", "GET", "/models/captioner"),
    ("management", "POST", "/models?url=captioner.mar&model_name=intruder&synchronous=true"),
    ("management", "PUT", "/models/captioner?min_worker=3&synchronous=true"),
    ("management", "DELETE", "/models/captioner"),
    ("management", "GET", "/token?type=inference"),  # only the API key may ask for new keys
]


@pytest.mark.parametrize("api, method, path", ENDPOINTS)
def test_calls_without_a_valid_token_are_refused(torchserve, registered, api, method, path):
    workers_before = len(registered.describe()[0]["workers"])
    keys = _keys(torchserve)
    other = "management" if api == "inference" else "inference"
    credentials = {
        "no header": {},
        "empty bearer": {"Authorization": "Bearer "},
        "made-up key": _bearer("AAAAAAAA"),
        "right key, wrong scheme": {"Authorization": f"Basic {keys[api]['key']}"},
        "the other API's key": _bearer(keys[other]["key"]),
        "key with a suffix": _bearer(keys[api]["key"] + "x"),
    }
    if path.startswith("/token"):
        credentials["the management key"] = _bearer(keys["management"]["key"])
    for name, headers in credentials.items():
        response = requests.request(
            method, f"{torchserve.url(api)}{path}", headers={**headers, "Content-Type": "image/jpeg"},
            data=JPEG if method == "POST" else None, timeout=60,
        )
        assert response.status_code in REFUSED, f"{name}: {response.status_code} {response.text[:200]}"
    described = registered.describe()
    assert len(described[0]["workers"]) == workers_before, "nothing was scaled"
    assert [m["modelName"] for m in registered.list_models()["models"]] == ["captioner"], "nothing (un)registered"


def test_grpc_calls_without_a_valid_token_are_refused(torchserve, registered):
    for tokens in (TokenStore(None), _FixedTokens("AAAAAAAA")):
        with GrpcCaptionClient(
            torchserve.grpc_target("grpc_inference"), torchserve.grpc_target("grpc_management"), tokens
        ) as client:
            with pytest.raises(grpc.RpcError):
                client.caption(JPEG)
            with pytest.raises(grpc.RpcError):
                client.describe()


class _FixedTokens(TokenStore):
    """A token store that always sends the same (wrong) key."""

    def __init__(self, key: str) -> None:
        super().__init__(None)
        self.key = key

    def header(self, api: str) -> dict[str, str]:
        return _bearer(self.key)


@pytest.fixture(scope="module")
def short_lived_keys(tmp_path_factory):
    """A model-less TorchServe whose keys expire after 6 seconds."""
    root = tmp_path_factory.mktemp("short-keys")
    (root / "store").mkdir()
    overrides = {**free_port_overrides(), "token_expiration_min": "0.1"}
    server = TorchServe(root / "serve", root / "store", overrides=overrides)
    server.start()
    yield server
    server.stop()


def _wait_until_expired(server: TorchServe, api: str) -> str:
    entry = _keys(server)[api]
    expires = datetime.fromisoformat(entry["expiration time"].replace("Z", "+00:00"))
    time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()) + 1.0)
    return entry["key"]


def test_expired_keys_are_refused_and_the_client_refreshes_before_expiry(short_lived_keys):
    server = short_lived_keys
    expired = _wait_until_expired(server, "inference")
    ping = f"{server.url('inference')}/ping"
    assert requests.get(ping, headers=_bearer(expired), timeout=30).status_code in REFUSED
    tokens = TokenStore(server.key_file, server.url("management"))  # what the client and CLI use
    fresh = tokens.header("inference")
    assert fresh != _bearer(expired), "a new key was fetched with the API key"
    assert requests.get(ping, headers=fresh, timeout=30).status_code == 200
    assert requests.get(ping, headers=_bearer(expired), timeout=30).status_code in REFUSED


def test_the_cli_behind_make_refreshes_an_expired_management_key(short_lived_keys, capsys):
    server = short_lived_keys
    expired = _wait_until_expired(server, "management")
    models = f"{server.url('management')}/models"
    assert requests.get(models, headers=_bearer(expired), timeout=30).status_code in REFUSED
    ports = [server.url(api).rsplit(":", 1)[1] for api in ("inference", "management")]
    code = cli_main(
        ["--inference-port", ports[0], "--management-port", ports[1], "--key-file", str(server.key_file), "models"]
    )
    assert code == 0 and '"models": []' in capsys.readouterr().out
    assert _keys(server)["management"]["key"] != expired


# --- where models may come from ------------------------------------------------------------------


def test_models_from_urls_or_outside_the_store_are_refused(registered, model_store, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "model_store"  # a folder named like the store, somewhere else
    elsewhere.mkdir(parents=True)
    shutil.copy(model_store / "captioner.mar", elsewhere / "evil.mar")  # a working archive: it would load
    climb = os.path.relpath(elsewhere / "evil.mar", model_store)
    urls = [
        "http://127.0.0.1:9/evil.mar",
        "https://127.0.0.1:9/evil.mar",
        f"file://{elsewhere / 'evil.mar'}",
        f"FILE://{elsewhere / 'evil.mar'}",
        f"file://{model_store / 'captioner.mar'}",  # even the store itself: archives are registered by name
        f"file://{model_store}/{climb}",
        climb,
        str(elsewhere / "evil.mar"),
    ]
    accepted = []
    for url in urls:
        try:
            registered.register(url, model_name="evil")
        except ServiceError as error:
            assert 400 <= error.status < 500, (url, error.body)
        else:
            accepted.append(url)
            evil = CaptionClient(registered.inference_url, registered.management_url, registered.tokens, model="evil")
            evil.unregister()
    assert accepted == []
    assert [m["modelName"] for m in registered.list_models()["models"]] == ["captioner"]


def test_registration_never_runs_pip_install(registered, model_store, tmp_path):
    # If TorchServe ran `pip install -r requirements.txt`, this requirement (offline, no index)
    # could not be met and registration would fail with "Custom pip package installation failed".
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("--no-index\nno-such-package-for-the-captioner-tests==0.0.1\n")
    export_dir = write_tiny_export(tmp_path / "export", seed=2)
    build_archive(
        export_dir, model_store, model_name="withdeps", stage_root=tmp_path / "stage", requirements_file=requirements
    )
    withdeps = CaptionClient(registered.inference_url, registered.management_url, registered.tokens, model="withdeps")
    try:
        assert "registered" in str(registered.register("withdeps.mar", model_name="withdeps"))
    finally:
        withdeps.unregister()
        (model_store / "withdeps.mar").unlink()


# --- weights are never unpickled -----------------------------------------------------------------


def test_the_handler_refuses_a_weights_file_carrying_a_pickle(tmp_path):
    marker = tmp_path / "payload-ran"
    export_dir = tampered_export(tmp_path / "export", marker)
    context, _ = torchserve_context(export_dir, 1)
    with pytest.raises(ExportError, match="not a valid safetensors"):
        CaptionHandler().initialize(context)
    assert not marker.exists(), "the payload never ran"


def test_torchserve_refuses_an_archive_whose_weights_carry_a_pickle(registered, model_store, tmp_path):
    marker = tmp_path / "payload-ran"
    export_dir = tampered_export(tmp_path / "export", marker)
    with pytest.raises(ExportError, match="not a valid safetensors"):  # ops.archive refuses to pack it
        build_archive(export_dir, model_store, model_name="tampered", stage_root=tmp_path / "stage")
    assert not (model_store / "tampered.mar").exists() and not marker.exists()
    # An archive packed by other means, as a tampered one would be: the worker refuses it too.
    build_archive(export_dir, model_store, model_name="tampered", stage_root=tmp_path / "stage", check=False)
    tampered = CaptionClient(registered.inference_url, registered.management_url, registered.tokens, model="tampered")
    try:
        with pytest.raises(ServiceError) as error:
            registered.register("tampered.mar", model_name="tampered", initial_workers=1)
        assert error.value.status == 500 and "Failed to start workers" in str(error.value.body)
        assert not marker.exists(), "the worker refused the file without unpickling it"
    finally:
        try:
            tampered.unregister()
        except ServiceError:
            pass
        (model_store / "tampered.mar").unlink()


# --- request size --------------------------------------------------------------------------------


def test_grpc_requests_over_the_size_limit_are_refused(torchserve, registered):
    with GrpcCaptionClient(
        torchserve.grpc_target("grpc_inference"), torchserve.grpc_target("grpc_management"), torchserve.tokens()
    ) as client:
        just_under = JPEG + b"\0" * (MAX_REQUEST_SIZE - len(JPEG) - 64 * 1024)  # trailing bytes after the image
        assert client.caption(just_under)["caption"] == client.caption(JPEG)["caption"]
        with pytest.raises(grpc.RpcError) as error:
            client.caption(JPEG + b"\0" * MAX_REQUEST_SIZE)
        assert error.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED)
