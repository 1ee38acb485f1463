"""Generate and import TorchServe's gRPC stubs.

The torchserve wheel ships no `.proto` files on disk, but its frontend jar
(`ts/frontend/model-server.jar`) does. `python -m client.grpc_stubs` extracts
them and runs grpc_tools' protoc into `build/grpc/` (generated code is never
committed); `import_stubs()` puts that folder on the import path.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import zipfile
from pathlib import Path
from types import ModuleType

DEFAULT_STUB_DIR = Path(__file__).resolve().parent.parent / "build" / "grpc"
# TorchServe's own services, and the Open Inference Protocol's (ModelInfer, served on the
# inference port when `ts_open_inference_protocol=true`).
PROTOS = ("proto/inference.proto", "proto/management.proto", "google/rpc/status.proto",
          "proto/open_inference_grpc.proto")


def model_server_jar() -> Path:
    import ts

    jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    if not jar.is_file():
        raise FileNotFoundError(f"TorchServe's frontend jar is missing ({jar}); reinstall torchserve")
    return jar


def generate(out_dir: Path = DEFAULT_STUB_DIR) -> Path:
    """Extract the protos from the jar and compile them into `out_dir`."""
    from grpc_tools import protoc

    out_dir = Path(out_dir)
    source = out_dir / "proto_src"
    with zipfile.ZipFile(model_server_jar()) as jar:
        for name in PROTOS:
            target = source / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(jar.read(name))
    well_known = Path(protoc.__file__).parent / "_proto"
    command = [
        "protoc", f"-I{source / 'proto'}", f"-I{source}", f"-I{well_known}",
        f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
        *(str(source / name) for name in PROTOS),
    ]
    if protoc.main(command) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(command)}")
    return out_dir


def import_stubs(stub_dir: Path | str | None = None) -> tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    """(inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc)."""
    names = ("inference_pb2", "inference_pb2_grpc", "management_pb2", "management_pb2_grpc")
    return _import(names, stub_dir)  # type: ignore[return-value]


def import_open_inference_stubs(stub_dir: Path | str | None = None) -> tuple[ModuleType, ModuleType]:
    """(open_inference_grpc_pb2, open_inference_grpc_pb2_grpc): the OIP gRPC service's messages and stub."""
    return _import(("open_inference_grpc_pb2", "open_inference_grpc_pb2_grpc"), stub_dir)  # type: ignore[return-value]


def _import(names: tuple[str, ...], stub_dir: Path | str | None) -> tuple[ModuleType, ...]:
    stub_dir = Path(stub_dir or os.environ.get("CAPTION_GRPC_STUBS", DEFAULT_STUB_DIR))
    if not all((stub_dir / f"{name}.py").is_file() for name in names):
        raise ImportError(f"no gRPC stubs ({', '.join(names)}) in {stub_dir}; run `make install` "
                          "(or python -m client.grpc_stubs)")
    if str(stub_dir) not in sys.path:
        sys.path.insert(0, str(stub_dir))  # generated modules import each other by bare name
    return tuple(importlib.import_module(name) for name in names)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_STUB_DIR))
    print(f"gRPC stubs written to {generate(Path(parser.parse_args().out))}")
