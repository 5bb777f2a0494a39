"""Scene files of the 3D shapes world: format, validation messages, seeded generator, default cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from worlds.shapes3d.cases import (
    NOVEL_VIEW_GROUPS,
    TARGET_AZIMUTH,
    dumps,
    novel_view_cases,
    text_depth_cases,
)
from worlds.shapes3d.scene import (
    MAX_OBJECTS,
    Object3D,
    Scene,
    SceneError,
    SceneSpec,
    View,
    load_scenes,
    sample_scene,
    save_scenes,
)

CASES = Path(__file__).resolve().parents[1] / "benchmarks" / "cases"
GOOD = {"objects": [{"shape": "cube", "colour": "red", "position": [0.3, -0.1], "size": 0.2, "yaw": 15},
                    {"shape": "cone", "colour": "blue", "position": [-0.3, 0.2], "size": 0.15, "yaw": 0}],
        "views": [{"elevation": 20, "azimuth": 0, "radius": 2.4},
                  {"elevation": 30, "azimuth": 90, "radius": 2.4, "fov": 50}],
        "group": "demo"}


def test_scene_round_trips_through_dict_and_file(tmp_path):
    scene = Scene.from_dict(GOOD)
    assert scene.objects[0] == Object3D("cube", "red", (0.3, -0.1), 0.2, 15.0)
    assert scene.views[1] == View(30, 90, 2.4, fov=50) and scene.views[0].fov == 40
    assert scene.extra == {"group": "demo"}
    assert Scene.from_dict(scene.to_dict()).to_dict() == scene.to_dict()
    save_scenes([scene, sample_scene(0, 3)], tmp_path / "s.json")
    back = load_scenes(tmp_path / "s.json")
    assert back[0] == scene and back[0].extra == {"group": "demo"} and back[1] == sample_scene(0, 3)


def _edit(path: str, value: object) -> list[dict]:
    """GOOD with ``value`` at a dotted path ("objects.1.colour"); value None deletes the key."""
    scene = json.loads(json.dumps(GOOD))
    *head, last = path.split(".")
    node = scene
    for key in head:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is None:
        del node[int(last) if last.isdigit() else last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return [GOOD, scene]


@pytest.mark.parametrize(("path", "value", "message"), [
    ("objects.1.colour", "pink", r"scenes\[1\].objects\[1\].colour = 'pink' is not a colour"),
    ("objects.0.shape", "pyramid", r"scenes\[1\].objects\[0\].shape = 'pyramid' is not a shape"),
    ("objects.0.size", -0.1, r"scenes\[1\].objects\[0\].size = -0.1 must be a positive"),
    ("objects.0.position", [0.1], r"scenes\[1\].objects\[0\].position = \[0.1\] must be a list \[x, y\]"),
    ("objects.0.yaw", "north", r"scenes\[1\].objects\[0\].yaw = 'north' is not a finite number"),
    ("objects.0.scale", 2, r"scenes\[1\].objects\[0\] has unknown keys \['scale'\]"),
    ("views.0.radius", None, r"scenes\[1\].views\[0\].radius is missing"),
    ("views.1.elevation", 90, r"scenes\[1\].views\[1\].elevation = 90.0 must be in \(-90, 90\)"),
    ("views.1.fov", 0, r"scenes\[1\].views\[1\].fov = 0.0 must be in \(0, 180\)"),
    ("views", [], r"scenes\[1\].views is empty"),
    ("objects.1.colour", "red", r"scenes\[1\].objects repeat a colour"),
    ("objects.1.position", [0.35, 0.0], r"scenes\[1\].objects\[1\] \(blue cone\) overlaps objects\[0\]"),
])
def test_a_bad_field_is_named_in_the_error(tmp_path, path, value, message):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(_edit(path, value)))
    with pytest.raises(SceneError, match=message):
        load_scenes(f)


def test_file_level_errors(tmp_path):
    with pytest.raises(SceneError, match="does not exist"):
        load_scenes(tmp_path / "missing.json")
    (tmp_path / "a.json").write_text(json.dumps(GOOD))
    with pytest.raises(SceneError, match="non-empty JSON list of scenes"):
        load_scenes(tmp_path / "a.json")
    (tmp_path / "b.json").write_text("[{")
    with pytest.raises(SceneError, match="not valid JSON"):
        load_scenes(tmp_path / "b.json")
    with pytest.raises(SceneError, match="1 to 3"):
        Scene.from_dict({**GOOD, "objects": []})


def test_generator_is_deterministic_and_keeps_its_constraints():
    assert sample_scene(4, 17) == sample_scene(4, 17)
    assert sample_scene(4, 17) != sample_scene(4, 18) and sample_scene(4, 17) != sample_scene(5, 17)
    spec = SceneSpec(disc=0.5, min_offset=0.1, gap=0.05)
    counts = set()
    for i in range(200):
        scene = sample_scene(1, i, spec)
        counts.add(len(scene.objects))
        assert 1 <= len(scene.objects) <= MAX_OBJECTS and len(scene.views) == spec.views
        for obj in scene.objects:
            assert spec.min_offset - 1e-4 <= math.hypot(*obj.position) <= spec.disc + 1e-4
            assert spec.size[0] - 1e-4 <= obj.size <= spec.size[1] + 1e-4
        for a in scene.objects:
            for b in scene.objects:
                if a is not b:
                    assert math.dist(a.position, b.position) >= a.footprint + b.footprint + spec.gap - 1e-3
        assert all(spec.elevation[0] <= v.elevation <= spec.elevation[1] for v in scene.views)
    assert counts == {1, 2, 3}
    centred = sample_scene(0, 0, SceneSpec(n_objects=(1,), centred=True))
    assert centred.objects[0].position == (0.0, 0.0)
    with pytest.raises(SceneError, match="n_objects=\\(1,\\)"):
        sample_scene(0, 0, SceneSpec(centred=True))
    jittered = sample_scene(0, 0, SceneSpec(colour_jitter=15))
    assert all(o.rgb is not None for o in jittered.objects)


def _wrapped(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


def test_committed_case_files_are_the_generators_output():
    assert (CASES / "shapes3d_novel_view.json").read_text() == dumps(novel_view_cases())
    assert (CASES / "shapes3d_text_depth.json").read_text() == dumps(text_depth_cases())


def test_novel_view_cases_follow_the_design():
    scenes = load_scenes(CASES / "shapes3d_novel_view.json")
    groups = {g: n for g, n, _, _ in NOVEL_VIEW_GROUPS}
    assert {s.extra["group"] for s in scenes} == set(groups)
    for s in scenes:
        group = s.extra["group"]
        assert len(s.objects) == groups[group]
        src = s.views[0]
        for target in s.views[1:]:
            delta = _wrapped(target.azimuth, src.azimuth)
            assert TARGET_AZIMUTH[0] - 0.01 <= delta <= TARGET_AZIMUTH[1] + 0.01
        dist = [math.hypot(*o.position) for o in s.objects]
        assert (max(dist) == 0) if group == "centred_1" else (min(dist) >= 0.1 - 1e-4)
    text = load_scenes(CASES / "shapes3d_text_depth.json")
    assert {len(s.objects) for s in text} == {1, 2} and all(len(s.views) == 2 for s in text)


def test_objects_built_in_code_equal_objects_read_from_json():
    a = Object3D("sphere", "green", [0.1, 0.2], 0.2, rgb=[1, 2, 3])  # lists, as json.load gives them
    assert a.position == (0.1, 0.2) and a.rgb == (1, 2, 3)
    assert Object3D.from_dict(a.to_dict()) == a and hash(a) == hash(Object3D.from_dict(a.to_dict()))
