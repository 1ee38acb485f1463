"""Start, wait for and stop one TorchServe instance, isolated in its own working folder.

    python -m ops.server start --workdir build/serve --model-store build/model_store
    python -m ops.server stop --workdir build/serve

Each instance gets its own working folder (logs/, key_file.json) and temp
folder (TorchServe keeps its PID file under TMPDIR and unpacked models and
worker sockets under TEMP), so several can run side by side, e.g. in tests.
`stop` waits until the Java process has really exited: `torchserve --stop`
returns before it does.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from client.auth import TokenStore
from training.cli import make_folder, user_errors

PORT_KEYS = {
    "inference": ("inference_address", "http://127.0.0.1:{}"),
    "management": ("management_address", "http://127.0.0.1:{}"),
    "metrics": ("metrics_address", "http://127.0.0.1:{}"),
    "grpc_inference": ("grpc_inference_port", "{}"),
    "grpc_management": ("grpc_management_port", "{}"),
}


# Defaults for the workers' environment (the caller's environment wins). TorchServe passes its
# environment on to the worker processes.
WORKER_ENV = {
    # torch's OpenMP threads sleep while they wait instead of spinning. Spinning threads burn the
    # cores that the frontend, the other workers and anything else on the machine need; on the 2-core
    # machine under load, a 2-thread worker used several times the CPU per image (BENCHMARKS.md).
    "OMP_WAIT_POLICY": "PASSIVE",
}


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port_overrides() -> dict[str, str]:
    """Properties putting every endpoint on a free loopback port, for a server beside others (tests, soak, bench)."""
    ports = free_ports(len(PORT_KEYS))
    return {key: template.format(port) for (key, template), port in zip(PORT_KEYS.values(), ports)}


def read_properties(path: Path) -> dict[str, str]:
    properties = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


class AlreadyRunning(RuntimeError):
    """A server already runs from the working folder that `start` was asked to use."""


class TorchServe:
    """One TorchServe process tree.

    Args:
        workdir: its working folder (logs/, key_file.json, tmp/, config.properties).
        model_store: folder of `.mar` files.
        base_config: config.properties to start from; None for none (enough to stop a server or ask if it runs).
        overrides: properties replacing the base ones (e.g. ports for a test server).
        env: environment variables for the server and its workers, on top of `WORKER_ENV`
            and this process's environment; None as a value removes the variable.
    """

    def __init__(
        self,
        workdir: Path | str,
        model_store: Path | str,
        base_config: Path | str | None = Path(__file__).resolve().parent.parent / "config.properties",
        overrides: dict[str, str] | None = None,
        env: dict[str, str | None] | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.model_store = Path(model_store).resolve()
        base = read_properties(Path(base_config)) if base_config is not None else {}
        self.properties = {**base, **(overrides or {})}
        self.tmpdir = self.workdir / "tmp"
        self.extra_env = dict(env or {})

    # --- addresses -------------------------------------------------------------------------

    def url(self, api: str) -> str:
        return self.properties[PORT_KEYS[api][0]]

    def grpc_target(self, api: str) -> str:
        host = self.properties.get(f"{api}_address", "127.0.0.1")
        return f"{host}:{self.properties[PORT_KEYS[api][0]]}"

    @property
    def key_file(self) -> Path | None:
        if self.properties.get("disable_token_authorization", "false").lower() == "true":
            return None
        return self.workdir / "key_file.json"

    def tokens(self) -> TokenStore:
        return TokenStore(self.key_file, self.url("management"))

    # --- process ---------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {**WORKER_ENV, **os.environ}
        for key, value in self.extra_env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        env["TMPDIR"] = env["TEMP"] = str(self.tmpdir)
        # As an activated venv would: TorchServe runs some helpers as a bare `python` (the check
        # behind cpu_launcher_enable runs `python -m torch.backends.xeon.run_cpu`), which must be
        # this interpreter, the one with torch, not whatever `python` comes first on PATH.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        # An inherited PYTHONPATH would come before the archive's own packages in the workers.
        env.pop("PYTHONPATH", None)
        return env

    def _torchserve(self, *args: str) -> subprocess.CompletedProcess:
        """Run the `torchserve` launcher; its output goes to `torchserve.out` in the working folder.

        Not a pipe: the Java server inherits the launcher's stdout, and a pipe
        would stay open for as long as the server runs.
        """
        executable = Path(sys.executable).parent / "torchserve"
        with open(self.workdir / "torchserve.out", "a") as log:
            return subprocess.run(
                [str(executable), *args], cwd=self.workdir, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=60,
            )

    @property
    def pid_file(self) -> Path:
        return self.tmpdir / ".model_server.pid"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def start(self, timeout: float = 90.0) -> "TorchServe":
        """Write the config, start the server, and wait until /ping answers."""
        if self.pid() is not None:
            raise AlreadyRunning(f"TorchServe already runs from {self.workdir} (pid {self.pid()}); stop it first "
                                 f"(`python -m ops.server stop --workdir {self.workdir}`)")
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.properties.items()))
        result = self._torchserve(
            "--start", "--ts-config", str(config), "--model-store", str(self.model_store), "--ncs"
        )
        if result.returncode != 0:
            raise RuntimeError(f"torchserve --start failed; see {self.workdir / 'torchserve.out'}")
        self.wait_until_ready(timeout)
        return self

    def wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | str = "not started"
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise RuntimeError(f"TorchServe exited during start; see {self.workdir / 'logs'}")
            try:
                if self.key_file is not None and not self.key_file.exists():
                    raise FileNotFoundError("key file not written yet")
                response = requests.get(
                    f"{self.url('inference')}/ping", headers=self.tokens().header("inference"), timeout=2
                )
                if response.status_code == 200:
                    return
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
            except (requests.ConnectionError, requests.Timeout, FileNotFoundError, KeyError, ValueError) as error:
                last_error = error
            time.sleep(0.25)
        raise TimeoutError(f"TorchServe did not answer /ping within {timeout:.0f}s: {last_error}")

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the server and wait until its Java process (and workers) are gone."""
        pid = self.pid()
        if pid is None:
            return
        try:
            java = psutil.Process(pid)
            processes = [java, *java.children(recursive=True)]
        except psutil.Error:
            return
        self._torchserve("--stop")
        _, alive = psutil.wait_procs(processes, timeout=timeout)
        for process in alive:  # only processes this server started
            process.kill()
        psutil.wait_procs(alive, timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop TorchServe for the captioner.")
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--workdir", default="build/serve")
    parser.add_argument("--model-store", default="build/model_store")
    parser.add_argument("--config", default="config.properties", help="properties to start from (start only)")
    args = parser.parse_args(argv)
    if args.action == "start":
        return start_server(args.workdir, args.model_store, args.config)
    server = TorchServe(args.workdir, args.model_store, base_config=None)  # stop and status read only the PID file
    pid = server.pid()
    if args.action == "stop":
        server.stop()
        print("TorchServe stopped" if pid else "TorchServe was not running")
        return 0
    print(f"running (pid {pid})" if pid else "not running")
    return 0 if pid else 1


def start_server(workdir: str, model_store: str, config: str) -> int:
    """`ops.server start`: what its user can get wrong is checked before TorchServe is launched."""
    if not Path(config).is_file():
        raise FileNotFoundError(f"no TorchServe config at {config}; pass --config config.properties")
    if not Path(model_store).is_dir():
        raise FileNotFoundError(f"no model store at {model_store}; run `make mar` first, or pass --model-store")
    server = TorchServe(make_folder(workdir), model_store, config)
    try:
        server.start()
    except AlreadyRunning as error:
        raise SystemExit(f"error: {error}") from None
    print(f"TorchServe is up (pid {server.pid()}): inference {server.url('inference')}, "
          f"management {server.url('management')}, metrics {server.url('metrics')}; "
          f"tokens in {server.key_file}")
    return 0


if __name__ == "__main__":
    with user_errors():
        sys.exit(main())
