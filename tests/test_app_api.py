"""The Gradio app through its API (gradio_client), on a server this module starts on a free local port.

Every tab's main function on the shipped models (the Novel view tab on a tiny Zero-1-to-3 folder, as the
shipped one may not exist yet), bad input answered with its message and the next request served, two
concurrent requests both answered, progress reported per step, cancel stopping a run, and the layout
"copy as code" script reproducing the app's image bit for bit in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

NO_APP = "the app extra is not installed: pip install -e '.[app]'"
pytest.importorskip("gradio_client", reason=NO_APP)
pytest.importorskip("gradio_image_annotation", reason=NO_APP)

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from apps.gradio_app import build_app, serving  # noqa: E402
from apps.gradio_app.tabs import novel_view  # noqa: E402
from apps.gradio_app.tabs.layout import canvas_image  # noqa: E402
from apps.gradio_app.tabs.sign import example_clip  # noqa: E402
from apps.gradio_app.tabs.style import example_images  # noqa: E402
from attn_processors.testing.tiny_zero123 import save_tiny_zero123  # noqa: E402
from pipelines.video import read_mp4  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle and a blue square"
BOXES = [  # canvas pixels (the canvas is 256 x 256)
    {"xmin": 10, "ymin": 20, "xmax": 120, "ymax": 130, "label": "red circle", "color": "rgb(255, 0, 0)"},
    {"xmin": 140, "ymin": 130, "xmax": 245, "ymax": 240, "label": "blue square", "color": "rgb(0, 0, 255)"},
]


@pytest.fixture(scope="module")
def canvas(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("app") / "canvas.png"
    PIL.Image.fromarray(canvas_image()).save(path)
    return str(path)


@pytest.fixture(scope="module")
def zero123_folder(tmp_path_factory) -> Path:
    return save_tiny_zero123(tmp_path_factory.mktemp("zero123") / "tiny-zero123")


def multiview_inputs(root: Path) -> tuple[Path, Path, Path]:
    """A tiny SD folder, a zip of 4 posed 16-px views of a 3D-shapes scene, and the same zip with a
    transforms.json whose second frame lacks its pose."""
    from attn_processors.testing.tiny import tiny_pipeline
    from worlds.shapes3d.cases import novel_view_scene
    from worlds.shapes3d.nerfstudio import write_views

    tiny_pipeline("sd15").save_pretrained(root / "tiny-sd")
    scene = write_views(novel_view_scene("easy", 1, 0, 0), root / "scene", size=16, ss=1)
    bad = json.loads((scene / "transforms.json").read_text())
    del bad["frames"][1]["transform_matrix"]
    zips = []
    for name, transforms in (("views.zip", scene / "transforms.json"), ("bad.zip", json.dumps(bad))):
        with zipfile.ZipFile(root / name, "w") as archive:
            for sub in ("images", "depth"):  # the depth drives the field's density (and a depth ControlNet)
                for path in (scene / sub).iterdir():
                    archive.write(path, f"scene/{sub}/{path.name}")
            archive.writestr("scene/transforms.json", transforms if isinstance(transforms, str)
                             else transforms.read_text())
        zips.append(root / name)
    return root / "tiny-sd", zips[0], zips[1]


@pytest.fixture(scope="module")
def multiview(tmp_path_factory) -> tuple[Path, Path, Path]:
    return multiview_inputs(tmp_path_factory.mktemp("multiview"))


@pytest.fixture(scope="module")
def url(zero123_folder):
    with serving(build_app({"novel_view": zero123_folder})) as address:
        yield address


@pytest.fixture(scope="module")
def client(url) -> Client:
    return Client(url, verbose=False)


def layout_args(canvas: str, *, prompt: str = PROMPT, boxes=BOXES, method: str = "full", steps: int = 6,
                model: str = "", seed: int = 0) -> tuple:
    value = {"image": handle_file(canvas), "boxes": [dict(b) for b in boxes]}
    return model, value, prompt, "", method, seed, steps, None


def app_error(client: Client, *args, api_name: str) -> str:
    with pytest.raises(AppError) as err:
        client.predict(*args, api_name=api_name)
    return str(err.value)


def test_layout_returns_both_images_heatmaps_config_and_a_script_that_reproduces_it(client, canvas, tmp_path):
    unguided, result, heatmaps, seed, config, code, files, status = client.predict(
        *layout_args(canvas), api_name="/layout")
    assert seed == 0 and "6 steps" in status
    for path in (unguided, result):
        assert PIL.Image.open(path).size == (256, 256)
    assert [h["caption"] for h in heatmaps] == ["red circle", "blue square"]
    data = json.loads(config)
    assert data["__type__"] == "LayoutConfig" and data["phrases"] == ["red circle", "blue square"]
    assert data["boxes"][0] == pytest.approx([10 / 256, 20 / 256, 120 / 256, 130 / 256])
    assert data["iterations"] == 17  # the model folder's setting (assets/shapes-sd/attn_processors.json)
    app_image = np.asarray(PIL.Image.open(next(f for f in files if f.endswith("layout.png"))))
    assert app_image.shape == (64, 64, 3)
    # the "copy as code" script, run in a fresh process, reproduces the app's image bit for bit
    (tmp_path / "snippet.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, check=True, capture_output=True,
                   timeout=300)
    assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / "layout.png")), app_image)


BAD_LAYOUTS = [  # (what changes in a good request, the message it must get)
    ({"boxes": [{**BOXES[0], "xmax": BOXES[0]["xmin"]}]}, "box 1 (10, 20)-(10, 130) has zero area"),
    ({"prompt": "   "}, "the prompt is empty"),
    ({"prompt": "a pink circle and a blue square"}, "words outside the shapes vocabulary: ['pink']"),
    ({"model": "/no/such/model/folder"}, "'/no/such/model/folder': there is no such folder"),
]


def test_layout_bad_input_is_a_readable_message_and_the_next_request_is_served(client, canvas):
    for change, message in BAD_LAYOUTS:
        assert message in app_error(client, *layout_args(canvas, **change), api_name="/layout")
    result = client.predict(*layout_args(canvas, method="redistribution", steps=2), api_name="/layout")
    assert PIL.Image.open(result[1]).size == (256, 256)


def test_attention_maps_one_heatmap_per_word_and_unknown_words_refused(client):
    image, heatmaps, seed, config, code, files, status = client.predict(
        "", PROMPT, 3, 4, 4.0, api_name="/attention_maps")
    assert PIL.Image.open(image).size == (256, 256) and seed == 3
    assert [h["caption"] for h in heatmaps] == PROMPT.split()
    assert json.loads(config)["__type__"] == "StoreConfig"
    assert "processors(pipe, store_config)" in code and any(f.endswith("attn_grid.png") for f in files)
    message = app_error(client, "", "a red banana", 0, 4, 4.0, api_name="/attention_maps")
    assert "['banana']" in message


def test_video_mp4_with_its_wall_time_for_each_attention(client):
    for attention in ("dense", "tile_sparse+sage"):  # the session's run table is kept in gr.State
        video, wall, table, seed, config, code, files = client.predict(
            "", "a red circle moving right", attention, "", 5, 32, 32, 2, 4.0, 1, api_name="/video")
        frames = read_mp4(video)
        assert frames.shape == (5, 32, 32, 3) and frames.dtype == np.uint8
        assert wall.startswith(f"**{attention}**: ") and " s wall " in wall
    assert [row[0] for row in table["data"]] == ["dense", "tile_sparse+sage"]
    assert json.loads(config)[0]["__type__"] == "TileSparseConfig"
    assert json.loads(config)[0]["kernel"]["__type__"] == "SageConfig"
    message = app_error(client, "", "a red circle moving right", "tile_sparse", "{k: 2}", 5, 32, 32, 2, 4.0,
                        1, api_name="/video")
    assert "attention options are not valid JSON" in message
    message = app_error(client, "", "", "dense", "", 5, 32, 32, 2, 4.0, 1, api_name="/video")
    assert "the prompt is empty" in message


def test_novel_view_plain_beside_zero_to_hero(client, zero123_folder, canvas):
    plain, filtered, seed, config, code, files, status = client.predict(
        str(zero123_folder), handle_file(canvas), 0, 90, 0, 3, 3.0, 0, api_name="/novel_view")
    assert PIL.Image.open(plain).size == PIL.Image.open(filtered).size == (256, 256)
    assert json.loads(config)["__type__"] == "ZeroToHeroConfig"
    assert "66 evaluations" in status  # Hourglass: 26 steps, resampled 5 times in [800, 1000]
    if not novel_view.DEFAULT_MODEL.is_dir():  # until the shipped model is exported, the tab says so
        message = app_error(client, "", handle_file(canvas), 0, 90, 0, 3, 3.0, 0, api_name="/novel_view")
        assert "is not there yet" in message


def test_style_modes_return_an_illustration_and_a_missing_image_is_named(client, tmp_path):
    content, style = (tmp_path / "content.png", tmp_path / "style.png")
    for path, array in zip((content, style), example_images(), strict=True):
        PIL.Image.fromarray(array).save(path)
    images = handle_file(str(content)), handle_file(str(style))
    for mode in ("illusign", "kv_swap"):
        image, edges, seed, config, code, files, status = client.predict(
            "", *images, mode, "", 3, 1.0, 0, api_name="/style")
        assert PIL.Image.open(image).size == PIL.Image.open(edges).size == (256, 256)
        data = json.loads(config)
        assert (data["__type__"], data["mode"]) == ("StyleConfig", mode)
    message = app_error(client, "", images[0], None, "illusign", "", 3, 1.0, 0, api_name="/style")
    assert message == "the style image is missing; upload one"
    message = app_error(client, "", *images, "illusign", "a red banana", 3, 1.0, 0, api_name="/style")
    assert "['banana']" in message


def test_sign_illustration_draws_an_arrow_per_moving_shape(client, tmp_path):
    clip, style_array = example_clip(tmp_path)  # two shapes moving right through 9 frames
    style = tmp_path / "style.png"
    PIL.Image.fromarray(style_array).save(style)
    image, first, last, overlay, seed, config, code, files, status = client.predict(
        "", handle_file(str(clip)), handle_file(str(style)), "fused", "illusign", 3, 0, api_name="/sign")
    assert PIL.Image.open(image).size == (512, 512)
    assert PIL.Image.open(first).size == PIL.Image.open(last).size == (256, 256)
    assert "frames 0..8 · 2 arrow(s) · fused" in status
    assert read_mp4(overlay).shape == (9, 256, 512, 3)  # each frame with its path | the illustration
    message = app_error(client, "", handle_file(str(clip)), None, "fused", "illusign", 3, 0, api_name="/sign")
    assert message == "the style image is missing; upload one"


FAST_QNERF = '{"tau": 1, "fit_iters": 5, "kv_start_step": 1, "alpha": 5.0}'  # 3 fits in 4 steps


def test_multiview_edit_returns_every_view_and_a_malformed_transforms_json_is_named(client, multiview):
    model, views, bad = multiview
    fig, edited, seed, config, code, files, status = client.predict(
        str(model), handle_file(str(views)), "a red box", "a blue box", FAST_QNERF, 4, 5.0, 0,
        api_name="/multiview_edit")
    assert PIL.Image.open(fig).size == (4 * 128, 2 * 128)  # 4 views, before above after
    assert [PIL.Image.open(e["image"]).size for e in edited] == [(16, 16)] * 4
    assert "4 views" in status and "3 QNeRF fits" in status
    assert json.loads(config)["fit_iters"] == 5
    message = app_error(client, str(model), handle_file(str(bad)), "a red box", "a blue box", FAST_QNERF, 4,
                        5.0, 0, api_name="/multiview_edit")
    assert "transforms.json: frames[1] has no 'transform_matrix'" in message
    message = app_error(client, str(model), handle_file(str(views)), "a red box", "a blue box", "{alpha: 0}",
                        4, 5.0, 0, api_name="/multiview_edit")
    assert "QNeRF options are not valid JSON" in message
    again = client.predict(str(model), handle_file(str(views)), "a red box", "a blue box", '{"alpha": 0}', 2,
                           5.0, 0, api_name="/multiview_edit")
    assert "0 QNeRF fits" in again[-1]  # alpha 0: the per-view edit, no consolidation


def test_two_concurrent_requests_are_queued_and_both_answered(url, canvas):
    clients = [Client(url, verbose=False) for _ in range(2)]
    jobs = [c.submit(*layout_args(canvas, method="unguided", steps=4, seed=s), api_name="/layout")
            for s, c in enumerate(clients)]
    results = [job.result(timeout=120) for job in jobs]
    assert [r[3] for r in results] == [0, 1]
    assert all(PIL.Image.open(r[1]).size == (256, 256) for r in results)


def watch_progress(job, until, timeout: float = 60.0) -> list:
    """The job's progress updates seen until ``until(updates)`` holds or the job ends."""
    seen: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not job.done():
        data = job.status().progress_data
        if data:
            seen.extend(d for d in data if d not in seen[-len(data):])
            if until(seen):
                break
        time.sleep(0.02)
    return seen


def test_progress_is_reported_per_step(client, canvas):
    job = client.submit(*layout_args(canvas, method="unguided", steps=40), api_name="/layout")
    seen = watch_progress(job, lambda s: False)
    job.result(timeout=60)
    steps = {(p.index, p.length) for p in seen if p.unit == "steps" and p.length == 40}
    assert len(steps) >= 3, seen  # several distinct per-step updates of the 40-step runs


def test_cancel_stops_a_run_between_steps_and_the_next_run_is_served(client, canvas):
    job = client.submit(*layout_args(canvas, method="unguided", steps=400), api_name="/layout")
    seen = watch_progress(job, lambda s: any(p.index and p.index >= 2 for p in s))
    assert seen, "no progress before cancelling"
    start = time.monotonic()
    assert client.predict(api_name="/layout_cancel").startswith("Cancelling")
    with pytest.raises(AppError, match=r"cancelled during unguided, after \d+ of 400 steps"):
        job.result(timeout=60)
    assert time.monotonic() - start < 5.0
    assert client.predict(api_name="/layout_cancel") == "Nothing is running on this tab."
    result = client.predict(*layout_args(canvas, method="unguided", steps=2), api_name="/layout")
    assert PIL.Image.open(result[1]).size == (256, 256)


def test_the_server_binds_only_this_machine_by_default():
    from apps.gradio_app.app import parse_args

    args = parse_args([])
    assert (args.host, args.port, args.share) == ("127.0.0.1", 7860, False)
    with pytest.raises(ValueError, match="no tab"):
        build_app({"nope": "x"})

