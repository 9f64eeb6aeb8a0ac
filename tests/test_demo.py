"""End-to-end test of the Gradio demo in a real headless Chromium (Debian's package, driven by Playwright)."""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from puppet_master.app.demo import DemoState, grabcut_foreground, square_input

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Upload limit of the test server (the browser test's image is far smaller).
UPLOAD_LIMIT = 1 << 20


@pytest.fixture(scope="module")
def demo_process(tiny_pipeline_dir, tmp_path_factory):
    """The served demo: ``(process, url)``."""
    port = _free_port()
    exe = shutil.which("puppet-master") or str(Path(sys.executable).parent / "puppet-master")
    log = tmp_path_factory.mktemp("demo") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PUPPET_MASTER_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)}
    env.pop("GRADIO_TEMP_DIR", None)
    with log.open("w") as fh:
        proc = subprocess.Popen([exe, "demo", "--model", str(tiny_pipeline_dir), "--port", str(port), "--steps", "2"],
                                stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"demo server exited: {log.read_text()[-2000:]}")
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail(f"demo server did not start in time: {log.read_text()[-2000:]}")
    yield proc, url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def demo_server(demo_process):
    return demo_process[1]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _status(page) -> str:
    return page.locator("#status").inner_text()


def _upload(page, path):
    page.locator("#upload input[type=file]").set_input_files(str(path))
    page.locator("#canvas img").wait_for(state="visible", timeout=30_000)


def _click_canvas(page, fx: float, fy: float) -> tuple[float, float]:
    """Click at a fraction of the displayed canvas; return the expected model-pixel coordinates (256 px)."""
    img = page.locator("#canvas img")
    box = img.bounding_box()
    img.click(position={"x": fx * box["width"], "y": fy * box["height"]})
    return fx * 256, fy * 256


def test_demo_in_browser(demo_server, browser, tmp_path):
    image = tmp_path / "object.png"
    arr = np.full((200, 300, 3), 255, np.uint8)
    arr[50:150, 80:220] = (180, 90, 40)
    PIL.Image.fromarray(arr).save(image)

    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(demo_server)
    page.locator("#generate").wait_for(timeout=60_000)

    # generating without drags gives a clear message, not a stack trace
    _upload(page, image)
    page.locator("#generate").click()
    page.wait_for_function("document.querySelector('#status').innerText.includes('Add at least one drag')", timeout=30_000)
    assert "Traceback" not in page.content()

    # click start, then end: one drag, drawn immediately
    x0, y0 = _click_canvas(page, 0.45, 0.5)
    page.wait_for_function("document.querySelector('#status').innerText.includes('click the end point')", timeout=30_000)
    x1, y1 = _click_canvas(page, 0.65, 0.45)
    page.wait_for_function("document.querySelector('#status').innerText.includes('1 drag(s)')", timeout=30_000)
    m = re.search(r"#1: \((\d+), (\d+)\) → \((\d+), (\d+)\)", _status(page))
    assert m, _status(page)
    got = [float(v) for v in m.groups()]
    assert np.allclose(got, [x0, y0, x1, y1], atol=4), (got, [x0, y0, x1, y1])

    # a second tab has its own drags
    other = browser.new_page()
    other.goto(demo_server)
    other.locator("#generate").wait_for(timeout=60_000)
    _upload(other, image)
    # each click waits for the page's answer, as a user does (a click while the canvas redraws can miss it)
    for (fx, fy), shown in (((0.3, 0.3), "click the end point"), ((0.3, 0.6), "1 drag(s)"),
                            ((0.7, 0.7), "click the end point"), ((0.6, 0.6), "2 drag(s)")):
        _click_canvas(other, fx, fy)
        other.wait_for_function(f"document.querySelector('#status').innerText.includes('{shown}')", timeout=30_000)
    assert "1 drag(s)" in _status(page)
    other.close()

    # generate: a playable video appears
    page.locator("#generate").click()
    page.wait_for_function(
        "(() => { const v = document.querySelector('#result video'); return v && v.src && v.src.length > 0; })()",
        timeout=180_000,
    )
    assert "Generated 14 frames with 1 drag(s)" in _status(page)
    assert page.locator("#download a").count() >= 1 or page.locator("#download").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo-after-generation.png"), full_page=True)
    assert (ARTIFACTS / "demo-after-generation.png").stat().st_size > 10_000

    # undo removes the drag
    page.locator("#undo").click()
    page.wait_for_function("document.querySelector('#status').innerText.includes('0 drag(s)')", timeout=30_000)
    page.close()


def test_square_input_and_alpha():
    rgba = np.zeros((40, 80, 4), np.uint8)
    rgba[10:30, 20:60] = (10, 200, 10, 255)
    img, mask = square_input(PIL.Image.fromarray(rgba), 64)
    assert img.size == (64, 64) and mask is not None and mask.shape == (64, 64)
    assert np.asarray(img)[0, 0].tolist() == [255, 255, 255]  # padding and transparent pixels are white
    assert mask[32, 32] and not mask[2, 2]
    _, none = square_input(PIL.Image.fromarray(rgba[..., :3]), 64)
    assert none is None


@pytest.mark.parametrize("size", [9, 32])
def test_demo_squares_an_odd_sized_image_like_the_command_line(size):
    """An odd margin (9x6 → 1.5 px each side) lands where prepare_input puts it, in the demo too."""
    from puppet_master.drags import DragSet
    from puppet_master.preprocessing import prepare_input

    rgb = np.full((6, 9, 3), 255, np.uint8)
    rgb[1:5, 2:7] = (200, 40, 40)
    rgb[2, 4] = (0, 0, 255)  # the dragged point
    image = PIL.Image.fromarray(rgb)
    square, drags, transform = prepare_input(image, DragSet.from_pairs([((4.5, 2.5), (6.5, 2.5))], 9, 6), size=size)
    demo_square, mask = square_input(image, size)
    assert mask is None and np.array_equal(np.asarray(demo_square), np.asarray(square))
    assert transform.pad == (0.0, 2.0)  # round(1.5) = 2, as the image is placed on whole pixels
    if size == 9:  # no resampling: the dragged pixel is exactly under the drag's start
        x, y = drags.trajectories[0, 0]
        assert np.asarray(demo_square)[int(y), int(x)].tolist() == [0, 0, 255]


def test_grabcut_separates_object_from_background():
    arr = np.full((64, 64, 3), 240, np.uint8)
    arr[16:48, 20:44] = (30, 60, 160)
    arr += np.random.default_rng(0).integers(0, 10, arr.shape, dtype=np.uint8)
    mask = grabcut_foreground(PIL.Image.fromarray(arr), [(32, 32)])
    inside = mask[18:46, 22:42].mean()
    outside = np.concatenate([mask[:10].ravel(), mask[-10:].ravel()]).mean()
    assert inside > 0.9 and outside < 0.05


def test_state_description():
    s = DemoState()
    assert "No image" in s.describe()


def _post_upload(url: str, name: str, data: bytes) -> int:
    """POST one file to Gradio's upload route; the HTTP status."""
    boundary = "----puppet-master-test"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_demo_bounds_uploads_and_keeps_its_files_in_its_own_folder(demo_process):
    """Gradio refuses an upload over the limit; an accepted one lands in the demo's own folder, which is removed
    when the server gets SIGTERM. (Runs after the browser test: it stops the server.)"""
    proc, url = demo_process
    folder = Path(tempfile.gettempdir()) / f"puppet-master-demo-{proc.pid}"
    assert folder.is_dir()
    assert _post_upload(url, "big.png", b"x" * (UPLOAD_LIMIT + 1)) == 413
    assert _post_upload(url, "small.png", b"x" * 1000) == 200
    cached = sorted(p.name for p in (folder / "gradio").rglob("*") if p.is_file())  # also the example images
    assert "small.png" in cached and "big.png" not in cached, cached
    proc.terminate()
    proc.wait(timeout=30)
    assert not folder.exists()
