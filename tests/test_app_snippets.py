"""Each tab's "copy as code" script, run in a fresh process, reproduces the app's output exactly
(the layout tab's is checked in the default suite, tests/test_app_api.py; these take ~20 s each)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

NO_APP = "the app extra is not installed: pip install -e '.[app]'"
pytest.importorskip("gradio_client", reason=NO_APP)
pytest.importorskip("gradio_image_annotation", reason=NO_APP)

from gradio_client import Client, handle_file  # noqa: E402

from apps.gradio_app import build_app, serving  # noqa: E402
from attn_processors.testing.tiny_zero123 import save_tiny_zero123  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    with serving(build_app()) as url:
        yield Client(url, verbose=False)


def run_script(code: str, folder: Path) -> None:
    (folder / "snippet.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "snippet.py"], cwd=folder, env=env, check=True, capture_output=True,
                   timeout=600)


def output(files: list[str], name: str) -> str:
    return next(f for f in files if Path(f).name == name)


def pixels(path: str | Path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path))


def test_attention_maps_script_gives_the_same_image(client, tmp_path):
    *_, code, files, _ = client.predict("", "a red circle and a blue square", 3, 4, 4.0,
                                        api_name="/attention_maps")
    run_script(code, tmp_path)
    assert np.array_equal(pixels(tmp_path / "image.png"), pixels(output(files, "attn_image.png")))


def test_video_script_gives_the_same_mp4_bytes(client, tmp_path):
    video, _, _, _, _, code, _ = client.predict("", "a red circle moving right", "tile_sparse", '{"k": 2}', 9,
                                                64, 64, 3, 4.0, 1, api_name="/video")
    assert "set_attn_processor(processors(pipe, *configs))" in code
    run_script(code, tmp_path)
    assert (tmp_path / "video.mp4").read_bytes() == Path(video).read_bytes()


def test_novel_view_script_gives_the_same_views(client, tmp_path):
    folder = save_tiny_zero123(tmp_path / "tiny-zero123")
    view = tmp_path / "view.png"
    PIL.Image.new("RGB", (32, 32), (200, 40, 40)).save(view)
    *_, code, files, _ = client.predict(str(folder), handle_file(str(view)), 10, 90, 0, 3, 3.0, 0,
                                        api_name="/novel_view")
    shutil.copy(output(files, "input.png"), tmp_path / "input.png")
    run_script(code, tmp_path)
    for name in ("plain.png", "filtered.png"):
        assert np.array_equal(pixels(tmp_path / name), pixels(output(files, name)))


def test_style_script_gives_the_same_illustration(client, tmp_path):
    from apps.gradio_app.tabs.style import example_images

    paths = [tmp_path / "in_content.png", tmp_path / "in_style.png"]
    for path, array in zip(paths, example_images(), strict=True):
        PIL.Image.fromarray(array).save(path)
    *_, code, files, _ = client.predict("", *(handle_file(str(p)) for p in paths), "illusign", "", 4, 1.0, 2,
                                        api_name="/style")
    for name in ("content.png", "style.png"):
        shutil.copy(output(files, name), tmp_path / name)
    run_script(code, tmp_path)
    assert np.array_equal(pixels(tmp_path / "illustration.png"), pixels(output(files, "illustration.png")))


def test_multiview_script_gives_the_same_views(client, tmp_path):
    from tests.test_app_api import FAST_QNERF, multiview_inputs

    model, views, _ = multiview_inputs(tmp_path)
    *_, code, files, _ = client.predict(str(model), handle_file(str(views)), "a red box", "a blue box",
                                        FAST_QNERF, 4, 5.0, 0, api_name="/multiview_edit")
    run_script(code, tmp_path)
    for i in range(4):
        assert np.array_equal(pixels(tmp_path / f"edited_{i}.png"), pixels(output(files, f"edited_{i}.png")))


def test_sign_script_gives_the_same_illustration(client, tmp_path):
    from apps.gradio_app.tabs.sign import example_clip

    clip, style_array = example_clip(tmp_path)
    PIL.Image.fromarray(style_array).save(tmp_path / "in_style.png")
    style = handle_file(str(tmp_path / "in_style.png"))
    *_, code, files, _ = client.predict("", handle_file(str(clip)), style, "fused", "illusign", 3, 1,
                                        api_name="/sign")
    shutil.copy(clip, tmp_path / "clip.mp4")
    shutil.copy(output(files, "style.png"), tmp_path / "style.png")
    run_script(code, tmp_path)
    assert np.array_equal(pixels(tmp_path / "sign.png"), pixels(output(files, "sign.png")))
