"""Depth maps of a posed-view folder (nerfstudio depth_file_path) read by the multi-view edit pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.multiview_edit import load_depths, load_views
from worlds.shapes3d.nerfstudio import read_views, write_views
from worlds.shapes3d.scene import sample_scene


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_views(sample_scene(4, 0), tmp_path_factory.mktemp("views"), size=32)


def test_depths_equal_the_world_readers_and_match_the_views(folder):
    depths = load_depths(folder / "transforms.json")
    frames = read_views(folder)
    images, cameras = load_views(folder / "transforms.json")
    assert depths.shape == (len(frames), 32, 32) == (len(cameras), *images.shape[-2:])
    world = torch.from_numpy(np.stack([f.depth for f in frames])).float()
    assert torch.equal(torch.isinf(depths), torch.isinf(world))  # the ground beyond the disc: no surface
    finite = torch.isfinite(world)
    assert finite.float().mean() > 0.5 and torch.allclose(depths[finite], world[finite], atol=1e-6)


def test_no_depth_files_give_none_and_a_partial_set_is_refused(folder, tmp_path):
    data = json.loads((folder / "transforms.json").read_text())
    for frame in data["frames"]:
        frame["file_path"] = str(folder / frame["file_path"])
        frame["depth_file_path"] = str(folder / frame["depth_file_path"])
    bare = [{k: v for k, v in f.items() if k != "depth_file_path"} for f in data["frames"]]
    none = {**data, "frames": bare}
    (tmp_path / "none.json").write_text(json.dumps(none))
    assert load_depths(tmp_path / "none.json") is None
    partial = {**data, "frames": [none["frames"][0], *data["frames"][1:]]}
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    with pytest.raises(ValueError, match=r"partial.json: frames\[0\] has no depth_file_path"):
        load_depths(tmp_path / "partial.json")
    data["frames"][1]["depth_file_path"] = str(tmp_path / "missing.png")
    (tmp_path / "missing.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"frames\[1\].*depth file does not exist"):
        load_depths(tmp_path / "missing.json")
