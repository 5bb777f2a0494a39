"""Scoring in the 3D shapes world: PSNR/SSIM convention, the chromaticity labeller on renders, baselines."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from worlds.shapes.vocab import COLOUR_RGB, COLOURS
from worlds.shapes3d.render import render
from worlds.shapes3d.scene import Object3D, SceneSpec, View, load_scenes, sample_scene
from worlds.shapes3d.score import (
    chroma_labels,
    copy_input_baseline,
    psnr,
    score_view,
    ssim,
    summarise,
)

CASES = Path(__file__).resolve().parents[1] / "benchmarks" / "cases"


def _reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image's gaussian SSIM written out: scipy gaussian_filter (truncate 3.5 -> 11x11), crop 5."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    vals = []
    for c in range(3):
        def f(t: np.ndarray) -> np.ndarray:
            return gaussian_filter(t, 1.5, truncate=3.5)

        mx, my = f(x[..., c]), f(y[..., c])
        vx = f(x[..., c] ** 2) - mx**2
        vy = f(y[..., c] ** 2) - my**2
        cxy = f(x[..., c] * y[..., c]) - mx * my
        c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        vals.append(s[5:-5, 5:-5].mean())
    return float(np.mean(vals))


def test_ssim_follows_the_documented_convention():
    rng = np.random.default_rng(0)
    a = render(sample_scene(0, 1).objects, View(20, 0, 2.4)).rgb.numpy()
    b = np.clip(a.astype(int) + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(_reference_ssim(a, b), abs=1e-10)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert 0.1 < ssim(a, b) < 0.9


def test_psnr_of_a_known_error():
    a = np.full((16, 16, 3), 100, np.uint8)
    assert psnr(a, a + 10) == pytest.approx(20 * math.log10(255 / 10), abs=1e-9)
    assert psnr(a, a) == 100.0
    with pytest.raises(ValueError, match=r"differ in size"):
        psnr(a, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"must be an \(H, W, 3\) uint8"):
        psnr(a.astype(np.float32), a)


def test_labeller_reads_shaded_palette_colours_and_ignores_greys():
    shades = np.array([0.45, 0.6, 0.8, 1.0])
    px = np.array([[np.round(np.array(COLOUR_RGB[c]) * s) for s in shades] for c in COLOURS], np.uint8)
    labels = chroma_labels(px)  # (C, 4)
    assert (labels == torch.arange(len(COLOURS))[:, None]).all()
    greys = np.array([[[232, 232, 232], [196, 196, 196], [88, 88, 88], [10, 10, 10]]], np.uint8)
    assert (chroma_labels(greys) == -1).all()


def test_labeller_masks_match_the_renderer_on_shaded_faces():
    ious, fg = [], []
    for i in range(40):
        scene = sample_scene(21, i, SceneSpec(colour_jitter=15))
        truth = render(scene.objects, scene.views[0])
        rec = score_view(truth.rgb, truth, [o.colour for o in scene.objects])
        ious += [o["iou"] for o in rec["objects"]]
        fg.append(rec["fg_iou"])
        assert all(o["present"] and o["centroid_px"] < 1.0 for o in rec["objects"])
    assert len(ious) > 60
    assert np.mean(ious) >= 0.95 and np.mean(fg) >= 0.95, (np.mean(ious), np.mean(fg))


def test_hidden_objects_are_skipped_and_absent_colours_reported():
    scene = sample_scene(2, 5, SceneSpec(n_objects=(2,)))
    truth = render(scene.objects, scene.views[0])
    blank = np.full((64, 64, 3), 232, np.uint8)
    rec = score_view(blank, truth, [o.colour for o in scene.objects])
    assert rec["fg_iou"] == 0.0
    assert all(o["iou"] == 0.0 and not o["present"] and o["centroid_px"] is None for o in rec["objects"])
    assert score_view(blank, truth, [o.colour for o in scene.objects], min_visible=10**6)["objects"] == []
    # a small cube right behind a big one (seen along +X) is hidden: skipped, not scored as 0
    big, small = Object3D("cube", "red", (0.3, 0.0), 0.3), Object3D("sphere", "blue", (-0.4, 0.0), 0.1)
    hidden = render([big, small], View(5, 0, 2.4))
    assert [o["colour"] for o in score_view(hidden.rgb, hidden, ["red", "blue"])["objects"]] == ["red"]
    with pytest.raises(ValueError, match="1 colours for 2 rendered objects"):
        score_view(hidden.rgb, hidden, ["red"])


def test_copy_the_input_baseline_on_the_default_scenes():
    """The scene design: off-centre objects make copying the input a poor answer, centred ones a good one."""
    scenes = load_scenes(CASES / "shapes3d_novel_view.json")
    groups: dict[str, list] = {}
    for s in scenes:
        groups.setdefault(s.extra["group"], []).extend(copy_input_baseline(s))
    off = summarise(groups["off_centre_1"] + groups["off_centre_2"])
    centred = summarise(groups["centred_1"])
    assert 13.5 <= off["psnr"] <= 15.5 and 0.15 <= off["mask_iou"] <= 0.32, off
    assert centred["psnr"] >= 19.0 and centred["mask_iou"] >= 0.8, centred
    assert off["colour_present"] == 1.0


def test_novel_view_eval_copy_only_needs_no_model():
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "novel_view_eval.py"
    spec = importlib.util.spec_from_file_location("novel_view_eval", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--copy-only", "--per-group", "2"])
    assert result["model"] is None and result["psnr"] is None
    assert result["psnr_copy_input"] < 17 and result["mask_iou_copy_input"] < 0.4
    assert result["groups"]["centred_1"]["copy_input"]["mask_iou"] > 0.8
