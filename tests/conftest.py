"""Shared fixtures: a real TorchServe started once per test session, in its own folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.grpc_client import GrpcCaptionClient
from client.rest import CaptionClient
from ops.archive import build_archive
from ops.server import TorchServe, free_port_overrides
from tests.helpers import write_domain_export


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """A model store holding `captioner.mar`, a tiny random model packed like `make mar` does.

    Its export has domain statistics, fitted on a small generated shapes set, so replies carry a domain score.
    """
    root = tmp_path_factory.mktemp("store")
    export, _ = write_domain_export(root / "export", seed=1)
    build_archive(export, root / "model_store", model_name="captioner", version="1.0", stage_root=root / "stage")
    return root / "model_store"


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory, model_store):
    """TorchServe with the project's config.properties (tokens on), on free loopback ports."""
    server = TorchServe(tmp_path_factory.mktemp("serve"), model_store, overrides=free_port_overrides())
    server.start()
    yield server
    server.stop()
    assert server.pid() is None


@pytest.fixture(scope="session")
def client(torchserve) -> CaptionClient:
    return CaptionClient(torchserve.url("inference"), torchserve.url("management"), torchserve.tokens())


@pytest.fixture(scope="session")
def registered(client) -> CaptionClient:
    """`captioner` registered through the management API with the management token."""
    reply = client.register("captioner.mar", initial_workers=1)
    assert "registered" in str(reply)
    return client


@pytest.fixture(scope="session")
def grpc_client(torchserve, registered):
    """A gRPC client of the session server, with `captioner` registered."""
    with GrpcCaptionClient(
        torchserve.grpc_target("grpc_inference"), torchserve.grpc_target("grpc_management"), torchserve.tokens()
    ) as client:
        yield client
