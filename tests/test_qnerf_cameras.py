"""QNeRF cameras: nerfstudio conventions, rays through latent-cell centres, transforms.json checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from attn_processors.qnerf.cameras import Cameras, from_c2w, parse_transforms, read_transforms, to_transforms
from worlds.shapes3d.camera import look_at, orbit_camera
from worlds.shapes3d.nerfstudio import write_views
from worlds.shapes3d.scene import View, sample_scene


def _orbit(views: int = 3, size: int = 64, dtype: torch.dtype = torch.float64) -> Cameras:
    cams = [orbit_camera(View(elevation=20.0 + 5 * i, azimuth=40.0 * i, radius=2.5), size)
            for i in range(views)]
    return from_c2w(torch.stack([c.c2w for c in cams]).to(dtype), fx=[c.fl_x for c in cams],
                    fy=[c.fl_y for c in cams], cx=[c.cx for c in cams], cy=[c.cy for c in cams],
                    width=size, height=size)


def test_known_point_projects_to_the_analytic_pixel() -> None:
    # a camera at (1, 2, 5) looking at (1, 2, 0) with y up: the camera frame is the world frame shifted
    c2w = look_at(torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64), torch.tensor([1.0, 2.0, 0.0],
                  dtype=torch.float64), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    for dtype in (torch.float64, torch.float32):
        cams = from_c2w(c2w[None].to(dtype), fx=100.0, fy=120.0, cx=64.0, cy=48.0, width=128, height=96)
        point = torch.tensor([[1.3, 1.6, -1.0]], dtype=dtype)  # 6 in front; 0.3 right, 0.4 down
        pixels, depth = cams.project(point)
        analytic = torch.tensor([64.0 + 100.0 * 0.3 / 6.0, 48.0 + 120.0 * 0.4 / 6.0], dtype=torch.float64)
        assert (pixels[0, 0].double() - analytic).abs().max() < 1e-4
        assert abs(float(depth[0, 0]) - 6.0) < 1e-5


def test_projection_matches_the_world_camera() -> None:
    cams = _orbit()
    points = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.5
    pixels, depth = cams.project(points)
    for v in range(len(cams)):
        world = orbit_camera(View(elevation=20.0 + 5 * v, azimuth=40.0 * v, radius=2.5), 64)
        uv, z = world.project(points)
        assert torch.allclose(pixels[v], uv, atol=1e-9) and torch.allclose(depth[v], z, atol=1e-12)


@pytest.mark.parametrize("grid", [(8, 8), (16, 16), (4, 6)])
def test_rays_pass_through_cell_centres(grid: tuple[int, int]) -> None:
    cams = _orbit(size=64)
    h, w = grid
    origins, dirs = cams.rays(h, w)
    assert origins.shape == dirs.shape == (3, h, w, 3)
    assert (dirs.norm(dim=-1) - 1).abs().max() < 1e-12
    assert torch.allclose(origins, cams.origins[:, None, None].expand_as(origins))
    points = (origins + 1.7 * dirs).reshape(3, -1, 3)
    for v in range(3):
        pixels, depth = cams.select([v]).project(points[v])
        i, j = torch.meshgrid(torch.arange(h).double(), torch.arange(w).double(), indexing="ij")
        centre = torch.stack([(j + 0.5) * 64 / w, (i + 0.5) * 64 / h], -1).reshape(-1, 2)
        assert (pixels[0] - centre).abs().max() < 1e-9
        assert (depth[0] > 0).all()


def test_latent_rays_hit_pixel_8j_plus_4_and_full_rays_match_the_world() -> None:
    cams = _orbit(views=1, size=512)
    origins, dirs = cams.rays(64, 64)
    pixels, _ = cams.project((origins + 2 * dirs).reshape(-1, 3))
    j = torch.arange(64, dtype=torch.float64)
    assert (pixels[0].reshape(64, 64, 2)[0, :, 0] - (8 * j + 4)).abs().max() < 1e-6
    small = _orbit(views=1, size=32)
    world = orbit_camera(View(elevation=20.0, azimuth=0.0, radius=2.5), 32)
    _, world_dirs = world.rays(1, torch.float64)  # z-depth parametrised, not unit
    world_dirs = world_dirs / world_dirs.norm(dim=-1, keepdim=True)
    assert torch.allclose(small.rays()[1][0], world_dirs, atol=1e-12)


def test_lift_inverts_project_at_cell_centres() -> None:
    cams = _orbit(views=2, size=64)
    depth = torch.full((2, 4, 8), 2.0, dtype=torch.float64)
    depth[1, 0, 0] = float("inf")
    points = cams.lift(depth)
    assert not torch.isfinite(points[1, 0, 0]).all()
    pixels, z = cams.select([0]).project(points[0].reshape(-1, 3))
    assert torch.allclose(z, torch.full_like(z, 2.0), atol=1e-12)
    assert torch.allclose(pixels[0, 9], torch.tensor([(1 + 0.5) * 8, (1 + 0.5) * 16], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"depth has shape \(3, 4, 8\)"):
        cams.lift(torch.ones(3, 4, 8))


def test_resized_covers_the_same_area_and_select_keeps_order() -> None:
    cams = _orbit(views=3, size=64)
    half = cams.resized(32, 16)
    point = torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64)
    full_px, full_z = cams.project(point)
    half_px, half_z = half.project(point)
    assert torch.allclose(half_px, full_px * torch.tensor([16 / 64, 32 / 64], dtype=torch.float64))
    assert torch.allclose(half_z, full_z) and (half.width, half.height) == (16, 32)
    picked = cams.select([2, 0])
    assert len(picked) == 2 and torch.equal(picked.c2w[0], cams.c2w[2])
    assert torch.equal(picked.fx[1], cams.fx[0])
    assert len(cams.select(slice(1, None))) == 2


def test_cameras_reject_bad_values() -> None:
    eye = torch.eye(4, dtype=torch.float64)[None]
    with pytest.raises(ValueError, match=r"c2w has shape \(4, 4\)"):
        Cameras(eye[0], *torch.ones(4, 1), width=4, height=4)
    with pytest.raises(ValueError, match=r"fx has shape \(2,\)"):
        Cameras(eye, torch.ones(2), *torch.ones(3, 1), width=4, height=4)
    with pytest.raises(ValueError, match="no camera"):
        from_c2w(eye[:0], fx=1.0, fy=1.0, cx=1.0, cy=1.0, width=4, height=4)
    with pytest.raises(ValueError, match="focal lengths must be positive"):
        from_c2w(eye, fx=0.0, fy=1.0, cx=1.0, cy=1.0, width=4, height=4)
    with pytest.raises(ValueError, match="width=0"):
        from_c2w(eye, fx=1.0, fy=1.0, cx=1.0, cy=1.0, width=0, height=4)
    with pytest.raises(ValueError, match="points has shape"):
        from_c2w(eye, fx=1.0, fy=1.0, cx=1.0, cy=1.0, width=4, height=4).project(torch.zeros(3))


def test_round_trip_with_the_world_writer(tmp_path: Path) -> None:
    folder = write_views(sample_scene(0, 0), tmp_path / "scene")
    cams, paths = read_transforms(folder / "transforms.json")
    data = json.loads((folder / "transforms.json").read_text())
    assert len(cams) == len(data["frames"]) == len(paths)
    assert all(p.is_file() and p.parent == folder / "images" for p in paths)
    for v, frame in enumerate(data["frames"]):
        assert torch.equal(cams.c2w[v], torch.tensor(frame["transform_matrix"], dtype=torch.float64))
    world = orbit_camera(sample_scene(0, 0).views[1], 64)
    assert torch.allclose(cams.c2w[1], world.c2w) and math.isclose(float(cams.fx[1]), world.fl_x)
    assert (cams.width, cams.height) == (64, 64)
    # our writer -> our reader is exact, and the world's reader accepts what we write
    (tmp_path / "ours.json").write_text(json.dumps(to_transforms(cams, [p.name for p in paths])))
    again, again_paths = read_transforms(tmp_path / "ours.json")
    assert torch.equal(again.c2w, cams.c2w) and torch.equal(again.fx, cams.fx)
    assert torch.equal(again.cy, cams.cy)
    assert again_paths[0] == tmp_path / paths[0].name
    with pytest.raises(ValueError, match="3 file paths for 4 cameras"):
        to_transforms(cams, ["a", "b", "c"])
    from worlds.shapes3d.nerfstudio import read_transforms as world_read

    world_cams, _ = world_read(tmp_path / "ours.json")
    assert torch.allclose(world_cams[2].c2w, cams.c2w[2]) and world_cams[2].cy == float(cams.cy[2])


def _valid() -> dict:
    frames = [{"file_path": name, "transform_matrix": torch.eye(4).tolist()} for name in ("a.png", "b.png")]
    return {"fl_x": 50.0, "fl_y": 50.0, "cx": 32.0, "cy": 32.0, "w": 64, "h": 64, "frames": frames}


def _broken(change) -> dict:
    data = _valid()
    change(data)
    return data


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["frames"][1].pop("transform_matrix"), r"frames\[1\] has no 'transform_matrix'"),
    (lambda d: d["frames"][1].update(transform_matrix=[[1, 0, 0], [0, 1, 0]]),
     r"frames\[1\]: .*shape \(2, 3\)"),
    (lambda d: d["frames"][1].update(transform_matrix="eye"), r"frames\[1\]: transform_matrix='eye'"),
    (lambda d: d["frames"][0]["transform_matrix"][0].__setitem__(3, float("nan")),
     r"frames\[0\]: .*non-finite"),
    (lambda d: d["frames"][1]["transform_matrix"][0].__setitem__(0, 2.0), r"frames\[1\]: .*not orthonormal"),
    (lambda d: d["frames"][1]["transform_matrix"][3].__setitem__(0, 1.0), r"frames\[1\]: .*last row"),
    (lambda d: d.pop("fl_y"), r"frames\[0\]: fl_y=None"),
    (lambda d: d["frames"][1].update(w=32), r"frames\[1\] is 32x64 \(w x h\) but frames\[0\] is 64x64"),
    (lambda d: d["frames"][1].update(cx=float("inf")), r"frames\[1\]: cx=inf"),
    (lambda d: d["frames"][0].pop("file_path"), r"frames\[0\] has no 'file_path'"),
    (lambda d: d.update(frames=[]), "'frames' must be a non-empty list"),
    (lambda d: d.update(k1=0.1), r"distortion \['k1'\]"),
    (lambda d: d.update(camera_model="EQUIRECTANGULAR"), "not a pinhole model"),
])
def test_malformed_transforms_name_the_file_and_frame(tmp_path: Path, change, message: str) -> None:
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(_broken(change)))
    with pytest.raises(ValueError, match=f"^{path}: .*{message}"):
        read_transforms(path)


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"{tmp_path / 'none.json'}: no such file"):
        read_transforms(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{frames: ")
    with pytest.raises(ValueError, match=f"{bad}: not valid JSON"):
        read_transforms(bad)
    with pytest.raises(ValueError, match="held: holds list"):
        parse_transforms([], source="held")
    cams, paths = parse_transforms(_valid())
    assert len(cams) == 2 and paths[1] == Path("b.png")
