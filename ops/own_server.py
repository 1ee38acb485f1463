"""A TorchServe of its own for one run (soak, overload, drill): the export packed, free loopback ports, a temp folder.

    with own_server("build/export", versions=("1.0", "2.0")) as (server, client):
        client.register("captioner.mar")          # version 1.0
        client.register("captioner-2.0.mar")      # the same export packed as version 2.0

The server is stopped, and its folder removed, however the run ends.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from client.rest import CaptionClient
from ops.archive import build_archive
from ops.server import TorchServe, free_port_overrides

MODEL_NAME = "captioner"


def archive_name(version: str, first: str = "1.0") -> str:
    """`captioner.mar` for the first version, `captioner-<version>.mar` for the others (README "Versions")."""
    return f"{MODEL_NAME}.mar" if version == first else f"{MODEL_NAME}-{version}.mar"


def check_export(export_dir: Path | str) -> None:
    """Raise FileNotFoundError, saying what to do, when `export_dir` holds no exported model."""
    if not (Path(export_dir) / "model.safetensors").exists():
        raise FileNotFoundError(f"no exported model in {export_dir}; run `make model` first, or pass --export-dir")


@contextmanager
def own_server(
    export_dir: Path | str,
    *,
    versions: tuple[str, ...] = ("1.0",),
    overrides: dict[str, str] | None = None,
    prefix: str = "captioner-run-",
    timeout: float = 180.0,
) -> Iterator[tuple[TorchServe, CaptionClient]]:
    """Yield a started server whose store holds the export packed once per version, and a client for it."""
    export_dir = Path(export_dir)
    check_export(export_dir)
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        root = Path(folder)
        store = root / "model_store"
        for version in versions:
            built = build_archive(export_dir, root / f"out-{version}", model_name=MODEL_NAME, version=version,
                                  stage_root=root / "stage")
            store.mkdir(exist_ok=True)
            shutil.move(str(built), store / archive_name(version, versions[0]))
        server = TorchServe(root / "serve", store, overrides={**free_port_overrides(), **(overrides or {})})
        server.start()
        try:
            client = CaptionClient(server.url("inference"), server.url("management"), server.tokens(),
                                   model=MODEL_NAME, timeout=timeout)
            yield server, client
        finally:
            server.stop()
