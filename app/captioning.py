"""What the demo page does besides drawing: settings, one timed caption request, readable failures.

Kept apart from `streamlit_app.py` so the page stays a layout of widgets, and so the
request goes through the project's own client (`client.rest.CaptionClient`, tokens
from the server's key file) exactly as any other caller's would.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import requests

from client.attention_maps import attention_figure
from client.auth import TokenStore, key_file_from_env
from client.rest import CaptionClient, ServiceError

DEFAULT_INFERENCE_URL = "http://127.0.0.1:8080"
DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:8081"


@dataclass(frozen=True)
class ServerSettings:
    """Where the page sends its requests; the defaults match `make serve`."""

    inference_url: str = DEFAULT_INFERENCE_URL
    management_url: str = DEFAULT_MANAGEMENT_URL
    key_file: str = ""  # "" when the server runs without token authorization
    model: str = "captioner"
    video_model: str = "captioner-video"  # the model a video upload goes to (`make video-mar`)

    @classmethod
    def from_env(cls) -> "ServerSettings":
        """CAPTION_INFERENCE_URL, CAPTION_MANAGEMENT_URL, CAPTION_KEY_FILE, CAPTION_MODEL,
        CAPTION_VIDEO_MODEL (all optional)."""
        key_file = key_file_from_env()
        return cls(
            inference_url=os.environ.get("CAPTION_INFERENCE_URL", DEFAULT_INFERENCE_URL),
            management_url=os.environ.get("CAPTION_MANAGEMENT_URL", DEFAULT_MANAGEMENT_URL),
            key_file=str(key_file) if key_file else "",
            model=os.environ.get("CAPTION_MODEL", "captioner"),
            video_model=os.environ.get("CAPTION_VIDEO_MODEL", "captioner-video"),
        )

    def client(self, video: bool = False) -> CaptionClient:
        """A client of the image model, or of the video model with `video`."""
        # Few retries: a person is waiting, and a server that is down should be reported quickly.
        tokens = TokenStore(Path(self.key_file) if self.key_file.strip() else None, self.management_url)
        model = self.video_model if video else self.model
        return CaptionClient(self.inference_url, self.management_url, tokens, model, retries=1, timeout=30)


# The languages the page offers (the default model's); a model without one answers 400, shown as the error.
LANGUAGE_NAMES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish"}


@dataclass(frozen=True)
class DecodingOptions:
    """The request options the page offers; `beam_size` 1 means greedy decoding.

    `attention` asks for the attention maps, which only a model whose decoder
    attends has; `request_caption` asks again without them when the model refuses.
    """

    beam_size: int = 1
    max_length: int = 20
    language: str = "en"
    attention: bool = False

    def request_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"beam_size": self.beam_size, "max_length": self.max_length,
                                   "language": self.language}
        if self.attention:
            options["attention"] = True
        return options

    def describe(self) -> str:
        method = "greedy" if self.beam_size == 1 else f"beam {self.beam_size}"
        return f"{method}, at most {self.max_length} words, in {LANGUAGE_NAMES.get(self.language, self.language)}"


@dataclass
class CaptionOutcome:
    """A caption and how long it took, measured on the page's side (request to last byte)."""

    result: dict[str, Any]
    seconds: float
    first_word_seconds: float | None = None  # streamed requests only
    words: list[str] = field(default_factory=list)
    attention_refused: str | None = None  # the server's reason, when maps were asked of a model without them

    @property
    def caption(self) -> str:
        return self.result["caption"]


def request_caption(
    client: CaptionClient,
    image: bytes,
    options: DecodingOptions,
    stream: bool,
    on_word: Callable[[list[str]], None] | None = None,
    field: str = "image",
) -> CaptionOutcome:
    """Caption `image` (a clip's file with `field="video"`); with `stream`, call `on_word(words so far)`
    as each word arrives.

    When the maps were asked for and the model has none (a 400 naming `attention`),
    the caption is asked again without them, and the outcome says why there are none.
    Raises what the client raises (`ServiceError`, `requests.RequestException`,
    `FileNotFoundError` for a missing key file); `explain_failure` turns those into text.
    """
    try:
        return _request_caption(client, image, options, stream, on_word, field)
    except ServiceError as error:
        message = error.body.get("error", "") if isinstance(error.body, dict) else ""
        if not (options.attention and error.status == 400 and "attention" in message):
            raise
    outcome = _request_caption(client, image, replace(options, attention=False), stream, on_word, field)
    outcome.attention_refused = message
    return outcome


def attention_png(image: bytes, result: dict[str, Any]) -> bytes | None:
    """The reply's per-word attention maps drawn over the image (PNG), or None when it has none."""
    if "attention" not in result:
        return None
    import matplotlib.pyplot as plt
    from PIL import Image

    with Image.open(io.BytesIO(image)) as picture:
        figure = attention_figure(picture, result["tokens"], result["attention"], columns=6)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()


def _request_caption(
    client: CaptionClient,
    image: bytes,
    options: DecodingOptions,
    stream: bool,
    on_word: Callable[[list[str]], None] | None,
    field: str,
) -> CaptionOutcome:
    start = time.perf_counter()
    if not stream:
        result = client.caption(image, field=field, **options.request_options())
        return CaptionOutcome(result, time.perf_counter() - start, words=list(result.get("tokens", [])))
    words: list[str] = []
    first_word = None
    result = None
    for chunk in client.caption_stream(image, field=field, **options.request_options()):
        if "token" in chunk:
            first_word = first_word if first_word is not None else time.perf_counter() - start
            words.append(chunk["token"])
            if on_word:
                on_word(words)
        else:
            result = chunk
    if result is None or "caption" not in result:
        raise ServiceError(502, {"error": f"the stream ended without a final result: {result!r}"})
    return CaptionOutcome(result, time.perf_counter() - start, first_word, words)


def explain_failure(error: Exception, settings: ServerSettings) -> str:
    """One message a person can act on, for each way a request fails."""
    if isinstance(error, ServiceError):
        body = error.body
        message = (body.get("error") or body.get("message")) if isinstance(body, dict) else body
        if 400 <= error.status < 500:
            return f"The server refused this image (HTTP {error.status}): {message}"
        return f"The server failed to caption this image (HTTP {error.status}): {message}"
    if isinstance(error, requests.ConnectionError):
        return (
            f"Cannot reach the captioning server at {settings.inference_url}. Start it with `make serve`, "
            "or set its address in the sidebar."
        )
    if isinstance(error, requests.Timeout):
        return f"The captioning server at {settings.inference_url} did not answer in time; try again."
    if isinstance(error, FileNotFoundError):
        return (
            f"No key file at {settings.key_file}: start the server with `make serve`, or set the server's "
            "key_file.json in the sidebar (leave it empty when token authorization is off)."
        )
    return f"The request failed: {error}"


def sampled_frames(clip: bytes, result: dict[str, Any]) -> list:
    """The frames the server captioned (its reply's `frames_sampled`), read from the clip here.

    The page reads them with the server's own frame reader and sampling
    (`model/video_frames.py`), so the strip shows what the model saw. Empty when
    the reply names no frames or the clip cannot be read here.
    """
    from model.video_frames import VideoReadError, read_clip

    sampled = result.get("frames_sampled") or []
    if not sampled:
        return []
    try:
        clip = read_clip(clip, len(sampled))
    except VideoReadError:
        return []
    return list(clip.frames) if clip.indices == sampled else []
