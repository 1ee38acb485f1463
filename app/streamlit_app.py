"""The demo page: upload an image (or take a photo) or a video clip and read its caption from the running service.

    make serve && make demo        # or: python -m streamlit run app/streamlit_app.py

A client of TorchServe's REST API through `client.rest.CaptionClient`; no model is
loaded here. Server address and key file come from CAPTION_INFERENCE_URL,
CAPTION_MANAGEMENT_URL and CAPTION_KEY_FILE, and can be changed in the sidebar.
"""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import time
from dataclasses import replace
from pathlib import Path

# Streamlit runs this file as a script, with only its own folder on sys.path.
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import streamlit as st  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from app.captioning import (  # noqa: E402
    LANGUAGE_NAMES, DecodingOptions, ServerSettings, attention_png, explain_failure, request_caption,
    sampled_frames,
)
from client.domain import out_of_domain_message  # noqa: E402

# The handler's limits (handler/model-config.yaml: max_length, max_beam_size).
MOST_WORDS = 20
LARGEST_BEAM = 8
IMAGE_TYPES = ["jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp"]
VIDEO_TYPES = ["mp4", "m4v", "mov", "webm", "mkv", "gif", "webp"]  # what the video model reads (README "Video")


def sidebar() -> tuple[ServerSettings, DecodingOptions, bool]:
    defaults = ServerSettings.from_env()
    with st.sidebar:
        st.header("Decoding")
        method = st.radio("Method", ["greedy", "beam search"], horizontal=True, key="method")
        beam_size = st.slider("Beam size", 2, LARGEST_BEAM, 3, key="beam_size", disabled=method == "greedy")
        max_length = st.slider("Most words", 1, MOST_WORDS, MOST_WORDS, key="max_length")
        language = st.selectbox("Language", list(LANGUAGE_NAMES), format_func=LANGUAGE_NAMES.get, key="language")
        stream = st.toggle("Show words as they are decoded", value=True, key="stream")
        attention = st.toggle(
            "Attention maps", value=True, key="attention",
            help="where each word looked in the image (models with a soft-attention decoder)",
        )
        st.header("Server")
        settings = ServerSettings(
            inference_url=st.text_input("Inference URL", defaults.inference_url, key="inference_url").rstrip("/"),
            management_url=st.text_input("Management URL", defaults.management_url, key="management_url").rstrip("/"),
            key_file=st.text_input(
                "Key file", defaults.key_file, key="key_file",
                help="the server's key_file.json; leave empty when token authorization is off",
            ),
            model=defaults.model,
            video_model=st.text_input("Video model", defaults.video_model, key="video_model",
                                      help="the model video uploads go to (make video-mar, make serve)"),
        )
    options = DecodingOptions(
        beam_size=1 if method == "greedy" else beam_size, max_length=max_length, language=language,
        attention=attention,
    )
    return settings, options, stream


def picture_input() -> tuple[object, bool]:
    """The uploaded file, the camera's photo or the uploaded clip (an UploadedFile, or None), and
    whether it is a clip for the video model."""
    if st.toggle("Caption a video clip", key="use_video"):
        return st.file_uploader("Upload a video clip (MP4, WebM, animated GIF or WebP)", type=VIDEO_TYPES,
                                key="video_upload"), True
    if st.toggle("Take a photo with the camera", key="use_camera"):
        return st.camera_input("Take a photo", key="camera"), False
    return st.file_uploader("Upload an image", type=IMAGE_TYPES, key="upload"), False


def thumbnail(image: bytes) -> str | None:
    """A small JPEG data URL for the history table; None when the bytes are no image."""
    try:
        with Image.open(io.BytesIO(image)) as picture:
            picture = picture.convert("RGB")
            picture.thumbnail((64, 64))
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=80)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def caption(settings: ServerSettings, options: DecodingOptions, stream: bool, name: str, image: bytes,
            video: bool = False) -> dict:
    """Ask the server (the video model for a clip), showing words as they arrive; returns what to show."""
    live = st.empty()
    # A model that refused the maps once is not asked for them again (each refusal costs a request).
    server = (settings.inference_url, settings.model)
    asked_for_maps = options.attention
    refused = st.session_state.without_maps.get(server)
    if refused:
        options = replace(options, attention=False)
    try:
        outcome = request_caption(
            settings.client(video), image, options, stream,
            on_word=lambda words: live.markdown(f"### {' '.join(words)} ▌"), field="video" if video else "image",
        )
    except Exception as error:  # every failure becomes a message on the page
        live.empty()
        return {"error": explain_failure(error, settings)}
    live.empty()
    if outcome.attention_refused:
        st.session_state.without_maps[server] = refused = outcome.attention_refused
    timing = f"{outcome.seconds * 1000:.0f} ms"
    if outcome.first_word_seconds is not None:
        timing += f" (first word after {outcome.first_word_seconds * 1000:.0f} ms)"
    entry = {
        "time": time.strftime("%H:%M:%S"), "image": thumbnail(image), "file": name, "caption": outcome.caption,
        "ms": round(outcome.seconds * 1000), "decoding": options.describe(),
    }
    st.session_state.history.insert(0, entry)
    return {"caption": outcome.caption, "timing": timing, "decoding": options.describe(),
            "ended": outcome.result.get("ended", True), "maps": attention_png(image, outcome.result),
            "no_maps": refused if asked_for_maps else None, "frames_sampled": outcome.result.get("frames_sampled"),
            "out_of_domain": out_of_domain_message(outcome.result),
            "strip": sampled_frames(image, outcome.result) if video else []}


def show(answer: dict) -> None:
    with st.container(key="answer"):
        if "error" in answer:
            st.error(answer["error"])
            return
        if answer.get("out_of_domain"):  # above the caption, so it is read first
            st.warning(answer["out_of_domain"], icon="⚠️")
        st.subheader(answer["caption"])
        cut = "" if answer["ended"] else " · cut at the word limit"
        st.caption(f"{answer['timing']} · {answer['decoding']}{cut}")
        if answer.get("maps"):
            st.image(answer["maps"], caption="where each word looked (attention maps)", width="stretch")
        elif answer.get("no_maps"):
            st.caption(f"No attention maps: {answer['no_maps']}")
        if answer.get("strip"):
            with st.container(key="frames"):
                st.caption("The frames the model was shown:")
                st.image(answer["strip"], caption=[f"frame {i}" for i in answer["frames_sampled"]], width=96)


def history() -> None:
    st.subheader("History")
    if not st.session_state.history:
        st.caption("Captions of this session appear here.")
        return
    st.dataframe(
        st.session_state.history, hide_index=True, width="stretch",
        column_config={"image": st.column_config.ImageColumn("image"), "ms": st.column_config.NumberColumn("ms")},
    )
    if st.button("Clear history", key="clear_history"):
        st.session_state.history = []
        st.rerun()


def main() -> None:
    st.set_page_config(page_title="Image captioning", layout="wide")
    st.session_state.setdefault("history", [])
    st.session_state.setdefault("without_maps", {})  # (inference URL, model) -> why it has no attention maps
    settings, options, stream = sidebar()
    st.title("Image captioning")
    st.caption(f"ResNet + LSTM captioner `{settings.model}`, served by TorchServe at {settings.inference_url}")
    picture, video = picture_input()
    if picture is not None:
        image = picture.getvalue()
        preview, answer_column = st.columns([1, 2])
        with preview:
            if video and not picture.name.lower().endswith(".gif"):
                st.video(image)
            elif thumbnail(image) is None:
                st.warning(f"{picture.name} cannot be shown as an image; the server is asked anyway.")
            else:
                st.image(image, caption=picture.name, width="stretch")
        with answer_column:
            # One request per (image, options, server): other reruns of the page show the last answer again.
            request = (hashlib.sha256(image).hexdigest(), options, settings, stream, video)
            answer_area = st.container()
            again = st.button("Caption again", key="again")
            with answer_area:
                if again or st.session_state.get("request") != request:
                    st.session_state.request = request
                    st.session_state.answer = caption(settings, options, stream, picture.name, image, video)
                show(st.session_state.answer)
    history()


main()
