"""`make demo`'s novel-view panel: source | truth | plain | Zero-to-Hero on a tiny exported Zero-1-to-3,
skipped with one line while assets/shapes3d-zero123 is not there; a bad --novel-view-model is one
clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from apps import demo
from attn_processors.zero_to_hero import ZeroToHeroConfig
from tests.test_shapes3d_zero123_export import _fake_run
from worlds.shapes3d.render import render
from worlds.shapes3d.scene import load_scenes
from worlds.shapes3d.zero123 import export

FAST_Z2H = ZeroToHeroConfig(stage_steps=(1, 1, 1), resample_iterations=2)  # a few evaluations, all parts on


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A fake training run exported as the world exports the real one (random weights, real layout)."""
    root = tmp_path_factory.mktemp("zero123")
    run = root / "run"
    run.mkdir()
    _fake_run(run, "raw")
    return export(run, root / "model")


def _models(novel_view: Path | None) -> demo.Models:
    return demo.Models(demo.DEFAULT_MODEL, demo.DEFAULT_VIDEO_MODEL, novel_view)


def test_the_panel_shows_source_truth_plain_and_z2h_of_the_first_off_centre_scenes(tiny_model, tmp_path):
    models = _models(tiny_model)
    pipe = models.novel_view
    calls = []
    original = type(pipe).__call__

    def spy(self, image, poses, **kw):  # noqa: ANN001, ANN003 - the pipeline's signature
        calls.append((np.array(image), poses, kw["z2h"], kw["generator"].initial_seed()))
        return original(self, image, poses, **kw)

    type(pipe).__call__, restore = spy, original
    try:
        paths = demo.panel_novel_view(models, tmp_path, plain_steps=2, z2h=FAST_Z2H)
    finally:
        type(pipe).__call__ = restore
    assert paths == [tmp_path / "novel_view.png"]

    scenes = {s.extra["group"]: s for s in reversed(load_scenes(demo.NOVEL_VIEW_SCENES))}  # first per group
    shown = [scenes[g] for g in demo.NOVEL_VIEW_GROUPS]
    assert [c[2] for c in calls] == [ZeroToHeroConfig.plain(2), FAST_Z2H] * 2
    assert len({c[3] for c in calls}) == 1, "one fixed seed"
    tile, label = 64 * demo.SCALE, demo.LABEL_H
    picture = np.asarray(Image.open(paths[0]).convert("RGB"), dtype=np.float64)
    assert picture.shape == (2 * (tile + label) + 4, 4 * tile + 3 * 4, 3)
    for row, scene in enumerate(shown):
        source, target = scene.views[0], scene.views[1]
        src = render(scene.objects, source).rgb.numpy()
        assert np.array_equal(calls[2 * row][0], src) and np.array_equal(calls[2 * row + 1][0], src)
        d_az = (target.azimuth - source.azimuth + 180) % 360 - 180
        assert calls[2 * row][1] == [pytest.approx((source.elevation - target.elevation, d_az, 0.0))]
        top = row * (tile + label + 4) + label
        for col, truth in enumerate((src, render(scene.objects, target).rgb.numpy())):  # enlarged renders
            left = col * (tile + 4)
            drawn = picture[top:top + tile, left:left + tile]
            want = np.asarray(Image.fromarray(truth).resize((tile, tile), Image.NEAREST), dtype=np.float64)
            assert np.abs(drawn - want).mean() < 3.0, (row, col)  # 64-colour palette


def test_without_the_default_folder_the_panel_is_skipped_with_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo, "DEFAULT_NOVEL_VIEW_MODEL", demo.ROOT / "assets" / "no-such-zero123")
    assert demo.check_novel_view_model(None) is None
    drawn = []
    monkeypatch.setattr(demo, "PANELS", [("novel_view", lambda m, o: drawn.append(m) or [])])
    assert demo.main(["--out", str(tmp_path)]) == []
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "novel_view" in ln]
    assert not drawn and len(lines) == 1 and "skipped" in lines[0] and "no-such-zero123" in lines[0], lines


def test_the_picture_is_listed_only_when_make_demo_draws_it():
    assert ("novel_view.png" in demo.PICTURES) == demo.DEFAULT_NOVEL_VIEW_MODEL.exists()


def test_a_given_bad_folder_is_one_clear_error(tmp_path):
    out = tmp_path / "out"
    for folder, words in ((tmp_path / "missing", ("no such folder", "assets/shapes3d-zero123")),
                          (demo.DEFAULT_MODEL, ("StableDiffusionPipeline", "Zero-1-to-3"))):
        with pytest.raises(SystemExit) as err:
            demo.main(["--novel-view-model", str(folder), "--out", str(out)])
        message = str(err.value.code)
        assert message.startswith("apps.demo: error: --novel-view-model") and "\n" not in message
        assert all(w in message for w in words), message
    half = tmp_path / "half"
    half.mkdir()
    (half / "model_index.json").write_text(json.dumps({"_class_name": "Zero1to3StableDiffusionPipeline"}))
    with pytest.raises(SystemExit, match="lacks"):
        demo.main(["--novel-view-model", str(half), "--out", str(out)])
    assert not out.exists(), "nothing is written"


def test_a_given_good_folder_is_taken(tiny_model):
    assert demo.check_novel_view_model(tiny_model) == tiny_model
    assert torch.is_tensor(next(_models(tiny_model).novel_view.unet.parameters()))
