"""The demo page in a real headless Chromium: upload a generated image, read the caption the page shows.

The Streamlit server is started here (a subprocess on a free loopback port, pointed at
the session's TorchServe) and stopped by its PID; Chromium and chromedriver are
Debian's (`apt-get install chromium chromium-driver`), driven by Selenium.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from ops.server import free_ports
from tests.helpers import shape_image_bytes

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)


@pytest.fixture(scope="module")
def demo_url(torchserve, registered, tmp_path_factory):
    """`streamlit run app/streamlit_app.py` on a free port, as `make demo` starts it."""
    port = free_ports(1)[0]
    log_path = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    env = {
        **os.environ,
        "CAPTION_INFERENCE_URL": torchserve.url("inference"),
        "CAPTION_MANAGEMENT_URL": torchserve.url("management"),
        "CAPTION_KEY_FILE": str(torchserve.key_file),
    }
    command = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "streamlit_app.py"),
        "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
        "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
    ]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"streamlit exited: {log_path.read_text()}"
            try:
                if requests.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"streamlit did not start: {log_path.read_text()}"
            time.sleep(0.25)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_uploaded_image_gets_its_caption_in_the_browser(demo_url, browser, registered, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    image, _ = shape_image_bytes(7, fmt="PNG", size=256)
    path = tmp_path / "scene.png"
    path.write_bytes(image)
    expected = registered.caption(image, beam_size=1, max_length=20)["caption"]
    assert expected

    browser.get(demo_url)
    wait = WebDriverWait(browser, 60)
    upload = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "input[type='file']")))
    upload.send_keys(str(path))
    heading = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, ".st-key-answer h3")))
    assert heading.text == expected
    history = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, "[data-testid='stDataFrame']")))
    assert history.is_displayed()

    screenshot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
