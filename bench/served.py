"""The model served end to end: an isolated TorchServe on free loopback ports, called over REST and gRPC.

The model is packed once as an unzipped archive folder (quick to write, and
TorchServe registers it without unpacking). Each server configuration (workers,
torch threads per worker, batch size, max batch delay) is its `model-config.yaml`,
rewritten in that folder before the model is registered again, so trying a
configuration costs a registration, not a new archive.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from bench.load import Caller, closed_loop
from bench.stats import Run
from client.rest import CaptionClient
from ops.archive import MODEL_CONFIG, build_archive
from ops.server import TorchServe, free_port_overrides

MODEL_NAME = "captioner"
ARCHIVE_FOLDER = "captioner-bench"


@dataclass(frozen=True)
class ServedConfig:
    """How TorchServe runs the model: `workers` processes of `threads` torch threads each."""

    workers: int
    threads: int
    batch_size: int
    max_batch_delay_ms: int
    omp_wait_policy: str = "PASSIVE"  # or "default": libgomp's own (spin, then sleep)
    precision: str = "auto"  # the handler's `precision` setting (model/precision.py)
    compile: bool = False  # the handler's `compile` setting
    cpu_launcher: bool = False  # TorchServe's cpu_launcher_enable: each worker pinned to its own cores

    @property
    def label(self) -> str:
        policy = "" if self.omp_wait_policy == "PASSIVE" else f", OMP wait policy {self.omp_wait_policy}"
        precision = "" if self.precision == "auto" else f", precision {self.precision}"
        compiled = ", compiled encoder" if self.compile else ""
        pinned = ", cpu_launcher core pinning" if self.cpu_launcher else ""
        return f"{self.workers} worker(s) x {self.threads} thread(s), batch {self.batch_size}, " \
               f"delay {self.max_batch_delay_ms} ms{policy}{precision}{compiled}{pinned}"

    @property
    def server_properties(self) -> dict[str, str]:
        """config.properties entries this configuration needs (they apply to the whole server)."""
        if not self.cpu_launcher:
            return {}
        # torch.backends.xeon.run_cpu wraps each worker; with several workers TorchServe gives each
        # its own cores (--ninstances/--rank). numactl is not assumed to be installed.
        return {"cpu_launcher_enable": "true", "cpu_launcher_args": "--use_logical_core --disable_numactl"}

    @property
    def server_env(self) -> dict[str, str | None]:
        return {"OMP_WAIT_POLICY": None if self.omp_wait_policy == "default" else self.omp_wait_policy}

    def model_config(self, base: dict[str, Any]) -> dict[str, Any]:
        """`base` (the packed model-config.yaml) with this configuration's settings."""
        config = copy.deepcopy(base)
        config.update(
            minWorkers=self.workers, maxWorkers=self.workers,
            batchSize=self.batch_size, maxBatchDelay=self.max_batch_delay_ms,
        )
        captioner = config.setdefault("captioner", {})
        captioner.update(torch_threads=self.threads, precision=self.precision, compile=self.compile)
        return config

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)


class ServedModel:
    """TorchServe serving the exported model; use as a context manager (the server is stopped on exit).

    Args:
        export_dir: the exported model.
        work_dir: folder for the archive, the server's working folder and its logs.
        device: "cpu" hides GPUs from TorchServe; "cuda" lets it give each worker a GPU.
    """

    def __init__(self, export_dir: Path | str, work_dir: Path | str, device: str = "cpu") -> None:
        self.work_dir = Path(work_dir)
        store = self.work_dir / "model_store"
        self.archive = build_archive(
            export_dir, store, model_name=ARCHIVE_FOLDER, archive_format="no-archive",
            stage_root=self.work_dir / "stage",
        )
        self.base_model_config = yaml.safe_load(MODEL_CONFIG.read_text())
        self.store = store
        self.overrides = free_port_overrides()
        if torch.device(device).type == "cpu":
            self.overrides["number_of_gpu"] = "0"
        self.server: TorchServe | None = None
        self.server_properties: dict[str, str] = {}
        self.config: ServedConfig | None = None
        self.description: list[dict] = []
        self._grpc = None

    def __enter__(self) -> "ServedModel":
        return self

    def __exit__(self, *exc) -> None:
        self._stop()

    def _start(self, env: dict[str, str | None]) -> None:
        overrides = {**self.overrides, **self.server_properties}
        self.server = TorchServe(self.work_dir / "serve", self.store, overrides=overrides, env=env)
        self.server.start()
        self.client = self._rest_client()

    def _stop(self) -> None:
        if self._grpc is not None:
            self._grpc.close()
            self._grpc = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.config = None

    def _rest_client(self) -> CaptionClient:
        # No retries: a failed request must show up as an error, not as a slow success.
        return CaptionClient(
            self.server.url("inference"), self.server.url("management"), self.server.tokens(), model=MODEL_NAME,
            retries=0, timeout=300,
        )

    def deploy(self, config: ServedConfig) -> list[dict]:
        """(Re)register the model with `config`; returns TorchServe's description of it.

        The workers' environment is the server's, so a different one restarts the server.
        """
        if self.server is not None and (self.server.extra_env != config.server_env
                                        or self.server_properties != config.server_properties):
            self._stop()
        if self.server is None:
            self.server_properties = config.server_properties
            self._start(config.server_env)
        if self.config is not None:
            self.client.unregister()
            self.config = None
        (self.archive / "model-config.yaml").write_text(yaml.safe_dump(config.model_config(self.base_model_config)))
        try:
            self.client.register(
                ARCHIVE_FOLDER, model_name=MODEL_NAME, batch_size=config.batch_size,
                max_batch_delay=config.max_batch_delay_ms,
            )
        except Exception:
            # A configuration whose workers cannot start must not leave a half-registered model behind.
            with contextlib.suppress(Exception):
                self.client.unregister()
            raise
        self.config = config
        self.description = self._wait_until_ready(config)
        return self.description

    def warm_up(self, payloads: Sequence[bytes]) -> None:
        """Give every worker batches of every size before measuring.

        A worker's first batch of a given size is slow (allocations, oneDNN kernels chosen
        for that shape), and which worker takes a request is TorchServe's choice, so the
        load rises step by step up to every worker holding a full batch.
        """
        config = self.config
        concurrency = 1
        while True:
            closed_loop(self.rest_caller, payloads, concurrency=concurrency, requests=max(4, 2 * concurrency))
            if concurrency >= config.workers * config.batch_size:
                break
            concurrency = min(2 * concurrency, config.workers * config.batch_size)

    def _wait_until_ready(self, config: ServedConfig, timeout: float = 300.0) -> list[dict]:
        """A synchronous registration can return while the last worker is still settling."""
        deadline = time.monotonic() + timeout
        while True:
            description = self.client.describe()
            model = description[0]
            ready = [w for w in model["workers"] if w.get("status") == "READY"]
            if len(ready) == config.workers and model["batchSize"] == config.batch_size:
                return description
            if time.monotonic() > deadline:
                raise RuntimeError(f"TorchServe did not take {config.label}: {model}")
            time.sleep(0.5)

    def rest_caller(self) -> Caller:
        return self._rest_client().caption

    def grpc_caller(self) -> Caller:
        """gRPC channels are thread-safe: every client thread shares one."""
        if self._grpc is None:
            from client.grpc_client import GrpcCaptionClient

            self._grpc = GrpcCaptionClient(
                self.server.grpc_target("grpc_inference"), self.server.grpc_target("grpc_management"),
                self.server.tokens(), model=MODEL_NAME, timeout=300,
            )
        return self._grpc.caption

    def measure(self, protocol: str, payloads: Sequence[bytes], *, concurrency: int, requests: int,
                warmup: int) -> Run:
        make_caller = {"rest": self.rest_caller, "grpc": self.grpc_caller}[protocol]
        return closed_loop(
            make_caller, payloads, concurrency=concurrency, requests=requests, warmup=warmup,
            server_pid=self.server.pid(),
        )
