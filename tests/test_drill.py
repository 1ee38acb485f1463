"""The drill (`ops.drill`) in short: scale 2 -> 4 -> 1, add 2.0, switch, roll back, remove it, under load.

Its own TorchServe serves a tiny random model packed as 1.0 and as 2.0; a closed
loop of valid images runs throughout, and none of them may fail (the client's
retries cover what the server refuses while workers come and go).
"""

from __future__ import annotations

import json

import pytest

from ops.drill import NEW_VERSION, run_drill
from ops.own_server import archive_name, own_server
from ops.request_corpus import scene_images
from tests.helpers import write_tiny_export

PHASES = [
    "1.0 on 2 workers", "scaling 2 -> 4", "1.0 on 4 workers", "scaling 4 -> 1", "1.0 on 1 worker",
    "registering 2.0", "2.0 registered, 1.0 default", "setting 2.0 default", "2.0 default",
    "rolling back", "rolled back to 1.0", "unregistering 2.0", "1.0 alone",
]
STEADY = ["1.0 on 2 workers", "1.0 on 4 workers", "1.0 on 1 worker", "2.0 registered, 1.0 default", "2.0 default",
          "rolled back to 1.0", "1.0 alone"]


@pytest.fixture(scope="module")
def drill(tmp_path_factory):
    export = write_tiny_export(tmp_path_factory.mktemp("drill") / "export", seed=3)
    with own_server(export, versions=("1.0", NEW_VERSION), prefix="drill-test-") as (_, client):
        client.register(archive_name("1.0"))
        report = run_drill(client, new_archive=archive_name(NEW_VERSION), concurrency=4, dwell_requests=8,
                           images=scene_images(4, seed=800))
        described = {d["modelVersion"]: d for d in client.describe("all")}
    print(json.dumps(report.figures()))
    return report, described


def test_no_valid_request_failed_in_any_phase(drill):
    report, _ = drill
    assert report.failures() == []
    phases = report.phases()
    assert list(phases) == [name for name in PHASES if name in phases], "phases in the drill's order"
    # An operation that returns at once (set-default, a scale-down) may see no request start during it.
    assert set(STEADY) <= set(phases)
    for name, phase in phases.items():
        assert phase["failed"] == 0 and phase["lost"] == 0, (name, phase)
    assert all(phases[name]["requests"] >= 8 for name in STEADY)
    assert report.figures()["retried"] == sum(phase["retried"] for phase in phases.values())
    scales = [(step["expected_workers"], step["workers"]) for step in report.steps if "workers" in step]
    assert scales == [(4, 4), (1, 1)], "each scale left the workers it asked for, read back with describe"


def test_the_default_switched_to_2_0_and_back(drill):
    report, described = drill
    phases = report.phases()
    assert phases["2.0 default"]["versions"].get(NEW_VERSION, 0) > 0, "the bare name reached 2.0 while it was default"
    assert set(phases["1.0 alone"]["versions"]) == {"1.0"}
    assert set(phases["1.0 on 4 workers"]["versions"]) == {"1.0"}
    assert set(described) == {"1.0"}, "2.0 was unregistered"
    assert len(described["1.0"]["workers"]) == 1, "the scale to 1 worker held"
