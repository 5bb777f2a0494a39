"""Training data of the 3D shapes world: rendered multi-view scenes as tensors.

Scene ``i`` of seed ``s`` is ``sample_scene(s, i, TRAIN_SPEC)``, so any sample can be regenerated
alone; training, evaluation and tests agree without storing images. The evaluation case files use
other seeds (``cases.py``).

>>> batch = render_scenes(seed=0, start=0, count=2, spec=TRAIN_SPEC)
>>> batch["images"].shape, batch["views"].shape
(torch.Size([2, 6, 64, 64, 3]), torch.Size([2, 6, 3]))
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from .render import render
from .scene import SceneSpec, sample_scene

# Off-centre objects (the evaluation's design), 1-3 of them (one and two twice as often as three),
# six views per scene at elevations 10-35, palette colours jittered +-15 per channel.
TRAIN_SPEC = SceneSpec(n_objects=(1, 1, 2, 2, 3), disc=0.5, min_offset=0.1, size=(0.2, 0.3),
                       elevation=(10.0, 35.0), radius=2.4, views=6, colour_jitter=15)
# The same scenes seen on an orbit: twelve views at one elevation per scene. A pair of them differs
# in azimuth only, so a small azimuth change is a small, pose-determined move of each object.
ORBIT_SPEC = replace(TRAIN_SPEC, views=12, shared_elevation=True)


def render_scenes(seed: int, start: int, count: int, spec: SceneSpec = TRAIN_SPEC, size: int = 64
                  ) -> dict[str, torch.Tensor]:
    """Scenes ``start .. start+count-1``: images (N, V, H, W, 3) uint8, views (N, V, 3) as
    (elevation, azimuth, radius), depth (N, V, H, W) float32 z-depth (inf = nothing)."""
    images, views, depths = [], [], []
    for i in range(start, start + count):
        scene = sample_scene(seed, i, spec)
        outs = [render(scene.objects, v, size=size) for v in scene.views]
        images.append(torch.stack([o.rgb for o in outs]))
        depths.append(torch.stack([o.depth for o in outs]))
        views.append(torch.tensor([[v.elevation, v.azimuth, v.radius] for v in scene.views]))
    return {"images": torch.stack(images), "views": torch.stack(views), "depth": torch.stack(depths)}


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [-1, 1] (the VAE's and the pipeline's range)."""
    return images.movedim(-1, -3).float() / 127.5 - 1.0


def relative_poses(views: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Batched ``models.pose_embedding``: views (B, V, 3), view indices src, tgt (B,) -> (B, 4)."""
    b = torch.arange(views.shape[0], device=views.device)
    s, t = views[b, src], views[b, tgt]  # (B, 3): elevation, azimuth, radius
    d_polar = torch.deg2rad(s[:, 0] - t[:, 0])  # polar = 90 - elevation
    d_az = torch.deg2rad(t[:, 1] - s[:, 1])
    return torch.stack([d_polar, torch.sin(d_az), torch.cos(d_az), t[:, 2] - s[:, 2]], -1)


def facing_views(seed: int, scenes: int, spec: SceneSpec = ORBIT_SPEC) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-object scenes among ``sample_scene(seed, 0..scenes-1, spec)`` and, for each, the view
    whose camera faces its object (camera azimuth nearest the object's bearing from the origin):
    (scene indices (K,), view indices (K,)). From there the object stands between the camera and
    the look-at point, and a change of azimuth moves it sideways by its distance times -sin d azimuth."""
    idx, src = [], []
    for i in range(scenes):
        scene = sample_scene(seed, i, spec)
        if len(scene.objects) != 1:
            continue
        x, y = scene.objects[0].position
        bearing = math.degrees(math.atan2(y, x))
        gaps = [abs((v.azimuth - bearing + 180.0) % 360.0 - 180.0) for v in scene.views]
        idx.append(i)
        src.append(gaps.index(min(gaps)))
    if not idx:
        raise ValueError(f"none of the {scenes} scenes of seed {seed} has one object; give more scenes")
    return torch.tensor(idx), torch.tensor(src)
