"""Command line for the captioning service.

    python -m client caption photo.jpg other.png          # REST, concurrent
    python -m client caption photo.jpg --grpc --stream    # gRPC, word by word
    python -m client caption photo.jpg --do-sample --top-p 0.9 --num-captions 3 --seed 1
    python -m client --model captioner-video caption clip.mp4 clip.webm   # the video model
    python -m client --model captioner-video caption anim.gif --video --beam-size 3
    python -m client describe | scale 2 | register captioner.mar | unregister | set-default 2.0

A request the server refuses for overload or for want of a worker (REST 503, gRPC
INTERNAL "no worker") or fails while restarting a worker is sent again with
exponential backoff (following Retry-After when given), up to --retries retries or
--give-up-after seconds, over REST and gRPC; then the error says what was tried.

Every reply says how much the image looks like the model's training images
(`domain_score`, `in_domain`); an image the service flags as out of domain gets
a warning line on stderr under its caption.

A file the service refuses, one that cannot be read, or one whose request fails
on its own gets an `ERROR` line and the others are still captioned, streamed or
not (exit status 1). A server that cannot be reached at all ends the run in one
`error:` line, once the first file has spent its retries: the others would only
wait out the same retries. With --json each file is one JSON line on stdout,
with "file", and "error" (and "status") when it failed.

Tokens are read from the server's key file (default build/serve/key_file.json,
override with --key-file or CAPTION_KEY_FILE).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import requests

from client.auth import KeyFileError, TokenStore, key_file_from_env
from client.domain import out_of_domain_message
from client.rest import CaptionClient, ServiceError, Unreachable, could_not_connect

DEFAULT_MODEL = "captioner"
# TorchServe's answer to a registration: how many workers it actually started, and which version.
REGISTERED = re.compile(r'Model "(?P<name>[^"]+)" Version: (?P<version>\S+) registered with (?P<workers>\d+) initial')


def worker_count(text: str) -> int:
    """A number of workers, 0 or more: TorchServe takes a negative one, then fails every request of the model."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client", description="Caption images with the TorchServe service.", allow_abbrev=False
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--inference-port", type=int, default=8080)
    parser.add_argument("--management-port", type=int, default=8081)
    parser.add_argument("--grpc-port", type=int, default=7070)
    parser.add_argument("--grpc-management-port", type=int, default=7071)
    parser.add_argument("--key-file", default=None, help="server's key_file.json ('' when tokens are off)")
    parser.add_argument("--model", default=None,
                        help=f"model name (default {DEFAULT_MODEL}; with register: the name to register it as)")
    parser.add_argument("--version", default=None, help="model version (default: the default version)")
    parser.add_argument("--retries", type=int, default=CaptionClient.retries,
                        help="most retries of a request the server refused or failed (503, 502, 504, worker died)")
    parser.add_argument("--give-up-after", type=float, default=CaptionClient.give_up_after,
                        help="seconds after which a request is not sent again")
    commands = parser.add_subparsers(dest="command", required=True)

    caption = commands.add_parser("caption", help="caption image or video files")
    caption.add_argument("images", nargs="+", type=Path, help="image files, or video files for a video model; a folder: its image and video files")
    caption.add_argument("--video", action="store_true",
                         help="the files are clips (implied for .mp4, .m4v, .mov, .webm, .mkv; say it for GIFs)")
    caption.add_argument("--grpc", action="store_true", help="use gRPC instead of REST")
    caption.add_argument("--v2", action="store_true",
                         help="use the KServe v2 (Open Inference) protocol: POST /v2/models/<model>/infer, "
                              "or with --grpc its ModelInfer")
    caption.add_argument("--stream", action="store_true", help="print words as they are decoded")
    caption.add_argument("--beam-size", type=int, default=None)
    caption.add_argument("--num-captions", type=int, default=None, help="several captions: top beams or samples")
    caption.add_argument("--n-best", type=int, default=None, help="the older name of --num-captions")
    caption.add_argument("--max-length", type=int, default=None)
    caption.add_argument("--beam-groups", type=int, default=None, help="> 1: diverse beam search")
    caption.add_argument("--diversity", type=float, default=None, help="diverse beam search penalty")
    caption.add_argument("--do-sample", action="store_true", help="sample the caption instead of searching")
    caption.add_argument("--temperature", type=float, default=None)
    caption.add_argument("--top-k", type=int, default=None)
    caption.add_argument("--top-p", type=float, default=None)
    caption.add_argument("--seed", type=int, default=None, help="the same seed gives the same samples")
    caption.add_argument("--language", default=None,
                         help="caption language, an ISO 639-1 code the model knows (en, fr, de, es for the default)")
    caption.add_argument("--attention", action="store_true",
                         help="per-word attention maps (soft-attention models; shown with --json)")
    caption.add_argument("--json", action="store_true", help="print the full JSON replies")
    caption.add_argument("--concurrency", type=int, default=8, help="requests in flight (batched by the server)")

    register = commands.add_parser("register", help="register an archive from the model store")
    register.add_argument("archive", help="e.g. captioner.mar")
    register.add_argument("--workers", type=worker_count, default=None,
                          help="workers to run (scaled to after registering when the archive's minWorkers differs)")
    scale = commands.add_parser("scale", help="set the number of workers")
    scale.add_argument("min_workers", type=worker_count)
    scale.add_argument("--max-workers", type=worker_count, default=None, help="default: min_workers")
    commands.add_parser("describe", help="show the model's workers and settings")
    commands.add_parser("models", help="list registered models")
    commands.add_parser("unregister", help="unregister the model (or --version)")
    default = commands.add_parser("set-default", help="make a version the default")
    default.add_argument("default_version")
    return parser


DECODING_OPTIONS = (
    "beam_size", "num_captions", "n_best", "max_length", "beam_groups", "diversity", "temperature", "top_k", "top_p",
    "seed", "language",
)


VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".mkv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")


def expand_folders(paths: list[Path]) -> list[Path]:
    """Files as given; a folder becomes its image and video files (by suffix, not recursive), sorted by name.

    A folder with none of them is an error that says which suffixes count, rather than nothing captioned.
    """
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            found.append(path)
            continue
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        if not files:
            raise SystemExit(f"{path} is a folder without image or video files "
                             f"({', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
        found += files
    return found


def _field(args: argparse.Namespace, path: Path, data: bytes) -> str:
    """The name a file goes under where the protocol needs one (KServe v2's input): "video" for a clip.

    An MP4 or WebM container (by suffix or magic bytes) is only ever a clip. A GIF or
    WebP may be either, and "image" is read by both kinds of model (a video model reads
    it as a clip), so it stays "image" unless --video says otherwise. Over /predictions
    the file travels as the body or the form's `data`, whatever this says.
    """
    clip_container = data[4:8] == b"ftyp" or data[:4] == b"\x1a\x45\xdf\xa3"
    return "video" if args.video or clip_container or path.suffix.lower() in VIDEO_SUFFIXES else "image"


def _options(args: argparse.Namespace) -> dict:
    values = {name: getattr(args, name) for name in DECODING_OPTIONS}
    values["do_sample"] = True if args.do_sample else None
    values["attention"] = True if args.attention else None
    return {k: v for k, v in values.items() if v is not None}


def _warn_if_out_of_domain(path: Path, result: dict) -> None:
    message = out_of_domain_message(result)
    if message:
        print(f"warning: {path}: {message}", file=sys.stderr, flush=True)


def _print_result(path: Path, result: dict, as_json: bool, streamed: bool = False) -> None:
    """One file's answer: a JSON line under --json; else its caption(s), unless the words were streamed already."""
    if as_json:
        print(json.dumps({"file": str(path), **result}), flush=True)
    elif "captions" in result and not streamed:
        print(f"{path}:")
        for entry in result["captions"]:
            print(f"  {entry['score']:8.3f}  {entry['caption']}", flush=True)
    elif not streamed:
        print(f"{path}: {result['caption']}", flush=True)
    _warn_if_out_of_domain(path, result)


def _print_failure(path: Path, error: Exception, as_json: bool) -> None:
    """The file's ERROR line on stderr, and under --json its JSON line on stdout, so every file has one."""
    message = str(error)
    if isinstance(error, grpc.RpcError):
        from client.grpc_client import transport_error_message

        message = transport_error_message(error, path.stat().st_size if path.is_file() else 0)
    elif isinstance(error, OSError) and error.strerror and not isinstance(error, requests.RequestException):
        message = f"cannot read it: {error.strerror}"
    print(f"{path}: ERROR {message}", file=sys.stderr, flush=True)
    if as_json:
        status = getattr(error, "status", None)
        print(json.dumps({"file": str(path), "error": message, **({"status": status} if status else {})}), flush=True)


def _client(args: argparse.Namespace, tokens: TokenStore):
    """The client the flags ask for: REST or gRPC, in the service's own protocol or KServe v2."""
    if args.v2:
        from client.open_inference import OpenInferenceClient, OpenInferenceRestClient

        if args.stream:
            raise SystemExit("there is no streaming over v2: drop --stream, or --v2")
        if args.version:
            raise SystemExit("TorchServe serves no versioned v2 path: drop --version, or --v2")
        if args.grpc:
            return OpenInferenceClient(f"{args.host}:{args.grpc_port}", tokens, args.model, retries=_grpc_retries(args))
        return OpenInferenceRestClient(
            f"http://{args.host}:{args.inference_port}", f"http://{args.host}:{args.management_port}", tokens,
            args.model, retries=args.retries, give_up_after=args.give_up_after,
        )
    if args.grpc:
        from client.grpc_client import GrpcCaptionClient

        return GrpcCaptionClient(
            f"{args.host}:{args.grpc_port}", f"{args.host}:{args.grpc_management_port}", tokens, args.model, args.version,
            retries=_grpc_retries(args),
        )
    return CaptionClient(
        f"http://{args.host}:{args.inference_port}", f"http://{args.host}:{args.management_port}", tokens,
        args.model, args.version, retries=args.retries, give_up_after=args.give_up_after,
    )


def _grpc_retries(args: argparse.Namespace):
    from client.grpc_retry import GrpcRetries

    return GrpcRetries(retries=args.retries, give_up_after=args.give_up_after)


def _server_unreachable(error: BaseException) -> bool:
    """No connection to the server could be made, after the retries: every other file would fail the same way."""
    if isinstance(error, Unreachable):
        return error.refused
    if isinstance(error, requests.ConnectionError):
        return could_not_connect(error)
    if isinstance(error, grpc.RpcError):
        from client.grpc_client import is_unreachable

        return is_unreachable(error)
    return False


# What fails one file's request and not the others': the service refusing it, a request that timed out
# or broke off, a gRPC call the server reset. `_server_unreachable` picks out the ones that say the server
# is gone. (A key file that is missing or wrong is not among them: it fails every file, and ends the run.)
PER_FILE_ERRORS = (ServiceError, requests.RequestException, grpc.RpcError)


def _stream_one(client, args: argparse.Namespace, path: Path, data: bytes, options: dict) -> tuple[dict, bool]:
    """Stream one file's caption, printing its words as they come (not under --json).

    Returns the final reply and whether words were printed; the line is ended even
    when the stream fails half-way, so an ERROR line starts on a line of its own.
    """
    final: dict = {}
    printed = False
    try:
        for chunk in client.caption_stream(data, field=_field(args, path, data), **options):
            if "token" not in chunk:
                final = chunk  # the last line: the whole reply
            elif not args.json:
                if not printed:
                    print(f"{path}: ", end="")
                    printed = True
                print(chunk["token"], end=" ", flush=True)
    finally:
        if printed:
            print(flush=True)
    if "caption" not in final:
        raise ServiceError(502, {"error": "the stream ended without its last line (the whole reply)"})
    return final, printed


def _caption(args: argparse.Namespace, tokens: TokenStore) -> int:
    options = _options(args)
    args.images = expand_folders(args.images)
    client = _client(args, tokens)
    gone = threading.Event()  # set once a file found the server unreachable: the files after it are not sent

    def one(path: Path):
        """(path, reply, words streamed) or (path, the per-file error, False); raises when the server is gone."""
        if gone.is_set():
            return path, None, False
        try:
            data = path.read_bytes()
        except OSError as error:  # missing, a folder, unreadable: this file only
            return path, error, False
        try:
            if args.stream:
                return (path, *_stream_one(client, args, path, data, options))
            return path, client.caption(data, field=_field(args, path, data), **options), False
        except PER_FILE_ERRORS as error:
            if _server_unreachable(error):
                gone.set()
                raise
            return path, error, False

    failures = 0

    def report(path: Path, result, streamed: bool) -> None:
        nonlocal failures
        if isinstance(result, Exception):
            failures += 1
            _print_failure(path, result, args.json)
        elif result is not None:
            _print_result(path, result, args.json, streamed)

    if args.stream:  # one at a time, so each file's words are printed together
        for path in args.images:
            report(*one(path))
        return 1 if failures else 0
    with ThreadPoolExecutor(max_workers=max(1, args.concurrency)) as pool:
        try:
            for outcome in pool.map(one, args.images):
                report(*outcome)
        except Exception:  # the server is gone: drop the files not started, let the ones in flight end
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; what a user can fix (no server, a wrong key file) ends in one `error:` line."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # the client's notes go to stderr
    try:
        return _run(args)
    except (requests.ConnectionError, requests.Timeout) as error:
        print(f"error: {error}; is the server running? (`make serve` starts it, `--host` and the port "
              f"options point elsewhere)", file=sys.stderr)
    except grpc.RpcError as error:
        hint = "; is the server running? (`make serve` starts it)" if error.code() == grpc.StatusCode.UNAVAILABLE else ""
        print(f"error: gRPC {error.code().name}: {error.details()}{hint}", file=sys.stderr)
    except (KeyFileError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
    return 1


def _register(args: argparse.Namespace, client: CaptionClient, model_name: str | None):
    """Register the archive, then make the workers the number --workers asked for.

    The archive's model-config.yaml `minWorkers` wins over `initial_workers` in
    TorchServe 0.12 (this project's asks for 2), so --workers 1 alone would start 2.
    The count TorchServe started is in its answer; when it differs, the new model
    version is scaled to --workers (min and max), and stderr says so.
    """
    result = client.register(args.archive, model_name=model_name, initial_workers=args.workers)
    if args.workers is None:
        return result
    started = REGISTERED.search(str(result.get("status", "") if isinstance(result, dict) else result))
    if started is None:
        print(f"warning: TorchServe's answer does not say how many workers it started; the archive's "
              f"minWorkers may have won over --workers {args.workers}: check with describe", file=sys.stderr)
        return result
    if int(started["workers"]) != args.workers:
        registered = dataclasses.replace(client, model=started["name"])
        registered.scale(args.workers, version=started["version"])
        print(f"note: TorchServe started {started['workers']} workers (the archive's minWorkers wins over "
              f"initial_workers); {started['name']} {started['version']} is now scaled to {args.workers} "
              f"(min and max)", file=sys.stderr)
    return result


def _run(args: argparse.Namespace) -> int:
    key_file = key_file_from_env() if args.key_file is None else (Path(args.key_file) if args.key_file else None)
    management_url = f"http://{args.host}:{args.management_port}"
    tokens = TokenStore(key_file, management_url)
    model_name, args.model = args.model, args.model or DEFAULT_MODEL  # register: None keeps the archive's name
    if args.command == "caption":
        return _caption(args, tokens)
    client = CaptionClient(f"http://{args.host}:{args.inference_port}", management_url, tokens, args.model, args.version)
    try:
        if args.command == "register":
            result = _register(args, client, model_name)
        elif args.command == "scale":
            result = client.scale(args.min_workers, args.max_workers, args.version)
            if client.scales_retried:
                print(f"warning: TorchServe failed the scale with a 500 and it was sent again "
                      f"({client.scales_retried} time(s)); SECURITY.md, 'Known limits', says why", file=sys.stderr)
            if args.min_workers == 0:
                print(f"note: {args.model} now has no worker: its requests get 503 until it is scaled up "
                      f"(python -m client scale 1, or make scale WORKERS=1)", file=sys.stderr)
        elif args.command == "describe":
            result = client.describe(args.version)
        elif args.command == "models":
            result = client.list_models()
        elif args.command == "unregister":
            result = client.unregister(args.version)
        else:
            result = client.set_default(args.default_version)
    except (ServiceError, ValueError) as error:  # ValueError: worker counts refused before sending
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
