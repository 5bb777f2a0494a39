"""Evaluate the 3D world's text + depth model: caption and depth in, image out, scored on the render.

    python benchmarks/shapes3d_eval.py --model assets/shapes3d-sd \
        --scenes benchmarks/cases/shapes3d_text_depth.json
    python benchmarks/shapes3d_eval.py --model DIR --quick      # 2 scenes per group, 5 steps

``--model`` is a ``StableDiffusionPipeline`` folder with the depth ControlNet in
``controlnet-depth/``; it loads with the stock ``StableDiffusionControlNetPipeline`` offline. For
every view of every scene the caption ("a red cube and a blue sphere") and the view's inverse-depth
map (``models.depth_control``) go in; the image is scored against the view's render
(``worlds.shapes3d.score``):

* ``mask_iou``: per visible object, chromaticity-labeller mask vs the render's mask;
* ``colour_accuracy``: fraction of images in which every requested colour is present;
* ``depth_adherence``: foreground IoU of the labelled pixels with the depth's object silhouette;
* ``seconds_per_image``: wall time of the pipeline call per image.
Groups (``one`` / ``two`` objects) are reported apart under ``groups``. The last line is one JSON
object.
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
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline  # noqa: E402

from worlds.shapes3d.models import depth_control, scene_caption  # noqa: E402
from worlds.shapes3d.render import render  # noqa: E402
from worlds.shapes3d.scene import Scene, first_per_group, load_scenes  # noqa: E402
from worlds.shapes3d.score import score_view  # noqa: E402

DEFAULT_SCENES = Path(__file__).resolve().parent / "cases" / "shapes3d_text_depth.json"


def load(model: Path, device: str) -> StableDiffusionControlNetPipeline:
    if not (model / "model_index.json").exists() or not (model / "controlnet-depth" / "config.json").exists():
        raise ValueError(f"{model} needs model_index.json and controlnet-depth/; export one with "
                         "`python -m worlds.shapes3d.train_depth --out RUN --export DIR`")
    controlnet = ControlNetModel.from_pretrained(model / "controlnet-depth", local_files_only=True)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(model, controlnet=controlnet,
                                                             local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def summarise(recs: list[dict]) -> dict:
    objs = [o for r in recs for o in r["objects"]]

    def mean(v: list[float]) -> float | None:
        return round(float(np.mean(v)), 4) if v else None

    return {"images": len(recs), "objects": len(objs), "mask_iou": mean([o["iou"] for o in objs]),
            "colour_accuracy": mean([float(all(o["present"] for o in r["objects"])) for r in recs]),
            "depth_adherence": mean([r["fg_iou"] for r in recs]), "psnr": mean([r["psnr"] for r in recs])}


def evaluate(args: argparse.Namespace) -> dict:
    pipe = load(args.model, args.device)
    scenes: list[Scene] = first_per_group(load_scenes(args.scenes), args.per_group)
    groups: dict[str, list[dict]] = {}
    seconds, n = 0.0, 0
    for k, scene in enumerate(scenes):
        colours = [o.colour for o in scene.objects]
        prompt = scene_caption(scene.objects)
        for i, view in enumerate(scene.views):
            truth = render(scene.objects, view, size=args.size)
            control = depth_control(truth.depth)[None]  # (1, 3, H, W)
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                img = pipe(prompt, image=control, num_inference_steps=args.steps, guidance_scale=args.cfg,
                           height=args.size, width=args.size, output_type="np",
                           generator=torch.Generator().manual_seed(1000 * k + 10 * i + seed)).images[0]
                seconds += time.perf_counter() - t0
                n += 1
                rgb = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
                group = str(scene.extra.get("group", "all"))
                groups.setdefault(group, []).append(score_view(rgb, truth, colours))
    everything = summarise([r for recs in groups.values() for r in recs])
    return {"model": str(args.model), "scenes_file": str(args.scenes), "scenes": len(scenes),
            "steps": args.steps, "cfg": args.cfg, "seeds": args.seeds,
            **{k: everything[k] for k in ("mask_iou", "colour_accuracy", "depth_adherence")},
            "seconds_per_image": round(seconds / max(n, 1), 4), "images": n,
            "groups": {g: summarise(r) for g, r in groups.items()}, "device": args.device,
            "torch": torch.__version__}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("assets/shapes3d-sd"))
    p.add_argument("--scenes", type=Path, default=DEFAULT_SCENES)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--per-group", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="2 scenes per group, 5 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.per_group, args.steps = 2, 5
    if args.steps < 1 or (args.per_group is not None and args.per_group < 1):
        p.error("--steps and --per-group must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = evaluate(args)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
