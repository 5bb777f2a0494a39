"""The default evaluation scene files of the 3D shapes world, generated (and regenerable) from seeds.

    python -m worlds.shapes3d.cases --out benchmarks/cases

writes ``shapes3d_novel_view.json`` and ``shapes3d_text_depth.json``; a test checks the committed
files equal this module's output, so the files can be read without this code and rebuilt with it.

Novel view (each scene: the source view first, then ``TARGETS`` views 30-120 degrees of azimuth
away, either side, elevation 10-35, radius 2.4). Groups (the ``"group"`` key):

* ``off_centre_1`` / ``off_centre_2``: one / two objects off the look-at point (0.1-0.5 from it);
  the acceptance numbers are computed on these;
* ``centred_1``: one object at the origin. Sphere, cylinder and cone look the same from every
  azimuth there, so copying the input scores high; reported apart;
* ``three``: three off-centre objects (harder, occlusions); reported apart.

Text + depth (``one`` / ``two`` objects, off-centre, ``TEXT_DEPTH_VIEWS`` views each): every view is
generated from the caption and that view's depth.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from .scene import Scene, SceneSpec, View, sample_scene

RADIUS = 2.4
ELEVATION = (10.0, 35.0)
TARGET_AZIMUTH = (30.0, 120.0)  # |azimuth change| of target views from the source
TARGETS = 3
TEXT_DEPTH_VIEWS = 2
OFF_CENTRE = SceneSpec(disc=0.5, min_offset=0.1, size=(0.2, 0.3), elevation=ELEVATION, radius=RADIUS, views=1)
# (group, objects, scenes, seed): seeds differ from the training generator's (worlds.shapes3d.train)
NOVEL_VIEW_GROUPS = (("off_centre_1", 1, 16, 9001), ("off_centre_2", 2, 16, 9002),
                     ("centred_1", 1, 8, 9003), ("three", 3, 8, 9004))
TEXT_DEPTH_GROUPS = (("one", 1, 24, 9101), ("two", 2, 24, 9102))


def _round(x: float) -> float:
    return round(float(x), 2)


def novel_view_scene(group: str, n_objects: int, seed: int, index: int) -> Scene:
    """Scene ``index`` of a group: objects from the generator, then a source and ``TARGETS`` targets."""
    spec = replace(OFF_CENTRE, n_objects=(n_objects,), centred=group.startswith("centred"))
    scene = sample_scene(seed, index, spec)
    rng = np.random.default_rng([seed, index, 1])
    src = scene.views[0]
    targets = []
    for _ in range(TARGETS):
        delta = rng.uniform(*TARGET_AZIMUTH) * rng.choice([-1.0, 1.0])
        targets.append(View(_round(rng.uniform(*ELEVATION)), _round((src.azimuth + delta) % 360), RADIUS))
    return Scene(scene.objects, (src, *targets), {"group": group, "id": f"{group}-{index:02d}"})


def text_depth_scene(group: str, n_objects: int, seed: int, index: int) -> Scene:
    spec = replace(OFF_CENTRE, n_objects=(n_objects,), views=TEXT_DEPTH_VIEWS)
    scene = sample_scene(seed, index, spec)
    return Scene(scene.objects, scene.views, {"group": group, "id": f"{group}-{index:02d}"})


def novel_view_cases() -> list[Scene]:
    return [novel_view_scene(g, n, seed, i) for g, n, count, seed in NOVEL_VIEW_GROUPS for i in range(count)]


def text_depth_cases() -> list[Scene]:
    return [text_depth_scene(g, n, seed, i) for g, n, count, seed in TEXT_DEPTH_GROUPS for i in range(count)]


def dumps(scenes: list[Scene]) -> str:
    """One scene per line: diff-friendly and still one JSON list."""
    return "[\n" + ",\n".join(json.dumps(s.to_dict()) for s in scenes) + "\n]\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/cases"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, scenes in (("shapes3d_novel_view.json", novel_view_cases()),
                         ("shapes3d_text_depth.json", text_depth_cases())):
        (args.out / name).write_text(dumps(scenes))
        print(json.dumps({"file": str(args.out / name), "scenes": len(scenes),
                          "views": sum(len(s.views) for s in scenes)}))


if __name__ == "__main__":
    main()
