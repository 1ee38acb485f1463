"""How the project's command-line tools end on a mistake their user can fix.

A missing file, an image that cannot be read, an export folder that is not one:
the message already says what is wrong and what to do, so it is printed as one
line (`error: ...`, exit status 1) instead of under a traceback. Anything else
is a bug and keeps its traceback.

    if __name__ == "__main__":
        with user_errors():
            main(get_args_parser().parse_args())

A mistake found in a data-loader process reaches the command re-raised by
torch with that process's whole traceback as its message; the line printed is
still the original message alone.

The argparse types below refuse numbers an option cannot mean (0 epochs, a
batch of -4, a limit of -8 that would slice from the end) when the command line
is read, so argparse names the option and the tool does no work first.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from model.export_format import ExportError
from training.checkpoints import CheckpointError
from training.coco_data import (
    NoCaptionsInLanguage,
    NotACaptionFile,
    NothingToTrainOn,
    SharedImages,
    UnreadableImage,
)

# FileExistsError is here because every folder these tools create is one their user named
# (--out, --output-dir): it means that path is taken by a file.
USER_ERRORS = (
    FileNotFoundError, NotADirectoryError, FileExistsError, UnreadableImage, NotACaptionFile, NothingToTrainOn,
    NoCaptionsInLanguage, SharedImages, ExportError, CheckpointError,
)

# How torch.utils.data re-raises an error from a loader process: this, then the process's traceback.
_WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):\n"


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as error:
        raise SystemExit(f"error: {one_line(error)}") from None


def one_line(error: BaseException) -> str:
    """The error's own message: for one re-raised from a data-loader process, the last line of its traceback.

    That line reads `package.module.Class: message`; the class prefix is dropped
    so the line is the one the same mistake prints with `--workers 0`.
    """
    message = str(error)
    if _WORKER_TRACEBACK not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    kind = type(error)
    for prefix in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last


def make_folder(path: Path | str) -> Path:
    """`mkdir -p` of a folder the user named, with an error naming the part of the path that is a file.

    The OS's own errors ("[Errno 17] File exists") name the folder asked for,
    not the file in its way.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise NotADirectoryError(f"cannot make the folder {path}: {blocker} is a file; give another path, or move "
                                 "the file away") from None
    return path


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):  # "nan" and "inf" pass float() but mean nothing here
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A count that must be at least 1: epochs, a batch size, images to draw.

    0 would run and do nothing (0 epochs exits successfully having trained
    nothing) and a negative count would slice from the end of a list.
    """
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A count where 0 means none (data-loader processes, held-out images), but never below 0."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """A rate or scale above 0 (a learning rate of 0 trains nothing, a negative one climbs the loss)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A weight where 0 turns something off (an auxiliary loss, weight decay), but never below 0."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def fraction(text: str) -> float:
    """A share in [0, 1], both ends meant: of a load's requests, those that are bad inputs (1: all of them)."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def fraction_below_one(text: str) -> float:
    """A share in [0, 1): of the images held out, at least one must be left to train on."""
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def int_between(minimum: int, maximum: int, *, even: bool = False) -> Callable[[str], int]:
    """An argparse type for a whole number in [minimum, maximum] (and even, for H.264's 4:2:0 frames).

    For sizes in pixels: a canvas too small to draw a shape on, or one so large a
    set of thousands fills the disk, is refused before anything is written.
    """

    def parse(text: str) -> int:
        value = _whole_number(text)
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be from {minimum} to {maximum}, got {value}")
        if even and value % 2:
            raise argparse.ArgumentTypeError(f"must be even, got {value} (try {value + 1 if value < maximum else value - 1})")
        return value

    parse.__name__ = f"int_between_{minimum}_{maximum}"
    return parse


def torch_device(text: str) -> str:
    """cpu, cuda or cuda:N, refused when the command line is read if this machine has no such device.

    Otherwise a CUDA device missing here fails deep in the first tensor move, after
    the data is read, with torch's own traceback.
    """
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA device; use cpu")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA device(s), cuda:0..{count - 1}")
    return text
