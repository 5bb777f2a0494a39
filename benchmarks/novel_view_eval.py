"""Evaluate a novel-view model of the 3D shapes world against rendered ground truth.

    python benchmarks/novel_view_eval.py --model assets/shapes3d-zero123 \
        --scenes benchmarks/cases/shapes3d_novel_view.json --seeds 2 --steps 50
    python benchmarks/novel_view_eval.py --model DIR --quick      # 2 scenes per group, 1 seed, 10 steps
    python benchmarks/novel_view_eval.py --copy-only              # the copy-the-input baseline alone

For each scene the source view's render goes in and every other view is generated (one batch per
scene and seed) and scored against its render (``worlds.shapes3d.score``): PSNR, SSIM, per-object
mask IoU from the chromaticity labeller, colour present, centroid error. The copy-the-input
baseline (the source render returned for every target) is scored the same way. Headline numbers
are over the off-centre groups (``group`` starting with ``off_centre``); every group is reported
apart under ``groups``. ``--save DIR`` writes one PNG per scene: source, then per target the
render and the seeds' samples. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from worlds.shapes3d.models import pose_embedding  # noqa: E402
from worlds.shapes3d.render import render  # noqa: E402
from worlds.shapes3d.scene import Scene, first_per_group, load_scenes  # noqa: E402
from worlds.shapes3d.score import copy_input_baseline, score_novel_views, summarise  # noqa: E402
from worlds.shapes3d.zero123 import load_parts, sample  # noqa: E402

DEFAULT_SCENES = Path(__file__).resolve().parent / "cases" / "shapes3d_novel_view.json"
HEADLINE_PREFIX = "off_centre"


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def evaluate(args: argparse.Namespace) -> dict:
    parts = None if args.copy_only else load_parts(args.model, args.device)
    scenes = first_per_group(load_scenes(args.scenes), args.per_group)
    model_recs: dict[str, list] = {}
    copy_recs: dict[str, list] = {}
    seconds, n_views = 0.0, 0
    for k, scene in enumerate(scenes):
        group = str(scene.extra.get("group", "all"))
        src = render(scene.objects, scene.views[0], size=args.size).rgb
        src_t = torch.from_numpy(np.asarray(src)).permute(2, 0, 1)[None].float() / 127.5 - 1
        targets = scene.views[1:]
        poses = torch.stack([pose_embedding(scene.views[0], v) for v in targets])  # (T, 4)
        images = src_t.expand(len(targets), -1, -1, -1)
        samples = []
        for seed in range(0 if parts is None else args.seeds):
            gen = torch.Generator().manual_seed(1000 * k + seed)
            t0 = time.perf_counter()
            out = to_uint8(sample(parts, images, poses, steps=args.steps, cfg=args.cfg, generator=gen))
            seconds += time.perf_counter() - t0
            n_views += len(targets)
            samples.append(out)
            model_recs.setdefault(group, []).extend(score_novel_views(scene, list(out), args.size))
        copy_recs.setdefault(group, []).extend(copy_input_baseline(scene, args.size))
        if args.save:
            save_grid(args.save, scene, k, src, samples, args.size)
    headline = [g for g in copy_recs if g.startswith(HEADLINE_PREFIX)] or list(copy_recs)
    model = summarise([r for g in headline for r in model_recs.get(g, [])])
    copy = summarise([r for g in headline for r in copy_recs[g]])
    return {
        "model": None if parts is None else str(args.model), "scenes_file": str(args.scenes),
        "scenes": len(scenes), "seeds": args.seeds,
        "steps": args.steps, "cfg": args.cfg, "headline_groups": headline,
        **{k: model[k] for k in ("psnr", "ssim", "mask_iou", "colour_present", "fg_iou", "centroid_px")},
        "psnr_copy_input": copy["psnr"], "ssim_copy_input": copy["ssim"],
        "mask_iou_copy_input": copy["mask_iou"],
        "seconds_per_view": round(seconds / max(n_views, 1), 4),
        "groups": {g: {"model": summarise(model_recs.get(g, [])), "copy_input": summarise(copy_recs[g])}
                   for g in copy_recs},
        "device": args.device, "torch": torch.__version__,
    }


def save_grid(folder: Path, scene: Scene, k: int, src: torch.Tensor, samples: list[torch.Tensor],
              size: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, view in enumerate(scene.views[1:]):
        truth = render(scene.objects, view, size=size).rgb.numpy()
        rows.append(np.concatenate([src.numpy(), truth, *[s[i].numpy() for s in samples]], 1))
    name = str(scene.extra.get("id", f"scene{k:03d}"))
    Image.fromarray(np.concatenate(rows, 0)).save(folder / f"{name}.png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("assets/shapes3d-zero123"))
    p.add_argument("--scenes", type=Path, default=DEFAULT_SCENES)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--per-group", type=int, default=None, help="only the first N scenes of each group")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save", type=Path, default=None, metavar="DIR", help="write a PNG grid per scene")
    p.add_argument("--quick", action="store_true", help="2 scenes per group, 1 seed, 10 steps")
    p.add_argument("--copy-only", action="store_true",
                   help="score only the copy-the-input baseline (no model needed; model fields are null)")
    args = p.parse_args(argv)
    if args.quick:
        args.per_group, args.seeds, args.steps = 2, 1, 10
    if args.seeds < 1 or args.steps < 1:
        p.error("--seeds and --steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = evaluate(args)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
