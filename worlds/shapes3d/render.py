"""Ray-cast renderer of the 3D shapes world in plain torch: analytic primitives, Lambert light, hard shadows.

Each pixel is shaded from ``ss x ss`` sub-pixel rays (box filter: anti-aliased edges); depth and
object ids come from the ray through the pixel centre, so depth is exact where the geometry
tests need it. One world-fixed light: colour = albedo * (AMBIENT + DIFFUSE * max(n . l, 0) * lit),
so a face's chromaticity (rgb / max channel) is its albedo's, whatever its shading; the
labeller in ``score.py`` relies on that.

>>> from worlds.shapes3d.scene import sample_scene
>>> scene = sample_scene(seed=0, index=0)
>>> out = render(scene.objects, scene.views[0])
>>> out.rgb.shape, out.rgb.dtype, out.coverage.shape[0] == len(scene.objects)
(torch.Size([64, 64, 3]), torch.uint8, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .camera import Camera, orbit_camera
from .scene import Object3D, View

# Light from the upper left of the +X/-Y quadrant; unit vector, world frame.
LIGHT_DIR = (0.45, -0.35, 1.0)
AMBIENT, DIFFUSE = 0.45, 0.55
SKY_RGB = (232, 232, 232)  # background beyond the ground's horizon (and with ground=False)
GROUND_RGB = (196, 196, 196)  # albedo of the ground plane: grey, so the labeller ignores it
# The ground is the disc of this radius on z = 0: near the horizon an infinite plane's depth would
# grow without bound (and overflow the millimetre depth PNGs); at 64 px its edge sits at the horizon.
GROUND_RADIUS = 8.0
EPS = 1e-6  # smallest ray parameter counted as a hit (self-intersection guard)
SHADOW_OFFSET = 1e-3  # shadow rays start this far along the surface normal


@dataclass(frozen=True)
class RenderOutput:
    """What one view shows. Masks are occlusion-aware (what the camera sees)."""

    rgb: torch.Tensor  # (H, W, 3) uint8
    depth: torch.Tensor  # (H, W) z-depth at pixel centres (camera axis), inf where the ray hits nothing
    distance: torch.Tensor  # (H, W) distance from the camera centre to the hit, inf where none
    coverage: torch.Tensor  # (K, H, W) fraction of each pixel's sub-rays that see object k
    ids: torch.Tensor  # (H, W) int64: object index seen at the pixel centre, -1 ground/sky
    camera: Camera

    @property
    def masks(self) -> torch.Tensor:
        """(K, H, W) bool: object k covers more than half of the pixel."""
        return self.coverage > 0.5


def _light(dtype: torch.dtype) -> torch.Tensor:
    v = torch.tensor(LIGHT_DIR, dtype=dtype)
    return v / v.norm()


def _yaw(obj: Object3D) -> tuple[float, float]:
    a = math.radians(obj.yaw)
    return math.cos(a), math.sin(a)


Vec = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x, y, z components, each (N,) or broadcastable


def _quadratic(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both roots of a t^2 + b t + c = 0; nan where there is none."""
    disc = b * b - 4 * a * c
    root = disc.clamp(min=0).sqrt().where(disc >= 0, torch.nan)
    a2 = 2 * a.where(a.abs() > 1e-12, torch.full_like(a, 1e-12))
    return (-b - root) / a2, (-b + root) / a2


def _argmin(cands: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise minimum over a short list of (N,) tensors and the index of the winner.

    A chain of ``torch.minimum`` beats ``stack(...).min(0)`` (a strided reduction) on CPU.
    """
    best, idx = cands[0], torch.zeros(cands[0].shape, dtype=torch.long)
    for i, c in enumerate(cands[1:], 1):
        better = c < best
        best, idx = torch.minimum(best, c), idx.masked_fill(better, i)
    return best, idx


def _first(*cands: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest valid (> EPS) candidate per ray, inf if none, and which candidate it was."""
    cs = torch.broadcast_tensors(*cands)
    return _argmin([c.where(c > EPS, torch.inf) for c in cs])  # nan > EPS is False -> inf


def _safe(x: torch.Tensor) -> torch.Tensor:
    """x with zeros nudged to 1e-12, so divisions give huge values instead of inf/nan."""
    return x.where(x.abs() > 1e-12, torch.full_like(x, 1e-12))


def _hit_sphere(obj: Object3D, o: Vec, d: Vec) -> tuple[torch.Tensor, Vec]:
    """Ray parameter t (N,) and outward normal of rays o + t d (o, d: component tuples)."""
    r = obj.size
    px, py, pz = o[0] - obj.position[0], o[1] - obj.position[1], o[2] - r
    dx, dy, dz = d
    t, _ = _first(*_quadratic(dx * dx + dy * dy + dz * dz, 2 * (px * dx + py * dy + pz * dz),
                              px * px + py * py + pz * pz - r * r))
    tf = t.nan_to_num(posinf=0.0)
    return t, ((px + tf * dx) / r, (py + tf * dy) / r, (pz + tf * dz) / r)


def _hit_cube(obj: Object3D, o: Vec, d: Vec) -> tuple[torch.Tensor, Vec]:
    """Slab test in the cube's yawed frame; normal of the entry face."""
    cos, sin = _yaw(obj)
    s = obj.size
    px, py, pz = o[0] - obj.position[0], o[1] - obj.position[1], o[2] - s
    lo = (cos * px + sin * py, -sin * px + cos * py, pz)  # world -> cube frame (rotate by -yaw)
    ld = (cos * d[0] + sin * d[1], -sin * d[0] + cos * d[1], d[2])
    near, far = [], []
    for p, q in zip(lo, ld, strict=True):
        q = _safe(q)
        ta, tb = (-s - p) / q, (s - p) / q
        near.append(torch.minimum(ta, tb))
        far.append(torch.maximum(ta, tb))
    neg_near, axis = _argmin([-c for c in torch.broadcast_tensors(*near)])
    tnear = -neg_near
    tfar = torch.minimum(torch.minimum(far[0], far[1]), far[2])
    t = tnear.where((tnear <= tfar) & (tnear > EPS), torch.inf)
    nx, ny, nz = (torch.where(axis == i, -torch.sign(ld[i]), 0.0) for i in range(3))  # cube frame
    return t, (cos * nx - sin * ny, sin * nx + cos * ny, nz)


def _caps(p: Vec, d: Vec, r: float, heights: tuple[float, ...]) -> list[torch.Tensor]:
    """Ray parameters of the horizontal discs of radius r at the given heights (nan on a miss)."""
    px, py, pz = p
    dz = _safe(d[2])
    out = []
    for z0 in heights:
        t = (z0 - pz) / dz
        x, y = px + t * d[0], py + t * d[1]
        out.append(t.where(x * x + y * y <= r * r, torch.nan))
    return out


def _within(t: torch.Tensor, pz: torch.Tensor, dz: torch.Tensor, h: float) -> torch.Tensor:
    z = pz + t * dz
    return t.where((z >= 0) & (z <= h), torch.nan)


def _hit_cylinder(obj: Object3D, o: Vec, d: Vec) -> tuple[torch.Tensor, Vec]:
    """Side (x^2 + y^2 = r^2, 0 <= z <= h) and the two caps."""
    r, h = obj.size, obj.height
    p = (o[0] - obj.position[0], o[1] - obj.position[1], o[2])
    dx, dy, dz = d
    t0, t1 = _quadratic(dx * dx + dy * dy, 2 * (p[0] * dx + p[1] * dy), p[0] * p[0] + p[1] * p[1] - r * r)
    t, which = _first(_within(t0, p[2], dz, h), _within(t1, p[2], dz, h), *_caps(p, d, r, (h, 0.0)))
    tf = t.nan_to_num(posinf=0.0)
    side = which < 2
    nz = torch.where(side, 0.0, torch.where(which == 2, 1.0, -1.0))
    return t, (((p[0] + tf * dx) / r).where(side, 0.0), ((p[1] + tf * dy) / r).where(side, 0.0), nz)


def _hit_cone(obj: Object3D, o: Vec, d: Vec) -> tuple[torch.Tensor, Vec]:
    """Side x^2 + y^2 = k^2 (h - z)^2 (k = r / h, 0 <= z <= h, apex on top) and the base disc."""
    r, h = obj.size, obj.height
    k2 = (r / h) ** 2
    p = (o[0] - obj.position[0], o[1] - obj.position[1], o[2])
    dx, dy, dz = d
    w = h - p[2]
    t0, t1 = _quadratic(dx * dx + dy * dy - k2 * dz * dz, 2 * (p[0] * dx + p[1] * dy + k2 * w * dz),
                        p[0] * p[0] + p[1] * p[1] - k2 * w * w)
    t, which = _first(_within(t0, p[2], dz, h), _within(t1, p[2], dz, h), *_caps(p, d, r, (0.0,)))
    tf = t.nan_to_num(posinf=0.0)
    gx, gy, gz = p[0] + tf * dx, p[1] + tf * dy, k2 * (h - p[2] - tf * dz)  # gradient of the implicit side
    norm = (gx * gx + gy * gy + gz * gz).sqrt().clamp(min=1e-12)
    side = which < 2
    return t, ((gx / norm).where(side, 0.0), (gy / norm).where(side, 0.0), (gz / norm).where(side, -1.0))


HIT = {"sphere": _hit_sphere, "cube": _hit_cube, "cylinder": _hit_cylinder, "cone": _hit_cone}


def _trace(objects: Sequence[Object3D], o: Vec, d: Vec, ground: bool
           ) -> tuple[torch.Tensor, torch.Tensor, Vec]:
    """Nearest hit per ray: t (N,), id (N,) (k object, -1 ground, -2 nothing), normal components."""
    n = d[0].shape[0]
    ts, normals = [], []
    for obj in objects:
        t, nrm = HIT[obj.shape](obj, o, d)
        ts.append(t.expand(n))
        normals.append(torch.stack(torch.broadcast_tensors(*nrm, ts[-1])[:3]))  # (3, N)
    if ground:  # the disc z = 0, |xy| <= GROUND_RADIUS, seen from above
        tg = -o[2] / _safe(d[2])
        gx, gy = o[0] + tg * d[0], o[1] + tg * d[1]
        down = (d[2] < -1e-12) & (o[2] > 0) & (gx * gx + gy * gy <= GROUND_RADIUS**2)
        ts.append(tg.where(down, torch.inf).expand(n))
        normals.append(torch.tensor([0.0, 0.0, 1.0], dtype=d[0].dtype)[:, None].expand(3, n))
    if not ts:
        zero = torch.zeros(n, dtype=d[0].dtype)
        return torch.full((n,), torch.inf, dtype=d[0].dtype), torch.full((n,), -2), (zero, zero, zero)
    t, idx = _argmin(ts)  # (N,)
    normal = torch.stack(normals).gather(0, idx[None, None].expand(1, 3, n))[0]  # (3, N)
    ids = idx.where(idx < len(objects), -1).where(torch.isfinite(t), -2)
    return t, ids, (normal[0], normal[1], normal[2])


def _shade(objects: Sequence[Object3D], o: Vec, d: Vec, ground: bool, shadows: bool
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Colours (3, N) float in 0..255, ray parameters t (N,) and ids (N,) of rays o + t d."""
    t, ids, nrm = _trace(objects, o, d, ground)
    lx, ly, lz = (float(c) for c in _light(torch.float64))
    lit = (nrm[0] * lx + nrm[1] * ly + nrm[2] * lz).clamp(min=0)
    if shadows and objects:  # only surfaces that face the light can be shadowed
        idx = ((ids > -2) & (lit > 0)).nonzero()[:, 0]
        ti = t[idx]
        pts = tuple(o[c] + ti * d[c][idx] + SHADOW_OFFSET * nrm[c][idx] for c in range(3))
        light = tuple(torch.tensor(v, dtype=d[0].dtype) for v in (lx, ly, lz))
        blocked = torch.zeros(idx.shape[0], dtype=torch.bool)
        for obj in objects:
            blocked |= torch.isfinite(HIT[obj.shape](obj, pts, light)[0])
        lit[idx] = lit[idx].masked_fill(blocked, 0.0)
    albedo = torch.tensor([ob.fill for ob in objects] + [GROUND_RGB, SKY_RGB], dtype=d[0].dtype).T  # (3, K+2)
    shading = torch.where(ids > -2, AMBIENT + DIFFUSE * lit, 1.0)
    colour = albedo[:, ids.where(ids >= 0, len(objects) - 1 - ids)] * shading  # (3, N); -1 -> K, -2 -> K+1
    return colour, t, ids


def render(objects: Sequence[Object3D], view: View | Camera, size: int = 64, ss: int = 2,
           ground: bool = True, shadows: bool = True, dtype: torch.dtype = torch.float32) -> RenderOutput:
    """Render objects seen from a scene-file ``view`` (or any ``Camera``); ``size`` only for a View.

    ``ss``: sub-rays per pixel side for colour and coverage (ss=1: one ray per pixel, no
    anti-aliasing). ``dtype=torch.float64`` for geometry checks; float32 is the default.
    """
    if not isinstance(ss, int) or ss < 1:
        raise ValueError(f"ss = {ss!r} must be a positive int (sub-rays per pixel side)")
    camera = view if isinstance(view, Camera) else orbit_camera(view, size)
    h, w, k = camera.h, camera.w, len(objects)
    o, d = camera.ray_components(ss, dtype)
    n_sub = d[0].shape[0]
    if ss > 1:  # one trace for the sub-rays and the pixel-centre rays (depth, ids) together
        _, dc = camera.ray_components(1, dtype)
        d = tuple(torch.cat([a, b]) for a, b in zip(d, dc, strict=True))
    colour, t, all_ids = _shade(objects, o, d, ground, shadows)
    colour, sub_ids = colour[:, :n_sub].reshape(3, h * ss, w * ss), all_ids[:n_sub].reshape(h * ss, w * ss)
    onehot = (sub_ids[None] == torch.arange(k)[:, None, None]).float()  # (K, H*ss, W*ss)
    if ss > 1:  # the box filter over each pixel's ss x ss sub-rays
        colour = torch.nn.functional.avg_pool2d(colour[None], ss)[0]
        onehot = torch.nn.functional.avg_pool2d(onehot[None], ss)[0] if k else onehot.reshape(0, h, w)
        t, ids, d = t[n_sub:], all_ids[n_sub:], dc
    else:
        ids = all_ids
    rgb = colour.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()  # (H, W, 3)
    depth = t.reshape(h, w)
    distance = depth * (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt().reshape(h, w)
    ids = ids.reshape(h, w)
    return RenderOutput(rgb, depth, distance, onehot, ids.where(ids >= 0, -1), camera)
