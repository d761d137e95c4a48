"""The page in headless Chromium (Debian's `chromium`, driven by Playwright) against a live `magvlt serve`.

The server runs a tiny random-weight run (tests/test_pipeline.py's write_run): the test checks that every control
reaches the API and shows what comes back, not what a trained model draws. Screenshots go to $MAGVLT_SCREENSHOTS
(default: the test's tmp folder). In CI (CI=true) a missing browser fails the test instead of skipping it.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from test_pipeline import write_run

from magvlt.data.shapes import render_split

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)


def need(reason: str):
    """Skip on a developer's machine without the browser; fail in CI, where .ci/run installs it."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m magvlt serve` on 127.0.0.1, ready once /health answers."""
    run = write_run(tmp_path_factory.mktemp("run"))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "magvlt", "serve", "--model", str(run), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("playwright is not installed (pip install -e '.[dev]')")
    if CHROMIUM is None:
        need("no chromium binary (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    out = Path(os.environ.get("MAGVLT_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def photo(tmp_path) -> Path:
    """A shapes-world scene as a 64x64 PNG (larger than the model's 16x16, as uploads are)."""
    images, _ = render_split("val", 1, seed=0, size=64)
    path = tmp_path / "scene.png"
    Image.fromarray(images[0]).save(path)
    return path


def page_at(browser, server, width, height):
    page = browser.new_page(viewport={"width": width, "height": height})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server)
    page.wait_for_selector("#model:has-text('images')")
    return page, errors


def test_generate_caption_inpaint_infill_and_pairs_in_the_page(server, browser, photo, shots):
    page, errors = page_at(browser, server, 1280, 1000)
    page.evaluate(
        "window.seen = []; const s = document.getElementById('t2i-step');"
        "new MutationObserver(() => seen.push(s.textContent)).observe(s, {childList: true, subtree: true})"
    )

    page.fill("#t2i-prompt", "a large red circle")
    page.click("#t2i-go")
    page.wait_for_selector("#t2i-step:has-text('done in 10 steps')", timeout=30_000)
    assert page.get_attribute("#t2i-image", "src").startswith("data:image/png;base64,")
    assert page.evaluate("seen")[:3] == ["step 1 / 10", "step 2 / 10", "step 3 / 10"]  # refining, step by step

    page.set_input_files("#i2t-file", str(photo))
    page.click("#i2t-go")
    page.wait_for_selector("#i2t-step:has-text('done in 10 steps')", timeout=30_000)

    page.set_input_files("#inp-file", str(photo))
    page.wait_for_function("document.getElementById('inp-canvas').width === 64")
    box = page.locator("#inp-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6, steps=8)
    page.mouse.up()
    with page.expect_response("**/v1/inpaint") as reply:
        page.click("#inp-go")
    assert reply.value.status == 200
    page.wait_for_function("(document.getElementById('inp-result').src || '').startsWith('blob:')")

    page.click("#infill .use-generated")  # the inpainting result
    page.wait_for_function("(document.getElementById('inf-preview').src || '').startsWith('blob:')")
    page.fill("#inf-text", "a large [MASK] circle")
    page.click("#inf-go")
    page.wait_for_function("document.getElementById('inf-result').textContent.startsWith('a large ')")

    page.fill("#pairs-n", "3")
    page.click("#pairs-go")
    page.wait_for_selector("#pairs-list li:nth-child(3) img")
    assert page.text_content("#i2t-error") == "" and page.text_content("#inp-error") == "" and errors == []
    page.screenshot(path=str(shots / "serve-desktop.png"), full_page=True)


def test_bad_input_shows_the_servers_message(server, browser):
    page, _ = page_at(browser, server, 1280, 1000)
    page.fill("#t2i-prompt", "")
    page.click("#t2i-go")
    page.wait_for_selector("#t2i-error:not(:empty)")
    page.click("#inp-go")
    assert "choose an image" in page.text_content("#inp-error")


def test_fits_a_phone(server, browser, shots):
    page, errors = page_at(browser, server, 390, 844)
    page.click("#t2i-go")
    page.wait_for_selector("#t2i-step:has-text('done')", timeout=30_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 and errors == []
    page.click("#i2t .use-generated")
    page.click("#i2t-go")
    page.wait_for_selector("#i2t-step:has-text('done')", timeout=30_000)
    page.screenshot(path=str(shots / "serve-phone.png"), full_page=True)
