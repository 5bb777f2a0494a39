"""The QNeRF query field alone: does fitting it to inconsistent per-view maps make them consistent?

    python benchmarks/qnerf_consistency.py                     # tri-plane, 300 iterations
    python benchmarks/qnerf_consistency.py --encoder hashgrid
    python benchmarks/qnerf_consistency.py --quick              # 100 iterations at lr 2e-2 (CI-sized)

A known scene: a unit sphere filling the view of 8 cameras around it (the 3D world's orbit
cameras), carrying a smooth analytic 3D feature field, one per query "layer" (3 layers of 16
channels at each of 16x16 and 32x32). The ground-truth maps are that field seen through each map's
cell-centre rays, so they are exactly consistent; the fitted maps are made inconsistent the way
independent per-view edits are: each view's maps shifted by one cell in x and y (random signs) plus
Gaussian noise of 0.4 times the layer's standard deviation. The field is fitted to the
inconsistent maps (with the sphere's z-depth as depth supervision) and rendered back.

Consistency error: every cell centre of view a is lifted to the sphere with the true depth,
projected into every other view b that sees it (facing b, inside b's cell-centre grid), and b's map
is sampled there bilinearly; the mean squared difference, over the layer's variance. The
ground-truth maps give the floor (bilinear resampling alone). ``excess_reduction_R`` is
``1 - (rendered - floor) / (inconsistent - floor)`` at map size R; ``gt_error_reduction`` is
``1 - mse(rendered, gt) / mse(inconsistent, gt)`` over all maps. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from attn_processors.qnerf.cameras import Cameras  # noqa: E402
from attn_processors.qnerf.field import QueryField, fit_field  # noqa: E402
from worlds.shapes3d.camera import orbit_camera, to_cameras  # noqa: E402
from worlds.shapes3d.scene import View  # noqa: E402

RESOLUTIONS = (16, 32)
LAYERS_PER_RES = 3
CHANNELS = 16
BOUNDS = ((-1.1,) * 3, (1.1,) * 3)  # the field's box around the unit sphere
RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------ the known scene
def scene_cameras(views: int = 8, size: int = 64, radius: float = 2.2, fov: float = 36.0) -> Cameras:
    """Orbit cameras around the unit sphere, elevations alternating 15/35 degrees; the sphere fills
    every view (its angular radius, asin(1 / 2.2) = 27 degrees, exceeds the half-diagonal of a 36-degree
    field of view)."""
    cams = [orbit_camera(View(elevation=15.0 + 20.0 * (i % 2), azimuth=360.0 * i / views, radius=radius,
                              fov=fov), size) for i in range(views)]
    return to_cameras(cams)


def sphere_hits(cameras: Cameras, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Surface points [V, R, R, 3] and z-depth [V, R, R] of the unit sphere at cell-centre rays."""
    origins, dirs = cameras.rays(res, res)
    b = (origins * dirs).sum(-1)
    disc = b * b - ((origins * origins).sum(-1) - 1)
    if (disc <= 0).any():
        raise ValueError("a ray misses the sphere; the object must fill the view (move the cameras closer)")
    t = -b - disc.sqrt()
    cos = (dirs * cameras.forward[:, None, None]).sum(-1)
    return origins + t[..., None] * dirs, t * cos


class FeatureField:
    """Analytic 3D features: per layer, a random mix of sinusoids of position (smooth, known)."""

    def __init__(self, layers: list[str], channels: int, seed: int, basis: int = 24, frequency: float = 4.0):
        g = torch.Generator().manual_seed(seed)
        self.freqs = torch.randn(basis, 3, generator=g, dtype=torch.float64) * frequency
        self.phases = torch.rand(basis, generator=g, dtype=torch.float64) * 2 * math.pi
        self.mix = {name: torch.randn(basis, channels, generator=g, dtype=torch.float64) / math.sqrt(basis)
                    for name in layers}

    def __call__(self, name: str, points: torch.Tensor) -> torch.Tensor:
        return torch.sin(points @ self.freqs.T + self.phases) @ self.mix[name]


def shifted(maps: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """[h, w, C] moved by (dx, dy) cells, edges repeated (a view's features drawn one cell off)."""
    h, w = maps.shape[:2]
    rows = (torch.arange(h) - dy).clamp(0, h - 1)
    cols = (torch.arange(w) - dx).clamp(0, w - 1)
    return maps[rows][:, cols]


def corrupt(gt: dict[str, torch.Tensor], noise: float, seed: int) -> dict[str, torch.Tensor]:
    """Per view one (+-1, +-1) cell shift shared by its layers, plus noise * the layer's std."""
    g = torch.Generator().manual_seed(seed)
    views = next(iter(gt.values())).shape[0]
    signs = torch.randint(0, 2, (views, 2), generator=g) * 2 - 1
    out = {}
    for name, maps in gt.items():
        moved = torch.stack([shifted(maps[v], int(signs[v, 0]), int(signs[v, 1])) for v in range(views)])
        out[name] = moved + noise * maps.std() * torch.randn(maps.shape, generator=g, dtype=maps.dtype)
    return out


# ---------------------------------------------------------------------------------- the metrics
def consistency_error(maps: torch.Tensor, points: torch.Tensor, cameras: Cameras, scale: float) -> float:
    """Mean squared difference / ``scale`` between each view's cells and the other views' bilinear
    samples at the same surface points (only where the other view sees the point)."""
    views, res = maps.shape[0], maps.shape[1]
    grid_cams = cameras.resized(res, res)
    total, count = 0.0, 0
    for a in range(views):
        pts = points[a].reshape(-1, 3)
        pixels, depth = grid_cams.project(pts)  # [V, N, 2] in grid cells
        for b in range(views):
            if b == a:
                continue
            facing = ((grid_cams.origins[b] - pts) * pts).sum(-1) > 0  # sphere normal = point
            x, y = pixels[b, :, 0], pixels[b, :, 1]
            inside = (x >= 0.5) & (x <= res - 0.5) & (y >= 0.5) & (y <= res - 0.5) & (depth[b] > 0)
            keep = facing & inside
            if not keep.any():
                continue
            coords = (pixels[b, keep] / res * 2 - 1)[None, None].to(maps.dtype)  # [1, 1, M, 2]
            sampled = F.grid_sample(maps[b].permute(2, 0, 1)[None], coords, align_corners=False)[0, :, 0].T
            total += float(((maps[a].reshape(-1, maps.shape[-1])[keep] - sampled) ** 2).mean(-1).sum())
            count += int(keep.sum())
    if count == 0:
        raise ValueError(f"no cell of one view is seen by another at {res}x{res}; use more views (>= 6)")
    return total / count / scale


def map_errors(maps: dict[str, torch.Tensor], gt: dict[str, torch.Tensor], hits: dict[int, torch.Tensor],
               cameras: Cameras) -> dict[str, float]:
    """Consistency error per resolution and the normalised MSE to the ground truth over all maps."""
    out = {}
    for res in sorted(hits):
        names = [n for n in gt if gt[n].shape[1] == res]
        errors = [consistency_error(maps[n].double(), hits[res], cameras, float(gt[n].var())) for n in names]
        out[f"consistency_{res}"] = sum(errors) / len(errors)
    out["gt_mse"] = sum(float(((maps[n].double() - gt[n]) ** 2).mean() / gt[n].var()) for n in gt) / len(gt)
    return out


# ------------------------------------------------------------------------------------ the run
def run(encoder: str = "triplane", iters: int = 300, views: int = 8, noise: float = 0.4, seed: int = 0,
        depth_weight: float = 0.1, rays: int = 512, lr: float = 1e-2,
        resolutions: tuple[int, ...] = RESOLUTIONS) -> dict:
    """Build the scene, corrupt its maps, fit, and measure; returns the JSON record."""
    cameras = scene_cameras(views)
    layers = {f"res{res}.{k}": res for res in resolutions for k in range(LAYERS_PER_RES)}
    truth = FeatureField(list(layers), CHANNELS, seed)
    hits, depth = {}, None
    for res in resolutions:
        hits[res], z = sphere_hits(cameras, res)
        depth = z if depth is None or z.shape[1] > depth.shape[1] else depth
    gt = {name: truth(name, hits[res]) for name, res in layers.items()}
    noisy = corrupt(gt, noise, seed + 1)
    torch.manual_seed(seed)
    qfield = QueryField({name: CHANNELS for name in layers}, encoder=encoder, bounds=BOUNDS,
                        generator=torch.Generator().manual_seed(seed))
    start, cpu_start = time.perf_counter(), time.process_time()
    report = fit_field(qfield, {n: m.float() for n, m in noisy.items()}, cameras.to(dtype=torch.float32),
                       iters=iters, lr=lr, depth=depth.float(), depth_weight=depth_weight,
                       rays=rays,
                       generator=torch.Generator().manual_seed(seed + 2))
    sizes = {name: (res, res) for name, res in layers.items()}
    rendered = qfield.render(cameras.to(dtype=torch.float32), sizes)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    errors = {kind: map_errors(maps, gt, hits, cameras) for kind, maps in
              (("floor", gt), ("inconsistent", noisy), ("rendered", rendered))}
    record: dict = {"encoder": encoder, "iters": iters, "views": views, "noise": noise, "seed": seed,
                    "threads": torch.get_num_threads(), "errors": errors}
    for res in resolutions:
        floor, bad, good = (errors[k][f"consistency_{res}"] for k in ("floor", "inconsistent", "rendered"))
        record[f"excess_reduction_{res}"] = 1 - (good - floor) / (bad - floor)
    record["gt_error_reduction"] = 1 - errors["rendered"]["gt_mse"] / errors["inconsistent"]["gt_mse"]
    record["fit_loss_first_last"] = [report.losses[0], report.losses[-1]] if report.losses else []
    record["seconds"] = seconds  # wall time of fit + render (shared machines: see cpu_seconds)
    record["cpu_seconds"] = cpu_seconds  # CPU time of this process over the same span
    return record


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoder", choices=("triplane", "hashgrid"), default="triplane")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--depth-weight", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="100 iterations at lr 2e-2 (a CI-sized run)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON record here too")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.views < 2:
        parser.error(f"--iters {args.iters} --views {args.views}: give iters >= 1 and views >= 2")
    iters, lr = (100, 2e-2) if args.quick else (args.iters, args.lr)
    record = run(args.encoder, iters, args.views, seed=args.seed, depth_weight=args.depth_weight, lr=lr)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
