"""Pinhole cameras of the 3D shapes world in the nerfstudio / OpenGL convention.

``c2w`` is camera-to-world (4x4): the camera's x axis points right, y up, and it looks along -z
(OpenGL, as nerfstudio's ``transforms.json`` stores it). Intrinsics are ``fl_x, fl_y, cx, cy`` in
pixels on a ``w x h`` image; the centre of pixel (row i, column j) is at image point
``(u, v) = (j + 0.5, i + 0.5)`` with v growing downwards, so the look-at point projects to
``(w / 2, h / 2)``. Depth is z-depth: the distance along the camera's viewing axis, ``-z_cam``.

>>> cam = orbit_camera(View(elevation=30, azimuth=45, radius=2.4), size=64)
>>> uv, z = cam.project(torch.zeros(1, 3, dtype=torch.float64))
>>> [round(float(c), 9) for c in uv[0]], round(float(z[0]), 9)
([32.0, 32.0], 2.4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attn_processors.qnerf.cameras import Cameras, from_c2w

from .scene import View


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: ``c2w`` (4, 4) float64 OpenGL camera-to-world, intrinsics in pixels."""

    c2w: torch.Tensor  # (4, 4) float64
    fl_x: float
    fl_y: float
    cx: float
    cy: float
    w: int
    h: int

    def __post_init__(self) -> None:
        if tuple(self.c2w.shape) != (4, 4):
            raise ValueError(f"c2w must be a 4x4 matrix, got shape {tuple(self.c2w.shape)}")
        if self.w < 1 or self.h < 1 or self.fl_x <= 0 or self.fl_y <= 0:
            raise ValueError(f"need w, h >= 1 and positive focal lengths, got w={self.w} h={self.h} "
                             f"fl_x={self.fl_x} fl_y={self.fl_y}")

    @property
    def position(self) -> torch.Tensor:
        return self.c2w[:3, 3]

    def world_to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 3) world points -> (..., 3) camera coordinates (OpenGL: visible points have z < 0)."""
        rot, pos = self.c2w[:3, :3].to(points.dtype), self.position.to(points.dtype)
        return (points - pos) @ rot  # R^T (p - t), row-vector form

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., 3) world points -> pixel coordinates (..., 2) as (u, v), z-depth (...)."""
        pc = self.world_to_camera(points)
        z = -pc[..., 2]
        u = self.cx + self.fl_x * pc[..., 0] / z
        v = self.cy - self.fl_y * pc[..., 1] / z
        return torch.stack([u, v], -1), z

    def pixel_grid(self, ss: int = 1, dtype: torch.dtype = torch.float32
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image points of ``ss x ss`` sub-pixel centres per pixel: u, v each (h*ss, w*ss)."""
        j = (torch.arange(self.w * ss, dtype=dtype) + 0.5) / ss
        i = (torch.arange(self.h * ss, dtype=dtype) + 0.5) / ss
        v, u = torch.meshgrid(i, j, indexing="ij")
        return u, v

    def ray_components(self, ss: int = 1, dtype: torch.dtype = torch.float32
                       ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Origin (3 scalars) and direction components (3 x (h*ss*w*ss,)) of the sub-pixel rays.

        Directions are *not* unit length: their camera-frame z component is -1, so a hit at ray
        parameter t has z-depth exactly t.
        """
        u, v = self.pixel_grid(ss, dtype)
        x, y = ((u - self.cx) / self.fl_x).reshape(-1), (-(v - self.cy) / self.fl_y).reshape(-1)
        r = self.c2w[:3, :3].tolist()
        dirs = tuple(r[c][0] * x + r[c][1] * y - r[c][2] for c in range(3))  # R @ (x, y, -1)
        return tuple(self.position.to(dtype)), dirs

    def rays(self, ss: int = 1, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Ray origin (3,) and directions (h*ss, w*ss, 3) through sub-pixel centres (z-depth = t)."""
        origin, dirs = self.ray_components(ss, dtype)
        return torch.stack(origin), torch.stack(dirs, -1).reshape(self.h * ss, self.w * ss, 3)

    def lift(self, depth: torch.Tensor) -> torch.Tensor:
        """(h, w) z-depth at pixel centres -> (h, w, 3) world points (inf depth gives inf/nan points)."""
        if tuple(depth.shape) != (self.h, self.w):
            raise ValueError(f"depth must be ({self.h}, {self.w}) for this camera, got {tuple(depth.shape)}")
        origin, dirs = self.rays(1, depth.dtype)
        return origin + dirs * depth[..., None]


def look_at(position: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """OpenGL camera-to-world (4, 4) float64 for a camera at ``position`` looking at ``target``."""
    forward = target - position
    forward = forward / forward.norm()
    right = torch.linalg.cross(forward, up)
    if right.norm() < 1e-9:
        raise ValueError("the viewing direction is parallel to 'up'; lower the elevation below 90 degrees")
    right = right / right.norm()
    cam_up = torch.linalg.cross(right, forward)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, cam_up, -forward, position
    return c2w


def view_position(view: View) -> torch.Tensor:
    """(3,) float64 camera centre: radius * (cos e cos a, cos e sin a, sin e), world Z-up."""
    e, a = math.radians(view.elevation), math.radians(view.azimuth)
    return view.radius * torch.tensor(
        [math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)], dtype=torch.float64)


def focal_from_fov(fov_degrees: float, size: int) -> float:
    """Focal length in pixels that spans ``fov_degrees`` over ``size`` pixels."""
    return 0.5 * size / math.tan(math.radians(fov_degrees) / 2)


def orbit_camera(view: View, size: int = 64) -> Camera:
    """The camera of a scene-file view: on its orbit, looking at the origin, Z up, square image."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size = {size!r} must be a positive int (pixels per side)")
    c2w = look_at(view_position(view), torch.zeros(3, dtype=torch.float64),
                  torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    f = focal_from_fov(view.fov, size)
    return Camera(c2w, f, f, size / 2, size / 2, size, size)


def reprojection_errors(cam_a: Camera, depth_a: torch.Tensor, cam_b: Camera, depth_b: torch.Tensor
                        ) -> torch.Tensor:
    """Relative z-depth errors (N,) of view a's surface points seen from view b.

    Each finite pixel of ``depth_a`` (h, w) is lifted to the world, projected into b, and its
    z-depth there compared with ``depth_b`` interpolated at the point it lands on: bilinear in
    inverse depth, which is exact on a plane (1/z is affine in image coordinates over a plane), so
    grazing ground pixels do not read as errors. Points whose four neighbours in b are not all
    surfaces, or that land outside b, are left out; occluded points keep large errors (which is
    why callers look at the median).
    """
    ok = torch.isfinite(depth_a)
    pts = cam_a.lift(depth_a.where(ok, 0.0))[ok]  # (N, 3)
    uv, z = cam_b.project(pts)
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5  # pixel-centre grid coordinates
    j0, i0 = x.floor().long(), y.floor().long()
    inside = (i0 >= 0) & (i0 + 1 < cam_b.h) & (j0 >= 0) & (j0 + 1 < cam_b.w) & (z > 0)
    x, y, z, i0, j0 = x[inside], y[inside], z[inside], i0[inside], j0[inside]
    fx, fy = x - j0, y - i0
    corners = [(i0, j0, (1 - fx) * (1 - fy)), (i0, j0 + 1, fx * (1 - fy)),
               (i0 + 1, j0, (1 - fx) * fy), (i0 + 1, j0 + 1, fx * fy)]
    depths = torch.stack([depth_b[i, j] for i, j, _ in corners])  # (4, M)
    weights = torch.stack([w for _, _, w in corners]).to(depths.dtype)
    seen = torch.isfinite(depths).all(0)
    target = 1.0 / (weights[:, seen] / depths[:, seen]).sum(0)
    return (z[seen] - target).abs() / target


def to_cameras(cameras: list[Camera]) -> Cameras:
    """The world's cameras as the library's ``Cameras`` (same nerfstudio convention), for QNeRF."""
    if not cameras or len({(c.w, c.h) for c in cameras}) != 1:
        raise ValueError(f"need one or more cameras of one size, got sizes {[(c.w, c.h) for c in cameras]}")
    return from_c2w(torch.stack([c.c2w for c in cameras]), fx=[c.fl_x for c in cameras],
                    fy=[c.fl_y for c in cameras], cx=[c.cx for c in cameras], cy=[c.cy for c in cameras],
                    width=cameras[0].w, height=cameras[0].h)
