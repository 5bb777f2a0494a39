"""Posed pinhole cameras of a multi-view scene, read from a nerfstudio ``transforms.json``.

Conventions (nerfstudio's, the same as the 3D shapes world's ``worlds/shapes3d/camera.py``):
``c2w`` is the OpenGL camera-to-world matrix (camera x right, y up, looking along -z); intrinsics
``fx, fy, cx, cy`` are in pixels of a ``width x height`` image whose pixel (row i, column j) has its
centre at image point ``(u, v) = (j + 0.5, i + 0.5)``, v growing downwards. Depth is z-depth, the
distance along the viewing axis (``-z`` in camera coordinates), positive in front.

A query map of a self-attention layer is a coarser grid over the same image: ``rays(h, w)`` casts
one ray per cell through its centre, so rays at latent resolution pass through latent-cell centres
(for a 512-px image and a 64x64 map, through pixel ``8j + 4``; paper §3.2, our reading).

>>> import torch
>>> cams = from_c2w(torch.eye(4)[None], fx=32.0, fy=32.0, cx=32.0, cy=32.0, width=64, height=64)
>>> pixels, depth = cams.project(torch.tensor([[0.0, 0.0, -2.0]]))
>>> pixels.tolist(), depth.tolist()
([[[32.0, 32.0]]], [[2.0]])
>>> origins, dirs = cams.rays(2, 2)
>>> origins.shape, [round(float(c), 4) for c in dirs[0, 0, 0]]
(torch.Size([1, 2, 2, 3]), [-0.4082, 0.4082, -0.8165])
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

Tensor = torch.Tensor
INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")  # nerfstudio's keys, global or per frame
_DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")


@dataclass(frozen=True)
class Cameras:
    """V pinhole cameras sharing one image size: ``c2w`` [V, 4, 4], ``fx, fy, cx, cy`` [V]."""

    c2w: Tensor  # [V, 4, 4] OpenGL camera-to-world
    fx: Tensor  # [V] focal lengths and principal point, in pixels
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: int  # image size in pixels
    height: int

    def __post_init__(self) -> None:
        if self.c2w.ndim != 3 or tuple(self.c2w.shape[1:]) != (4, 4) or not self.c2w.is_floating_point():
            raise ValueError(f"c2w has shape {tuple(self.c2w.shape)} ({self.c2w.dtype}); give float "
                             "camera-to-world matrices [V, 4, 4]")
        views = self.c2w.shape[0]
        if views == 0:
            raise ValueError("c2w holds no camera; give at least one view")
        for name in ("fx", "fy", "cx", "cy"):
            value = torch.as_tensor(getattr(self, name)).to(self.c2w)
            if tuple(value.shape) != (views,):
                raise ValueError(f"{name} has shape {tuple(value.shape)}; give one value per camera, "
                                 f"[{views}]")
            object.__setattr__(self, name, value)
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}; give the image size as a positive int (pixels)")
        if not (torch.isfinite(self.c2w).all() and torch.isfinite(self.cx).all()
                and torch.isfinite(self.cy).all()):
            raise ValueError("c2w, cx or cy hold non-finite values; give finite camera parameters")
        if not ((self.fx > 0).all() and (self.fy > 0).all()):
            raise ValueError(f"fx={self.fx.tolist()}, fy={self.fy.tolist()}; focal lengths must be "
                             "positive (pixels)")

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def origins(self) -> Tensor:
        """[V, 3] camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    @property
    def forward(self) -> Tensor:
        """[V, 3] unit viewing axes (-z of each camera); z-depth = (p - origin) . forward."""
        return -self.c2w[:, :3, 2]

    def select(self, indices: Sequence[int] | Tensor | slice) -> Cameras:
        """The cameras at ``indices`` (in that order)."""
        if not isinstance(indices, slice):
            indices = torch.as_tensor(indices, dtype=torch.long, device=self.c2w.device).reshape(-1)
        return replace(self, c2w=self.c2w[indices], fx=self.fx[indices], fy=self.fy[indices],
                       cx=self.cx[indices], cy=self.cy[indices])

    def resized(self, height: int, width: int) -> Cameras:
        """The same cameras on a ``height x width`` image covering the same area (intrinsics scaled)."""
        sx, sy = width / self.width, height / self.height
        return replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy,
                       width=width, height=height)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cameras:
        """The same cameras with their tensors on ``device`` / in ``dtype``."""
        fx, fy, cx, cy = (t.to(device, dtype) for t in (self.fx, self.fy, self.cx, self.cy))
        return replace(self, c2w=self.c2w.to(device, dtype), fx=fx, fy=fy, cx=cx, cy=cy)

    def rays(self, height: int | None = None, width: int | None = None) -> tuple[Tensor, Tensor]:
        """Origins and unit directions [V, h, w, 3] through the centres of an ``h x w`` cell grid.

        The grid covers the whole image (default: one cell per pixel); cell (i, j) has its centre at
        ``(j + 0.5, i + 0.5)`` in grid units, i.e. image point ``((j + 0.5) W / w, (i + 0.5) H / h)``.
        """
        h, w = height or self.height, width or self.width
        cams = self.resized(h, w)
        j = torch.arange(w, dtype=self.c2w.dtype, device=self.c2w.device) + 0.5
        i = torch.arange(h, dtype=self.c2w.dtype, device=self.c2w.device) + 0.5
        x = (j[None, None, :] - cams.cx[:, None, None]) / cams.fx[:, None, None]  # [V, 1, w]
        y = -(i[None, :, None] - cams.cy[:, None, None]) / cams.fy[:, None, None]  # [V, h, 1]
        x, y = torch.broadcast_tensors(x, y)  # [V, h, w]
        local = torch.stack([x, y, -torch.ones_like(x)], -1)  # [V, h, w, 3] camera frame
        dirs = torch.einsum("vij,vhwj->vhwi", self.c2w[:, :3, :3], local)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        return self.origins[:, None, None, :].expand_as(dirs), dirs

    def lift(self, depth: Tensor) -> Tensor:
        """z-depth maps [V, h, w] at cell centres -> world points [V, h, w, 3] (inf depth: non-finite)."""
        if depth.ndim != 3 or depth.shape[0] != len(self):
            raise ValueError(f"depth has shape {tuple(depth.shape)}; give z-depth maps [V={len(self)}, h, w]")
        origins, dirs = self.rays(depth.shape[1], depth.shape[2])
        cos = (dirs * self.forward[:, None, None]).sum(-1)  # z-depth per unit of ray length
        return origins + dirs * (depth.to(dirs) / cos)[..., None]

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """World points [N, 3] -> pixels [V, N, 2] as (x, y) image points, z-depth [V, N]."""
        if points.ndim != 2 or points.shape[-1] != 3:
            raise ValueError(f"points has shape {tuple(points.shape)}; give world points [N, 3]")
        rot, pos = self.c2w[:, :3, :3].to(points.dtype), self.origins.to(points.dtype)
        local = torch.einsum("vji,vnj->vni", rot, points[None] - pos[:, None])  # R^T (p - t)
        depth = -local[..., 2]
        u = self.cx.to(points.dtype)[:, None] + self.fx.to(points.dtype)[:, None] * local[..., 0] / depth
        v = self.cy.to(points.dtype)[:, None] - self.fy.to(points.dtype)[:, None] * local[..., 1] / depth
        return torch.stack([u, v], -1), depth


def from_c2w(c2w: Tensor, *, fx: float | Sequence[float] | Tensor, fy: float | Sequence[float] | Tensor,
             cx: float | Sequence[float] | Tensor, cy: float | Sequence[float] | Tensor,
             width: int, height: int) -> Cameras:
    """Cameras from matrices [V, 4, 4] and intrinsics given once (shared) or per camera."""
    views = c2w.shape[0] if c2w.ndim == 3 else -1

    def per_view(value: float | Sequence[float] | Tensor) -> Tensor:
        t = torch.as_tensor(value, dtype=c2w.dtype if c2w.is_floating_point() else torch.float64)
        return t.expand(views).clone() if t.ndim == 0 and views >= 0 else t

    return Cameras(c2w, per_view(fx), per_view(fy), per_view(cx), per_view(cy), width, height)


def to_transforms(cameras: Cameras, file_paths: Sequence[str | Path]) -> dict[str, Any]:
    """nerfstudio ``transforms.json`` content: shared size at the top, intrinsics per frame."""
    if len(file_paths) != len(cameras):
        raise ValueError(f"{len(file_paths)} file paths for {len(cameras)} cameras; give one per camera")
    frames = [{"file_path": str(path), "fl_x": float(cameras.fx[i]), "fl_y": float(cameras.fy[i]),
               "cx": float(cameras.cx[i]), "cy": float(cameras.cy[i]),
               "transform_matrix": cameras.c2w[i].double().tolist()} for i, path in enumerate(file_paths)]
    return {"camera_model": "PINHOLE", "w": cameras.width, "h": cameras.height, "frames": frames}


# ------------------------------------------------------------------------------- reading a file
def read_transforms(path: str | Path) -> tuple[Cameras, list[Path]]:
    """The cameras (float64, frame order) and image paths (resolved next to the file) of a transforms.json.

    Every problem raises one ``ValueError`` naming the file and, where it is in one, the frame.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file; give the path of a nerfstudio transforms.json")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    return parse_transforms(data, source=str(path), root=path.parent)


def parse_transforms(data: object, *, source: str = "transforms.json", root: Path | None = None
                     ) -> tuple[Cameras, list[Path]]:
    """:func:`read_transforms` on content already loaded; ``source`` names it in errors."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: holds {type(data).__name__}; expected an object with 'frames'")
    _check_pinhole(data, source)
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{source}: 'frames' must be a non-empty list of views")
    rows, mats, paths = [], [], []
    for index, frame in enumerate(frames):
        where = f"{source}: frames[{index}]"
        if not isinstance(frame, dict):
            raise ValueError(f"{where} is {type(frame).__name__}; expected an object")
        rows.append(_frame_intrinsics(frame, data, where))
        if "transform_matrix" not in frame:
            raise ValueError(f"{where} has no 'transform_matrix'; every view needs its camera-to-world pose")
        mats.append(c2w_from_json(frame["transform_matrix"], where))
        file_path = frame.get("file_path")
        if not isinstance(file_path, str) or not file_path:
            raise ValueError(f"{where} has no 'file_path'; give the image path relative to the json")
        paths.append((root or Path(".")) / file_path)
        if rows[-1][4:] != rows[0][4:]:
            raise ValueError(f"{where} is {rows[-1][4]:g}x{rows[-1][5]:g} (w x h) but frames[0] is "
                             f"{rows[0][4]:g}x{rows[0][5]:g}; resize the views to one size")
    k = torch.tensor(rows, dtype=torch.float64)  # [V, 6]: fx, fy, cx, cy, w, h
    cams = Cameras(torch.stack(mats), k[:, 0], k[:, 1], k[:, 2], k[:, 3], int(rows[0][4]), int(rows[0][5]))
    return cams, paths


def _check_pinhole(data: dict[str, Any], source: str) -> None:
    model = data.get("camera_model", "OPENCV")
    if model not in ("PINHOLE", "SIMPLE_PINHOLE", "OPENCV"):
        raise ValueError(f"{source}: camera_model={model!r} is not a pinhole model; undistort the views "
                         "and write 'PINHOLE'")
    bent = [key for key in _DISTORTION if data.get(key, 0) not in (0, 0.0)]
    if bent:
        raise ValueError(f"{source}: distortion {bent} is not supported; undistort the views first "
                         "(these cameras are ideal pinholes)")


def _frame_intrinsics(frame: dict[str, Any], top: dict[str, Any], where: str) -> list[float]:
    """fx, fy, cx, cy, w, h of one frame (the frame's own value wins over the global one)."""
    values = []
    for key in INTRINSICS:
        value = frame.get(key, top.get(key))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: {key}={value!r}; give a finite number in the frame or at the top "
                             "level")
        positive = key in ("fl_x", "fl_y", "w", "h")
        if (positive and value <= 0) or (key in ("w", "h") and value != int(value)):
            raise ValueError(f"{where}: {key}={value!r}; focal lengths and sizes are positive "
                             "(sizes whole pixels)")
        values.append(float(value))
    return values


def c2w_from_json(value: object, where: str) -> Tensor:
    """A validated OpenGL camera-to-world matrix (4x4, rigid, last row 0 0 0 1) from JSON content.

    ``where`` starts the error message (the file and frame); public so that other readers of
    nerfstudio files (the 3D world's) can share the check.
    """
    try:
        m = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{where}: transform_matrix={value!r:.60} is not a 4x4 list of numbers") from e
    if tuple(m.shape) != (4, 4):
        raise ValueError(f"{where}: transform_matrix has shape {tuple(m.shape)}; give 4 rows of 4 numbers")
    if not torch.isfinite(m).all():
        raise ValueError(f"{where}: transform_matrix holds non-finite values")
    if not torch.allclose(m[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)):
        raise ValueError(f"{where}: transform_matrix last row is {m[3].tolist()}; expected [0, 0, 0, 1]")
    rot = m[:3, :3]
    if not torch.allclose(rot.T @ rot, torch.eye(3, dtype=torch.float64), atol=1e-4) or torch.det(rot) < 0:
        raise ValueError(f"{where}: transform_matrix rotation is not orthonormal and right-handed; give a "
                         "rigid OpenGL camera-to-world matrix (no scale)")
    return m
