"""How the project's command-line tools end on a mistake their user can fix.

A missing file, an image that cannot be read, an export folder that is not one:
the message already says what is wrong and what to do, so it is printed as one
line (`error: ...`, exit status 1) instead of under a traceback. Anything else
is a bug and keeps its traceback.

    if __name__ == "__main__":
        with user_errors():
            main(get_args_parser().parse_args())
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from model.export_format import ExportError
from training.coco_data import UnreadableImage

USER_ERRORS = (FileNotFoundError, NotADirectoryError, UnreadableImage, ExportError)


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as error:
        raise SystemExit(f"error: {error}") from None
