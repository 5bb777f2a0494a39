"""Measure the 3D shapes renderer: time per 64x64 image on one thread, and its geometric accuracy.

    python benchmarks/shapes3d_render_bench.py            # 200 scenes
    python benchmarks/shapes3d_render_bench.py --quick    # 40 scenes

* ``ms_per_image``: mean and median CPU time (``time.process_time``, one intra-op thread, so other
  processes on a shared machine inflate it less than wall time) and wall time, per
  supersampling factor, over generated scenes (1-3 objects, ground and shadows on);
* ``projection_max_px``: ``Camera.project`` against the pinhole formula written out by hand
  (world -> camera by the inverse look-at rotation), over random cameras and points;
* ``depth_reprojection``: depth PNGs lifted from view i of a written nerfstudio folder and projected
  into view i+1 (``camera.reprojection_errors``): median and p90 relative error, share within 1 %
  (occluded points keep large errors; views are up to 180 degrees apart);
* ``labeller``: the chromaticity labeller's per-object and foreground IoU against the renderer's
  masks on renders with jittered palette colours (``data.TRAIN_SPEC``).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from worlds.shapes3d.camera import orbit_camera, reprojection_errors  # noqa: E402
from worlds.shapes3d.data import TRAIN_SPEC  # noqa: E402
from worlds.shapes3d.nerfstudio import read_views, write_views  # noqa: E402
from worlds.shapes3d.render import render  # noqa: E402
from worlds.shapes3d.scene import View, sample_scene  # noqa: E402
from worlds.shapes3d.score import score_view  # noqa: E402


def time_renders(n: int, ss: int, size: int) -> dict[str, float]:
    scenes = [sample_scene(100, i) for i in range(n)]
    for s in scenes[:3]:  # warm-up
        render(s.objects, s.views[0], size=size, ss=ss)
    cpu, wall = [], []
    for s in scenes:
        c0, w0 = time.process_time(), time.perf_counter()
        render(s.objects, s.views[0], size=size, ss=ss)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"cpu_mean": round(1e3 * float(np.mean(cpu)), 2),
            "cpu_median": round(1e3 * float(np.median(cpu)), 2),
            "wall_median": round(1e3 * float(np.median(wall)), 2)}


def projection_error(n_cameras: int) -> float:
    """Largest |project() - hand-written pinhole| in pixels over random cameras and points."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(n_cameras):
        view = View(float(rng.uniform(-80, 80)), float(rng.uniform(0, 360)), float(rng.uniform(1.5, 4)),
                    float(rng.uniform(20, 70)))
        cam = orbit_camera(view, size=int(rng.integers(16, 129)))
        e, a = math.radians(view.elevation), math.radians(view.azimuth)
        eye = view.radius * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
        fwd = -eye / np.linalg.norm(eye)
        right = np.cross(fwd, [0, 0, 1])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        f = 0.5 * cam.w / math.tan(math.radians(view.fov) / 2)
        pts = rng.uniform(-0.6, 0.6, (50, 3))
        rel = pts - eye
        x, y, depth = rel @ right, rel @ up, rel @ fwd
        expected = np.stack([cam.w / 2 + f * x / depth, cam.h / 2 - f * y / depth], -1)
        uv, _ = cam.project(torch.from_numpy(pts))
        worst = max(worst, float(np.abs(uv.numpy() - expected).max()))
    return worst


def depth_reprojection(n_scenes: int) -> dict[str, float]:
    errs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n_scenes):
            frames = read_views(write_views(sample_scene(200, i), Path(tmp) / str(i)))
            for a, b in zip(frames[:-1], frames[1:], strict=True):
                errs.append(reprojection_errors(a.camera, torch.from_numpy(a.depth),
                                                b.camera, torch.from_numpy(b.depth)))
    rel = torch.cat(errs)
    return {"median": round(rel.median().item(), 5), "p90": round(rel.quantile(0.9).item(), 5),
            "within_1pct": round((rel <= 0.01).float().mean().item(), 4), "points": rel.numel()}


def labeller(n_scenes: int) -> dict[str, float]:
    """Chromaticity labeller vs the renderer's masks on jittered-colour renders (first view of each scene)."""
    ious, fg = [], []
    for i in range(n_scenes):
        scene = sample_scene(300, i, TRAIN_SPEC)
        truth = render(scene.objects, scene.views[0])
        rec = score_view(truth.rgb, truth, [o.colour for o in scene.objects])
        ious += [o["iou"] for o in rec["objects"]]
        fg.append(rec["fg_iou"])
    return {"object_iou_mean": round(float(np.mean(ious)), 4),
            "object_iou_p10": round(float(np.percentile(ious, 10)), 4),
            "object_iou_min": round(float(np.min(ious)), 4), "fg_iou_mean": round(float(np.mean(fg)), 4),
            "objects": len(ious)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="40 scenes instead of 200")
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    n = 40 if args.quick else 200
    result = {
        "size": args.size,
        "scenes": n,
        "ms_per_image": {f"ss{ss}": time_renders(n, ss, args.size) for ss in (1, 2)},
        "projection_max_px": projection_error(20 if args.quick else 200),
        "depth_reprojection": depth_reprojection(5 if args.quick else 20),
        "labeller": labeller(20 if args.quick else 100),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
