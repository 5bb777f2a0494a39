"""The 3D shapes renderer: camera conventions, geometry exactness, depth reprojection, nerfstudio files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from worlds.shapes3d.camera import focal_from_fov, orbit_camera, reprojection_errors
from worlds.shapes3d.nerfstudio import (
    TransformsError,
    cameras_from_dict,
    read_views,
    transforms_dict,
    write_views,
)
from worlds.shapes3d.render import AMBIENT, DIFFUSE, GROUND_RGB, LIGHT_DIR, render
from worlds.shapes3d.scene import Object3D, Scene, View, sample_scene

F64 = torch.float64


def test_known_point_projects_to_the_analytic_pixel():
    # camera on +Y (azimuth 90), 30 degrees up: world +X is to its left, the origin at the centre
    r, e = 2.4, math.radians(30)
    cam = orbit_camera(View(30, 90, r), size=64)
    f = 32 / math.tan(math.radians(20))
    assert cam.fl_x == pytest.approx(f, abs=1e-12) and (cam.cx, cam.cy, cam.w, cam.h) == (32, 32, 64, 64)
    uv, z = cam.project(torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64))
    assert z.tolist() == pytest.approx([r, r], abs=1e-12)
    assert (uv[0] - torch.tensor([32 - f * 0.5 / r, 32.0], dtype=F64)).abs().max() < 1e-4
    assert (uv[1] - 32).abs().max() < 1e-9
    # azimuth 0 (camera on +X): +Y to the right, +Z up (image v decreases)
    cam0 = orbit_camera(View(0, 0, r), size=64)
    uv, z = cam0.project(torch.tensor([[0.0, 0.5, 0.3]], dtype=F64))
    expected = torch.tensor([32 + f * 0.5 / r, 32 - f * 0.3 / r], dtype=F64)
    assert (uv[0] - expected).abs().max() < 1e-4 and z.item() == pytest.approx(r)
    # a point straight up from the origin, seen from 30 degrees: above the centre by f tan(e) at depth
    uv, z = cam.project(torch.tensor([[0.0, 0.0, 0.4]], dtype=F64))
    depth = r - 0.4 * math.sin(e)
    assert z.item() == pytest.approx(depth, abs=1e-12)
    assert abs(uv[0, 1].item() - (32 - f * 0.4 * math.cos(e) / depth)) < 1e-4


def test_fov_and_camera_position_conventions():
    cam = orbit_camera(View(20, 135, 3.0, fov=60), size=32)
    assert cam.fl_x == pytest.approx(focal_from_fov(60, 32)) == pytest.approx(16 / math.tan(math.radians(30)))
    e, a = math.radians(20), math.radians(135)
    pos = 3.0 * torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)], dtype=F64)
    assert torch.allclose(cam.position, pos, atol=1e-12)
    # OpenGL: the camera looks along its -z axis at the origin, its y axis points up (positive world z)
    assert torch.allclose(-cam.c2w[:3, 2], -pos / pos.norm(), atol=1e-12) and cam.c2w[2, 1] > 0
    # the ray through a pixel centre passes through the points that project to it
    pts = torch.tensor([[0.1, -0.2, 0.3], [-0.4, 0.25, 0.05]], dtype=F64)
    uv, z = cam.project(pts)
    origin, dirs = cam.rays(1, F64)
    for p, (u, v), depth in zip(pts, uv, z, strict=True):
        d_cam = torch.tensor([(u - cam.cx) / cam.fl_x, -(v - cam.cy) / cam.fl_y, -1.0], dtype=F64)
        assert torch.allclose(origin + depth * (cam.c2w[:3, :3] @ d_cam), p, atol=1e-12)
    assert dirs.shape == (32, 32, 3)


def test_rendered_sphere_surface_lies_on_the_sphere_and_depth_is_z_depth():
    ball = Object3D("sphere", "red", (0.2, -0.1), 0.3)
    out = render([ball], View(25, 40, 2.4), size=64, dtype=F64)
    pts = out.camera.lift(out.depth)[out.ids == 0]  # (N, 3)
    assert pts.shape[0] > 200
    centre = torch.tensor([0.2, -0.1, 0.3], dtype=F64)
    assert ((pts - centre).norm(dim=-1) - 0.3).abs().max() < 1e-9
    uv, z = out.camera.project(pts)
    ii, jj = (out.ids == 0).nonzero().T
    assert (uv - torch.stack([jj + 0.5, ii + 0.5], -1)).abs().max() < 1e-9  # each hit reprojects to its pixel
    assert torch.allclose(z, out.depth[ii, jj], atol=1e-9)
    assert torch.allclose(out.distance[ii, jj], (pts - out.camera.position).norm(dim=-1), atol=1e-9)


@pytest.mark.parametrize("shape", ["cube", "cylinder", "cone"])
def test_rendered_surfaces_stay_inside_the_solid(shape):
    obj = Object3D(shape, "blue", (-0.1, 0.15), 0.25, yaw=30)
    out = render([obj], View(30, 200, 2.4), size=64, dtype=F64)
    p = out.camera.lift(out.depth)[out.ids == 0] - torch.tensor([-0.1, 0.15, 0.0], dtype=F64)
    assert p.shape[0] > 150
    assert p[:, 2].min() > -1e-9 and p[:, 2].max() < obj.height + 1e-9
    if shape == "cube":
        c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
        local = torch.stack([c * p[:, 0] + s * p[:, 1], -s * p[:, 0] + c * p[:, 1]], -1)
        assert local.abs().max() < 0.25 + 1e-9
        assert ((local.abs().max(-1).values - 0.25).abs() < 1e-9).sum() > 0  # side faces are hit
    else:
        radial = p[:, :2].norm(dim=-1)
        limit = 0.25 if shape == "cylinder" else 0.25 * (1 - p[:, 2] / obj.height)
        assert (radial - limit).max() < 1e-9


def test_cube_yaw_has_period_90_and_changes_the_silhouette():
    view = View(20, 10, 2.4)
    masks = {yaw: render([Object3D("cube", "green", (0.0, 0.0), 0.3, yaw=yaw)], view).masks
             for yaw in (0, 45, 90)}
    assert torch.equal(masks[0], masks[90])
    assert not torch.equal(masks[0], masks[45])


def test_shadow_falls_where_the_light_is_blocked():
    ball = Object3D("sphere", "yellow", (0.0, 0.0), 0.25)
    view = View(40, 140, 2.4)  # camera on the shadow side (the light comes from +X, -Y)
    out = render([ball], view, size=64, ss=1, dtype=F64)
    unshadowed = render([ball], view, size=64, ss=1, shadows=False, dtype=F64)
    light = torch.tensor(LIGHT_DIR, dtype=F64)
    light = light / light.norm()
    darker = (out.rgb != unshadowed.rgb).any(-1) & (out.ids == -1)
    assert darker.sum() > 20
    assert (out.rgb[darker][:, 0] == round(GROUND_RGB[0] * AMBIENT)).all()  # ambient light only
    # every darkened ground point's way to the light passes through the sphere, and no lit one's does
    pts = out.camera.lift(out.depth)
    centre = torch.tensor([0.0, 0.0, 0.25], dtype=F64)
    rel = centre - pts
    miss = (rel - (rel @ light)[..., None] * light).norm(dim=-1)  # distance of the centre from the ray
    ground = out.ids == -1
    assert (miss[darker] < 0.25).all() and (miss[ground & ~darker] > 0.25 - 0.02).all()
    lit = GROUND_RGB[0] * (AMBIENT + DIFFUSE * light[2].item())
    assert (out.rgb[ground & ~darker][:, 0].float() - lit).abs().max() <= 0.5


def test_masks_and_ids_agree_and_ground_is_optional():
    scene = sample_scene(3, 7)
    out = render(scene.objects, scene.views[0])
    assert out.coverage.shape == (len(scene.objects), 64, 64)
    seen = out.ids >= 0
    assert (out.masks.any(0) == seen).float().mean() > 0.97  # centre ray vs half coverage: edges only
    no_ground = render(scene.objects, scene.views[0], ground=False)
    assert torch.isinf(no_ground.depth[~(no_ground.ids >= 0)]).all()
    assert torch.isfinite(out.depth[out.depth.shape[0] - 1]).all()  # the bottom row sees the ground
    assert render(scene.objects, scene.views[0], size=32, ss=3).rgb.shape == (32, 32, 3)


def test_depth_lifted_from_one_view_agrees_with_another(tmp_path):
    """From the files alone: lift view i's depth PNG, project into view i+1, compare with its depth."""
    errs = []
    for index in range(3):
        scene = sample_scene(11, index)
        frames = read_views(write_views(scene, tmp_path / f"s{index}"))
        for a, b in zip(frames[:-1], frames[1:], strict=True):
            depth_a, depth_b = torch.from_numpy(a.depth), torch.from_numpy(b.depth)
            errs.append(reprojection_errors(a.camera, depth_a, b.camera, depth_b))
    rel = torch.cat(errs)
    assert rel.numel() > 10_000
    assert rel.median() <= 0.01, f"median relative depth error {rel.median():.4f}"


def test_transforms_json_round_trips(tmp_path):
    scene = sample_scene(5, 2)
    folder = write_views(scene, tmp_path / "views")
    data = json.loads((folder / "transforms.json").read_text())
    assert data["camera_model"] == "PINHOLE" and data["depth_unit_scale_factor"] == 1e-3
    assert {"fl_x", "fl_y", "cx", "cy", "w", "h"} <= set(data)
    frames = read_views(folder)
    for view, frame in zip(scene.views, frames, strict=True):
        cam = orbit_camera(view)
        assert torch.equal(frame.camera.c2w, cam.c2w)  # JSON floats round-trip exactly
        assert (frame.camera.fl_x, frame.camera.cx, frame.camera.w) == (cam.fl_x, cam.cx, cam.w)
        out = render(scene.objects, view)
        assert np.array_equal(frame.rgb, out.rgb.numpy())
        fin = np.isfinite(frame.depth)
        assert np.array_equal(fin, torch.isfinite(out.depth).numpy())
        assert np.abs(frame.depth[fin] - out.depth.numpy()[fin]).max() <= 0.5e-3 + 1e-6  # mm rounding
        assert np.array_equal(frame.ids, out.ids.numpy())
    files = [{"file_path": f["file_path"]} for f in data["frames"]]
    again = cameras_from_dict(transforms_dict([f.camera for f in frames], files))
    assert [c.c2w.tolist() for c in again] == [f["transform_matrix"] for f in data["frames"]]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.pop("fl_x"), "'fl_x'"),
    (lambda d: d.update(w=64.5), "frames[0].w = 64.5"),
    (lambda d: d["frames"][1]["transform_matrix"][0].__setitem__(0, 2.0),
     "frames[1]: transform_matrix rotation"),
    (lambda d: d["frames"][0]["transform_matrix"].__setitem__(3, [0, 0, 1, 1]), "last row"),
    (lambda d: d.update(camera_model="OPENCV_FISHEYE"), "camera_model"),
    (lambda d: d.update(frames=[]), "non-empty"),
])
def test_bad_transforms_are_refused_with_the_field_named(tmp_path, edit, message):
    data = json.loads((write_views(sample_scene(0, 1), tmp_path) / "transforms.json").read_text())
    edit(data)
    with pytest.raises(TransformsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cameras_from_dict(data)


def test_wrong_sized_depth_file_is_refused(tmp_path):
    from PIL import Image

    folder = write_views(Scene(sample_scene(0, 1).objects, (View(20, 0, 2.4),)), tmp_path)
    Image.fromarray(np.zeros((32, 32), np.uint16)).save(folder / "depth" / "frame_00000.png")
    with pytest.raises(TransformsError, match="is 32x32, the camera says 64x64"):
        read_views(folder)
