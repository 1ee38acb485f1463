"""TorchServe's `cpu_launcher_enable` with two workers: each worker pinned to its own core.

TorchServe checks for the launcher by running a bare `python -m torch.backends.xeon.run_cpu`;
`ops.server` puts its own interpreter first on PATH so that check finds torch. Without that the
launcher is silently skipped ("Proceeding without worker core pinning") and the workers share
every core, which this test would see.
"""

import os

import pytest

from bench.inputs import jpeg_set
from bench.served import ServedConfig, ServedModel
from tests.helpers import write_tiny_export

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning two workers needs two cores")


def test_two_workers_are_pinned_to_different_cores(tmp_path):
    export = write_tiny_export(tmp_path / "export", seed=1)
    with ServedModel(export, tmp_path / "served", "cpu") as served:
        description = served.deploy(ServedConfig(workers=2, threads=1, batch_size=4, max_batch_delay_ms=5,
                                                 cpu_launcher=True))
        pids = [int(worker["pid"]) for worker in description[0]["workers"]]
        cores = [os.sched_getaffinity(pid) for pid in pids]
        run = served.measure("rest", jpeg_set(4), concurrency=4, requests=8, warmup=2)
    assert len(pids) == 2 and all(len(c) == 1 for c in cores), cores
    assert cores[0] != cores[1], cores
    assert run.summary()["errors"] == 0
