"""Two versions of `captioner` side by side on a real TorchServe: route, switch the default, roll back.

Version 2.0 is another tiny model (another seed) packed with `--version 2.0` and
copied into the session's model store under its own file name, as an operator
would do. The handler reports the version of the archive it was loaded from, and
the two models give different scores for the same image, so each reply shows
which version answered.
"""

from __future__ import annotations

import shutil

import pytest

from client.rest import CaptionClient, ServiceError
from ops.archive import build_archive
from tests.helpers import shape_image_bytes, write_tiny_export

JPEG, _ = shape_image_bytes(5)
V2_ARCHIVE = "captioner-2.0.mar"


def versioned(client: CaptionClient, version: str | None) -> CaptionClient:
    """The same server and tokens, calling `/predictions/captioner[/<version>]`."""
    return CaptionClient(client.inference_url, client.management_url, client.tokens, version=version)


def default_version(client: CaptionClient) -> str:
    """What the management API describes for the bare model name: the default version."""
    return client.describe()[0]["modelVersion"]


@pytest.fixture(scope="module")
def two_versions(registered, model_store, tmp_path_factory):
    """Register version 2.0 beside the session's 1.0; afterwards 1.0 is the default again and 2.0 is gone."""
    root = tmp_path_factory.mktemp("v2")
    export = write_tiny_export(root / "export", seed=2)
    archive = build_archive(export, root / "out", model_name="captioner", version="2.0", stage_root=root / "stage")
    shutil.copy2(archive, model_store / V2_ARCHIVE)
    reply = registered.register(V2_ARCHIVE, initial_workers=1)
    assert "registered" in str(reply)
    try:
        yield registered
    finally:
        registered.set_default("1.0")
        registered.unregister("2.0")


def test_both_versions_are_registered_and_1_0_stays_the_default(two_versions):
    described = {d["modelVersion"] for d in two_versions.describe("all")}
    assert described == {"1.0", "2.0"}
    assert default_version(two_versions) == "1.0", "registering a new version does not change the default"
    assert versioned(two_versions, None).caption(JPEG)["version"] == "1.0"


def test_each_version_is_reachable_by_its_path(two_versions):
    first = versioned(two_versions, "1.0").caption(JPEG)
    second = versioned(two_versions, "2.0").caption(JPEG)
    assert (first["version"], second["version"]) == ("1.0", "2.0")
    assert first["scores"] != second["scores"], "two different models answered"


def test_switch_the_default_then_roll_back(two_versions):
    bare = versioned(two_versions, None)
    v2_scores = versioned(two_versions, "2.0").caption(JPEG)["scores"]
    v1_scores = versioned(two_versions, "1.0").caption(JPEG)["scores"]

    two_versions.set_default("2.0")
    assert default_version(two_versions) == "2.0"
    switched = bare.caption(JPEG)
    assert switched["version"] == "2.0" and switched["scores"] == v2_scores

    two_versions.set_default("1.0")  # roll back
    assert default_version(two_versions) == "1.0"
    rolled_back = bare.caption(JPEG)
    assert rolled_back["version"] == "1.0" and rolled_back["scores"] == v1_scores
    assert versioned(two_versions, "2.0").caption(JPEG)["version"] == "2.0", "2.0 stays reachable by its path"


def test_an_unknown_version_is_refused(two_versions):
    with pytest.raises(ServiceError) as error:
        two_versions.set_default("9.9")
    assert error.value.status == 404, error.value.body
    with pytest.raises(ServiceError) as error:
        versioned(two_versions, "9.9").caption(JPEG)
    assert error.value.status == 404, error.value.body
