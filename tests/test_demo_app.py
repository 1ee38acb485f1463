"""The demo page driven through Streamlit's AppTest, against the session's real TorchServe.

AppTest runs `app/streamlit_app.py` in this process and sets real widget values
(file uploader, camera, sliders, text inputs); the page's requests go over HTTP to
the server started by conftest. The expected captions are asked of the same server
through the REST client, so each test checks the page shows what the API answers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from client.rest import ServiceError
from ops.server import free_ports
from tests.helpers import shape_image_bytes

APP = Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py"
JPEG, _ = shape_image_bytes(5)
PNG, _ = shape_image_bytes(6, fmt="PNG")


def open_page(torchserve, monkeypatch, **environment: str) -> AppTest:
    """The page, run once, pointed at the session server through the same variables `make demo` sets
    (and any other CAPTION_* `environment`, e.g. CAPTION_MODEL)."""
    monkeypatch.setenv("CAPTION_INFERENCE_URL", torchserve.url("inference"))
    monkeypatch.setenv("CAPTION_MANAGEMENT_URL", torchserve.url("management"))
    monkeypatch.setenv("CAPTION_KEY_FILE", str(torchserve.key_file))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    assert not app.exception, app.exception
    return app


@pytest.fixture
def page(torchserve, registered, monkeypatch) -> AppTest:
    return open_page(torchserve, monkeypatch)


def upload(app: AppTest, name: str, data: bytes, mime: str = "image/jpeg") -> AppTest:
    app.file_uploader(key="upload").set_value((name, data, mime))
    app.run()
    assert not app.exception, app.exception
    return app


def shown_caption(app: AppTest) -> str:
    """The caption heading in the answer area (the other subheader is "History")."""
    captions = [h.value for h in app.subheader if h.value != "History"]
    assert len(captions) == 1, [h.value for h in app.subheader]
    return captions[0]


def history_rows(app: AppTest) -> list[dict]:
    if not app.dataframe:
        return []
    return app.dataframe[0].value.to_dict("records")


def test_page_starts_with_settings_from_the_environment(page, torchserve):
    assert page.title[0].value == "Image captioning"
    assert page.text_input(key="inference_url").value == torchserve.url("inference")
    assert page.text_input(key="key_file").value == str(torchserve.key_file)
    assert page.file_uploader(key="upload") is not None
    assert not page.error and not page.dataframe


def test_upload_shows_the_apis_caption_with_its_timing(page, registered):
    upload(page, "scene.jpg", JPEG)
    expected = registered.caption(JPEG, beam_size=1, max_length=20)["caption"]
    assert expected and shown_caption(page) == expected
    details = " ".join(c.value for c in page.caption)
    assert " ms (first word after " in details  # streamed by default
    assert "greedy, at most 20 words" in details
    assert [row["caption"] for row in history_rows(page)] == [expected]
    assert page.image  # the preview


def test_without_streaming_the_caption_is_the_same(page, registered):
    page.toggle(key="stream").set_value(False)
    upload(page, "scene.png", PNG, "image/png")
    assert shown_caption(page) == registered.caption(PNG)["caption"]
    details = " ".join(c.value for c in page.caption)
    assert " ms · greedy" in details and "first word" not in details


def test_decoding_options_reach_the_server(page, registered):
    page.radio(key="method").set_value("beam search").run()  # enables the beam size slider
    page.slider(key="beam_size").set_value(3)
    page.slider(key="max_length").set_value(4)
    upload(page, "scene.jpg", JPEG)
    expected = registered.caption(JPEG, beam_size=3, max_length=4)
    assert expected["method"] == "beam"
    assert shown_caption(page) == expected["caption"]
    assert len(shown_caption(page).split()) <= 4
    assert [row["decoding"] for row in history_rows(page)] == ["beam 3, at most 4 words, in English"]


def test_the_language_reaches_the_server_which_names_the_languages_it_has(page, registered):
    page.selectbox(key="language").set_value("fr")
    upload(page, "scene.jpg", JPEG)
    with pytest.raises(ServiceError) as refused:
        registered.caption(JPEG, language="fr")
    shown = " ".join(e.value for e in page.error)
    assert refused.value.status == 400 and "languages (en)" in shown and "'fr'" in shown


def test_camera_photo_is_captioned(page, registered):
    page.toggle(key="use_camera").set_value(True).run()
    page.camera_input(key="camera").set_value(("photo.jpg", JPEG, "image/jpeg"))
    page.run()
    assert not page.exception, page.exception
    assert shown_caption(page) == registered.caption(JPEG)["caption"]


def test_history_keeps_each_caption_newest_first_and_clears(page, registered):
    upload(page, "first.jpg", JPEG)
    upload(page, "second.png", PNG, "image/png")
    page.run()  # a rerun with nothing changed sends no new request
    assert [row["file"] for row in history_rows(page)] == ["second.png", "first.jpg"]
    assert [row["caption"] for row in history_rows(page)] == [
        registered.caption(PNG)["caption"], registered.caption(JPEG)["caption"]
    ]
    assert all(row["image"].startswith("data:image/jpeg;base64,") for row in history_rows(page))
    page.button(key="again").click().run()
    assert [row["file"] for row in history_rows(page)] == ["second.png", "second.png", "first.jpg"]
    page.button(key="clear_history").click().run()
    assert not page.dataframe
    assert shown_caption(page) == registered.caption(PNG)["caption"]  # the current answer stays


def test_refused_image_shows_the_servers_error(page, registered):
    broken = b"\xff\xd8\xff this is not a JPEG"
    with pytest.raises(ServiceError) as refused:
        registered.caption(broken, beam_size=1, max_length=20)
    upload(page, "broken.jpg", broken)
    assert len(page.error) == 1
    message = page.error[0].value
    assert message.startswith(f"The server refused this image (HTTP {refused.value.status}): ")
    assert refused.value.body["error"] in message
    assert "broken.jpg cannot be shown" in page.warning[0].value
    assert not page.dataframe  # refusals are not captions


def test_server_down_is_reported(page):
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"
    page.text_input(key="inference_url").set_value(closed)
    upload(page, "scene.jpg", JPEG)
    assert len(page.error) == 1
    assert page.error[0].value.startswith(f"Cannot reach the captioning server at {closed}. Start it with `make serve`")
    assert not page.dataframe


def test_missing_key_file_is_reported(page, tmp_path):
    missing = tmp_path / "key_file.json"
    page.text_input(key="key_file").set_value(str(missing))
    upload(page, "scene.jpg", JPEG)
    assert page.error[0].value.startswith(f"No key file at {missing}: start the server with `make serve`")
