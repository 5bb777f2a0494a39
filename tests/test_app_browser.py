"""The Gradio app in a real browser (Playwright driving Debian's chromium, headless).

Draws a box with the mouse on the Layout canvas, types its phrase, generates, and checks with the
shapes detector that the object landed in the box; plays the Video tab's MP4; saves a screenshot of each
tab to docs/images/app_<tab>.png (the README's pictures; the tour of the other tabs is marked slow).
"""

from __future__ import annotations

import io
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest

NO_APP = "the app extra is not installed: pip install -e '.[app]'"
pytest.importorskip("gradio_client", reason=NO_APP)
pytest.importorskip("gradio_image_annotation", reason=NO_APP)
sync_api = pytest.importorskip("playwright.sync_api", reason=NO_APP)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium browser on PATH (Debian: apt-get install chromium; .ci/run installs it)",
                allow_module_level=True)

from apps.gradio_app import build_app, serving  # noqa: E402
from apps.gradio_app.tabs.layout import CANVAS  # noqa: E402
from attn_processors.testing.tiny_zero123 import save_tiny_zero123  # noqa: E402
from tests.test_app_api import FAST_QNERF, multiview_inputs  # noqa: E402
from worlds.shapes.detector import detect  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "images"
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    zero123 = save_tiny_zero123(tmp_path_factory.mktemp("zero123") / "tiny-zero123")
    with serving(build_app({"novel_view": zero123})) as address:
        yield address


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    # offline: anything not served by the app (web fonts, ...) is refused at once instead of hanging
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(url) else r.abort())
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#layout-canvas canvas", timeout=TIMEOUT_MS)
    yield page
    page.close()


def fetch(page, name: str, url: str) -> bytes:
    """The bytes of the downloadable output file called ``name``."""
    link = page.locator(f'#layout-files a[download="{name}"]').first
    href = link.get_attribute("href")
    with urllib.request.urlopen(href if href.startswith("http") else url.rstrip("/") + href) as response:
        return response.read()


def red_centre(png: bytes) -> tuple[float, float]:
    """Normalised centre of the red object the shapes detector finds in a PNG."""
    found = {d.colour: d for d in detect(np.asarray(PIL.Image.open(io.BytesIO(png)).convert("RGB")))}
    assert "red" in found, found
    x0, y0, x1, y1 = found["red"].box
    return (x0 + x1) / 2, (y0 + y1) / 2


def inside(point: tuple[float, float], box: list[float]) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def draw_box(page, box: tuple[float, float, float, float]) -> None:
    """Drag a box with the mouse; ``box`` is normalised xyxy on the canvas image (shown centred, scaled)."""
    area = page.locator("#layout-canvas canvas").first.bounding_box()
    scale = min(area["width"], area["height"]) / CANVAS
    left = area["x"] + (area["width"] - CANVAS * scale) / 2
    top = area["y"] + (area["height"] - CANVAS * scale) / 2
    x0, y0, x1, y1 = (left + box[0] * CANVAS * scale, top + box[1] * CANVAS * scale,
                      left + box[2] * CANVAS * scale, top + box[3] * CANVAS * scale)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=10)
    page.mouse.up()
    ok = page.get_by_role("button", name="OK")  # a label dialog, if the component shows one
    if ok.count() and ok.first.is_visible():
        ok.first.click()


def test_draw_a_box_type_a_phrase_and_the_object_lands_in_it(page, url):
    drawn = (0.05, 0.52, 0.45, 0.92)  # bottom left; unguided, seed 2 puts the circle at the top
    draw_box(page, drawn)
    page.locator("#layout-prompt textarea").fill("a red circle")
    page.locator("#layout-phrases textarea").fill("red circle")
    page.locator("#layout-seed input").fill("2")
    page.locator("#layout-go").click()
    page.wait_for_selector('#layout-files a[download="layout.png"]', timeout=TIMEOUT_MS)
    page.wait_for_selector("#layout-result img", timeout=TIMEOUT_MS)
    page.screenshot(path=str(SHOTS / "app_layout.png"), full_page=True)

    config = json.loads(fetch(page, "layout_config.json", url))
    (box,) = config["boxes"]
    assert box == pytest.approx(drawn, abs=0.03)  # the mouse drag became this box
    assert not inside(red_centre(fetch(page, "unguided.png", url)), box)  # unguided: elsewhere
    assert inside(red_centre(fetch(page, "layout.png", url)), box)  # with layout control: in the box


def test_the_video_tab_plays_its_mp4(page):
    page.get_by_role("tab", name="Video").click()
    page.locator("#video-steps input").fill("6")
    page.locator("#video-go").click()
    video = page.wait_for_selector("#video-output video", timeout=TIMEOUT_MS)
    page.wait_for_function("v => v.readyState >= 2 && v.duration > 0 && v.videoWidth === 64", arg=video,
                           timeout=TIMEOUT_MS)
    assert video.evaluate("v => v.duration") == pytest.approx(9 / 8, abs=0.2)  # 9 frames at 8 fps
    page.wait_for_selector("#video-wall :text('s wall')", timeout=TIMEOUT_MS)
    page.screenshot(path=str(SHOTS / "app_video.png"), full_page=True)


@pytest.mark.slow  # ~60 s on a loaded 2-core machine: the screenshot tour of the remaining tabs
def test_every_other_tab_generates_in_the_browser(page, tmp_path):
    page.get_by_role("tab", name="Attention maps").click()
    page.locator("#attention-go").click()
    page.wait_for_selector("#attention-image img", timeout=TIMEOUT_MS)
    page.screenshot(path=str(SHOTS / "app_attention.png"), full_page=True)

    page.get_by_role("tab", name="Style / IlluSign").click()
    page.locator("#style-go").click()
    page.wait_for_selector("#style-result img", timeout=TIMEOUT_MS)
    page.screenshot(path=str(SHOTS / "app_style.png"), full_page=True)

    page.get_by_role("tab", name="Sign illustration").click()
    page.locator("#sign-go").click()  # the example clip and style image are preloaded
    page.wait_for_selector("#sign-result img", timeout=TIMEOUT_MS)
    page.screenshot(path=str(SHOTS / "app_sign.png"), full_page=True)

    page.get_by_role("tab", name="Multi-view edit").click()
    model, views, _ = multiview_inputs(tmp_path)
    page.locator("#multiview-model textarea").fill(str(model))
    page.locator("#multiview-options textarea").fill(FAST_QNERF)
    page.locator("#multiview-views input[type=file]").set_input_files(str(views))
    page.locator("#multiview-go").click()
    page.wait_for_selector("#multiview-figure img", timeout=TIMEOUT_MS)
    page.screenshot(path=str(SHOTS / "app_multiview.png"), full_page=True)

    page.get_by_role("tab", name="Novel view").click()
    path = tmp_path / "view.png"  # an input view for the tiny random-weights model: a red disc
    view = PIL.Image.new("RGB", (64, 64), "white")
    PIL.ImageDraw.Draw(view).ellipse((16, 16, 48, 48), fill=(220, 30, 30))
    view.save(path)
    page.locator("#novel-input input[type=file]").set_input_files(str(path))
    page.locator("#novel-go").click()
    page.wait_for_selector("#novel-filtered img", timeout=TIMEOUT_MS)
    page.screenshot(path=str(SHOTS / "app_novel_view.png"), full_page=True)
