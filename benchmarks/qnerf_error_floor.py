"""How consistent can this model's views be at all? The consistency error of the 3D world's edits,
split into what the model adds with no edit to make and what the edit adds.

QNeRF can only remove disagreement that the edit brings: a model that draws the same scene a little
differently in every view keeps that much error whatever the queries do. Per scene of
``qnerf_eval.py``'s case file, three sets of views are scored against the edited scene's renders, as
``qnerf_eval.py`` scores them (``consistency_error`` above the renderer's own reprojection floor,
``gt_psnr``):

- ``vae``: the ground-truth edited renders through the model's VAE (encode, decode): the decoder's
  floor, below which no latent method goes;
- ``redraw``: the per-view pipeline run on the edited scene's own renders with the edit prompt as
  both source and target (inverted and replayed with nothing to change): the model's floor when the
  answer is already consistent;
- ``per_view``: the edit itself with no consolidation (``qnerf_eval.py``'s baseline).

``headroom`` = 1 - redraw / per_view: the reduction a method would reach if it made the edit as
consistent as the model redrawing the truth. Last line JSON: means per set, per edit group, and per
scene.

    python benchmarks/qnerf_error_floor.py
    python benchmarks/qnerf_error_floor.py --max-scenes 2 --size 128
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import qnerf_eval  # noqa: E402

from pipelines.decoding import decode_latents  # noqa: E402
from pipelines.multiview_edit import MultiViewEditPipeline  # noqa: E402
from worlds.shapes3d.render import render  # noqa: E402
from worlds.shapes3d.scene import Scene  # noqa: E402
from worlds.shapes3d.score import psnr  # noqa: E402

SETS = ("vae", "redraw", "per_view")


@torch.no_grad()
def vae_round_trip(pipe: MultiViewEditPipeline, rgbs: list[torch.Tensor]) -> list[torch.Tensor]:
    """(H, W, 3) uint8 renders -> the same through the VAE (posterior mode, decoded as the pipeline
    decodes its edits), uint8."""
    latents = pipe.encode_images(torch.stack([qnerf_eval.to_model(x) for x in rgbs]))
    return qnerf_eval.to_rgb(decode_latents(pipe.vae, pipe.image_processor, latents, "pt"))


def scene_record(pipe: MultiViewEditPipeline, scene: Scene, where: str,
                 args: argparse.Namespace) -> dict[str, Any]:
    """The three sets' scores on one scene."""
    edit = qnerf_eval.scene_edit(scene, where)
    target, _ = qnerf_eval.edited_scene(scene, edit, where)
    views = scene.views[: args.views] if args.views else scene.views
    gt = [render(target.objects, v, size=args.size) for v in views]
    floor = qnerf_eval.consistency([r.rgb for r in gt], gt)
    rgb = vae_round_trip(pipe, [r.rgb for r in gt])
    vae = {"consistency_error": qnerf_eval.consistency(rgb, gt) - floor,
           "gt_psnr": float(np.mean([psnr(x, r.rgb) for x, r in zip(rgb, gt, strict=True)]))}
    plain = argparse.Namespace(**{**vars(args), "methods": ["per_view"]})
    edited = qnerf_eval.run_scene(pipe, scene, edit, where, plain)
    redraw = qnerf_eval.run_scene(pipe, target, {"from": edit["to"], "to": edit["to"]}, where, plain)
    keys = ("consistency_error", "gt_psnr")
    return {"id": edited["id"], "group": edited["group"], "floor": floor, "vae": vae,
            "redraw": {k: redraw["per_view"][k] for k in keys},
            "per_view": {k: edited["per_view"][k] for k in keys}}


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Means per set, and the headroom 1 - redraw / per_view of the mean errors."""
    out: dict[str, Any] = {s: {k: round(float(np.mean([r[s][k] for r in records])), 4)
                               for k in ("consistency_error", "gt_psnr")} for s in SETS}
    per, redraw = out["per_view"]["consistency_error"], out["redraw"]["consistency_error"]
    out["headroom"] = round(1 - redraw / per, 4) if per > 0 else None
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    qnerf_eval.scene_args(p)
    # the rest of qnerf_eval's settings at its defaults (the per-view edit does not read QNeRF's)
    return qnerf_eval.with_eval_defaults(p, p.parse_args(argv))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    records = qnerf_eval.scene_records(args, scene_record)
    groups = sorted({str(r["group"]) for r in records})
    result = {"sets": summarise(records),
              "groups": {g: summarise([r for r in records if str(r["group"]) == g]) for g in groups},
              "scenes": [r["id"] for r in records], "size": args.size, "steps": args.steps,
              "control": args.control, "model": str(args.model), "torch": torch.__version__,
              "per_scene": records}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
