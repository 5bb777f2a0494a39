"""benchmarks/qnerf_eval.py without the trained model: the edit parser and scene editing, the
reprojection consistency metric on ground-truth renders (its floor) against inconsistent views, the
committed case file equals its generator, a clear error when the model is missing, and one end-to-end
run on a tiny random-weight SD + ControlNet folder (fields only; the numbers mean nothing there)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import PIL.Image
import pytest
import torch
from diffusers import ControlNetModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import qnerf_eval  # noqa: E402

from attn_processors.testing.tiny import tiny_pipeline  # noqa: E402
from worlds.shapes3d.render import render  # noqa: E402
from worlds.shapes3d.scene import load_scenes  # noqa: E402

CASES = ROOT / "benchmarks" / "cases" / "qnerf_edit.json"


def test_case_file_is_the_generators_output_with_eight_views_and_both_edit_kinds():
    assert CASES.read_text() == qnerf_eval.dumps(qnerf_eval.case_scenes())
    scenes = load_scenes(CASES)
    assert all(len(s.views) == 8 for s in scenes)
    assert {s.extra["group"] for s in scenes} == {"colour", "shape"}
    for i, s in enumerate(scenes):
        edited, k = qnerf_eval.edited_scene(s, s.extra["edit"], f"scenes[{i}]")
        before, after = s.objects[k], edited.objects[k]
        assert (before.position, before.size) == (after.position, after.size)
        assert (before.colour != after.colour) == (s.extra["group"] == "colour")
        assert (before.shape != after.shape) == (s.extra["group"] == "shape")


@pytest.mark.parametrize("text, message", [
    ("red cube", "write it as 'red cube=>blue cube'"),
    ("red cub=>blue cube", "--edit from='red cub'"),
    ("red cube=>pink cube", "--edit to='pink cube'"),
])
def test_bad_edits_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        qnerf_eval.parse_edit(text)


def test_edit_must_name_exactly_one_object():
    scene = load_scenes(CASES)[0]
    with pytest.raises(ValueError, match=r"scenes\[0\].edit.from='green cube' matches 0 objects"):
        qnerf_eval.edited_scene(scene, {"from": "green cube", "to": "blue cube"}, "scenes[0]")


def test_consistency_floor_on_true_renders_is_small_and_inconsistent_views_score_higher():
    scene = load_scenes(CASES)[4]
    truth = [render(scene.objects, v, size=32) for v in scene.views[:4]]
    floor = qnerf_eval.consistency([t.rgb for t in truth], truth)
    assert 0 <= floor < 6  # colour is view-independent in this world: only resampling differs
    shuffled = [truth[(i + 1) % 4].rgb for i in range(4)]  # every view shows its neighbour's picture
    assert qnerf_eval.consistency(shuffled, truth) > floor + 5
    s, n = qnerf_eval.pair_error(truth[0].rgb, truth[1].rgb, truth[0].camera, truth[0].depth, truth[1].camera,
                                 truth[1].depth)
    assert n > 50 and s / n < 10  # co-visible pixels exist between neighbouring views


def test_edit_depths_hand_the_edit_the_chosen_geometry():
    scene = load_scenes(CASES)[4]  # a shape edit: the edited scene's depth differs from the source's
    edited, _ = qnerf_eval.edited_scene(scene, scene.extra["edit"], "scenes[4]")
    src = [render(scene.objects, v, size=32) for v in scene.views[:2]]
    gt = [render(edited.objects, v, size=32) for v in scene.views[:2]]
    assert not torch.equal(src[0].depth.nan_to_num(), gt[0].depth.nan_to_num())
    assert qnerf_eval.edit_depths(src, gt, "edited", "control") == (gt, gt)
    assert qnerf_eval.edit_depths(src, gt, "source", "control") == (src, src)
    assert qnerf_eval.edit_depths(src, gt, "source", "none") == (src, None)
    assert qnerf_eval.edit_depths(src, gt, "source", "edited") == (src, gt)
    with pytest.raises(ValueError, match="control='target'"):
        qnerf_eval.edit_depths(src, gt, "target", "control")


def test_tuning_cases_are_apart_from_the_reported_ones(tmp_path, capsys):
    out = tmp_path / "tune.json"
    assert qnerf_eval.main(["--write-cases", str(out), "--case-seed", "7301"])["seed"] == 7301
    tune, reported = load_scenes(out), load_scenes(CASES)
    assert len(tune) == len(reported)
    assert {s.objects for s in tune}.isdisjoint({s.objects for s in reported})


def test_missing_model_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no model there; train and export it first"):
        qnerf_eval.main(["--scenes", str(CASES), "--model", str(tmp_path / "none"), "--quick"])


def test_end_to_end_on_a_tiny_model(tmp_path, capsys):
    sd = tiny_pipeline("sd15")
    torch.manual_seed(0)
    sd.save_pretrained(tmp_path / "model")
    ControlNetModel.from_unet(sd.unet, conditioning_embedding_out_channels=(8, 16)).save_pretrained(
        tmp_path / "model" / "controlnet-depth")
    result = qnerf_eval.main(["--scenes", str(CASES), "--model", str(tmp_path / "model"), "--quick",
                              "--max-scenes", "1", "--views", "3", "--steps", "3", "--tau", "1",
                              "--fit-iters", "2", "--size", "16", "--edit", "red cone=>blue cone",
                              "--guidance-steps", "2",
                              "--grid", str(tmp_path / "grid.png")])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(result))
    assert set(last["methods"]) == {"per_view", "qnerf"} and last["scenes"] == 1 and last["size"] == 16
    for method in ("per_view", "qnerf"):
        row = last["methods"][method]
        assert {"consistency_error", "consistency_raw", "gt_psnr", "edit_success", "seconds"} <= set(row)
        assert row["consistency_raw"] >= 0 and row["seconds"] > 0 and 0 < row["gt_psnr"] < 100
    assert set(last["groups"]) == {"colour"} and last["groups"]["colour"] == last["methods"]
    grid = PIL.Image.open(tmp_path / "grid.png")
    assert grid.size == (3 * 16, 4 * 16)  # 3 views x (source, per_view, qnerf, truth)
    # one method, from a later scene, with the source views' depth as the edit's control
    one = qnerf_eval.main(["--scenes", str(CASES), "--model", str(tmp_path / "model"), "--quick",
                           "--first-scene", "5", "--max-scenes", "1", "--views", "2", "--steps", "2",
                           "--size", "16", "--methods", "per_view", "--control", "source"])
    assert set(one["methods"]) == {"per_view"} and set(one["groups"]) == {"shape"}
    # a run split over two processes merges into one result; parts of other runs do not
    logs = []
    for first in ("4", "5"):
        capsys.readouterr()
        qnerf_eval.main(["--scenes", str(CASES), "--model", str(tmp_path / "model"), "--quick",
                         "--first-scene", first, "--max-scenes", "1", "--views", "2", "--steps", "2",
                         "--size", "16", "--methods", "per_view", "--control", "source"])
        logs.append(tmp_path / f"part{first}.log")
        logs[-1].write_text(capsys.readouterr().out)
    merged = qnerf_eval.main(["--merge", *map(str, logs)])
    assert merged["scenes"] == 2 and [r["id"] for r in merged["per_scene"]] == ["shape-04", "shape-05"]
    assert merged["control"] == "source" and merged["methods"]["per_view"]["consistency_error"] is not None
    with pytest.raises(ValueError, match="appear twice"):
        qnerf_eval.merge([logs[0], logs[0]])
    assert one["control"] == "source" and last["guidance_steps"] == 2
