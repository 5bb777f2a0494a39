"""Zero-to-Hero vs plain Zero-1-to-3 on the 3D shapes world, scored against rendered ground truth.

    python benchmarks/z2h_eval.py --scenes benchmarks/cases/shapes3d_novel_view.json --seeds 2
    python benchmarks/z2h_eval.py --quick                 # 1 scene per group, 2 seeds, every method
    python benchmarks/z2h_eval.py --methods plain,z2h --save out/z2h   # PNG grids per scene
    python benchmarks/z2h_eval.py --methods plain > a.log; ... --methods z2h > b.log  # one per core
    python benchmarks/z2h_eval.py --merge a.log b.log      # ... combined as one run

Scene files are the world's: a JSON list of {"objects": [...], "views": [...]}; the first view is the
source, every other view a target. Per scene and seed, the source view is rendered, every target is
generated in one batch by ``pipelines.zero123.Zero123Pipeline`` with each method's
``ZeroToHeroConfig`` (same seed across methods: paired), and scored against its render by
``worlds.shapes3d.score``.

Methods (Table 6 of the paper, our names):
- ``plain``: uniform DDIM, 50 steps (the demo's);
- ``plain_equal_nfe``: uniform DDIM with as many network evaluations as Zero-to-Hero (66);
- ``hourglass``: the 26-step Hourglass schedule alone;
- ``hourglass_resample``: + resampling (R = 5 on t >= 800);
- ``hourglass_resample_amf``: + attention map filtering;
- ``z2h``: + mutual self-attention (the full method).

Per method: ``psnr``, ``ssim``, ``mask_iou``, ``colour_present`` (``worlds.shapes3d.score.summarise``),
``nfe``, ``seconds_per_view`` and ``seed_std``: the per-pixel standard deviation across seeds (images
in [0, 1]), averaged over pixels and views: the paper's plausibility/diversity knob. The last line is
one JSON object ``{"methods": {...}, "deltas": {...}, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from attn_processors.zero_to_hero import ZeroToHeroConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENES = ROOT / "benchmarks" / "cases" / "shapes3d_novel_view.json"
DEFAULT_MODEL = ROOT / "assets" / "shapes3d-zero123"
Z2H = ZeroToHeroConfig()
METHODS: dict[str, ZeroToHeroConfig] = {
    "plain": ZeroToHeroConfig.plain(50),
    "plain_equal_nfe": ZeroToHeroConfig.plain(Z2H.nfe()),
    "hourglass": ZeroToHeroConfig(amf=False, msa=False, resample_iterations=1),
    "hourglass_resample": ZeroToHeroConfig(amf=False, msa=False),
    "hourglass_resample_amf": ZeroToHeroConfig(msa=False),
    "z2h": Z2H,
}
METRICS = ("psnr", "ssim", "mask_iou", "colour_present")
COMPARE = (("z2h", "plain"), ("z2h", "plain_equal_nfe"))


class MissingWorld(RuntimeError):
    """The 3D shapes world (renderer, scene files, scorer) cannot be imported here."""


def world() -> Any:
    """The world's modules (imported on use: the toolkit does not need them)."""
    try:
        from worlds.shapes3d import render, scene, score
    except ImportError as err:
        raise MissingWorld(
            f"benchmarks/z2h_eval.py needs the 3D shapes world (worlds.shapes3d: render, scene, score), "
            f"which does not import here ({err}); check out the 3D shapes world first") from None
    return argparse.Namespace(render=render.render, load_scenes=scene.load_scenes,
                              first_per_group=scene.first_per_group, score=score.score_novel_views,
                              summarise=score.summarise)


def relative_pose(source: Any, target: Any) -> tuple[float, float, float]:
    """(d polar, d azimuth, d radius) of two scene-file views; polar = 90 - elevation, d azimuth
    wrapped into [-180, 180)."""
    d_polar = (90.0 - target.elevation) - (90.0 - source.elevation)
    d_az = (target.azimuth - source.azimuth + 180.0) % 360.0 - 180.0
    return d_polar, d_az, target.radius - source.radius


def seed_std(samples: Sequence[np.ndarray]) -> float | None:
    """Mean over pixels and views of the per-pixel std across seeds; samples: per seed (T, H, W, 3)
    uint8. None with fewer than 2 seeds."""
    if len(samples) < 2:
        return None
    stack = np.stack(samples).astype(np.float64) / 255.0  # (S, T, H, W, 3)
    return round(float(stack.std(axis=0).mean()), 5)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a local Zero-1-to-3 folder")
    p.add_argument("--scenes", type=Path, default=DEFAULT_SCENES)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {list(METHODS)}")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--per-group", type=int, default=None, help="only the first N scenes of each group")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save", type=Path, default=None, metavar="DIR",
                   help="a PNG per scene: source | truth | each method (first seed), a row per target")
    p.add_argument("--quick", action="store_true", help="1 scene per group, 2 seeds")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="LOG",
                   help="combine the results of one evaluation split by --methods over processes and stop")
    args = p.parse_args(argv)
    if args.quick:
        args.per_group, args.seeds = 1, 2
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: give at least 1 (2 or more for seed_std)")
    if args.per_group is not None and args.per_group < 1:
        p.error(f"--per-group {args.per_group}: give at least 1")
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        p.error(f"--methods {args.methods!r}: unknown {unknown}; choose from {list(METHODS)}")
    args.methods = names
    if not args.scenes.is_file():
        p.error(f"--scenes {args.scenes}: no such file; give a scene file of the 3D shapes world")
    return args


def load_pipeline(model: Path, device: str) -> Any:
    """Our Zero-1-to-3 pipeline from a local folder (a clear error when the asset is not there yet)."""
    from pipelines.zero123 import Zero123Pipeline

    if not Path(model).is_dir():
        raise FileNotFoundError(f"no model folder at {model}; train and export the 3D world's Zero-1-to-3 "
                                "(python -m worlds.shapes3d.zero123 --run RUN --out FOLDER) or pass --model")
    pipe = Zero123Pipeline.from_pretrained(model).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    w = world()
    pipe = load_pipeline(args.model, args.device)
    size = pipe.image_size
    scenes = w.first_per_group(w.load_scenes(args.scenes), args.per_group)
    records: dict[str, list] = {m: [] for m in args.methods}
    stds: dict[str, list] = {m: [] for m in args.methods}
    seconds = dict.fromkeys(args.methods, 0.0)
    views = 0
    for k, scene in enumerate(scenes):
        source = w.render(scene.objects, scene.views[0], size=size).rgb.numpy()  # (H, W, 3) uint8
        poses = [relative_pose(scene.views[0], v) for v in scene.views[1:]]
        firsts: dict[str, np.ndarray] = {}
        for m in args.methods:
            samples = []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                out = pipe(source, poses, z2h=METHODS[m], guidance_scale=args.cfg, output_type="np",
                           generator=torch.Generator().manual_seed(1000 * k + seed))
                seconds[m] += time.perf_counter() - t0
                imgs = (out.images * 255).round().astype(np.uint8)  # (T, H, W, 3)
                samples.append(imgs)
                records[m].extend(w.score(scene, list(imgs), size))
            firsts[m] = samples[0]
            if (s := seed_std(samples)) is not None:
                stds[m].append(s)
        views += len(poses) * args.seeds
        if args.save:
            save_grid(args.save, w, scene, k, source, firsts, size)
    methods = {}
    for m in args.methods:
        summary = w.summarise(records[m])
        methods[m] = {**{key: summary[key] for key in METRICS}, "nfe": METHODS[m].nfe(),
                      "seconds_per_view": round(seconds[m] * args.seeds / max(views, 1), 4),
                      "seed_std": round(float(np.mean(stds[m])), 5) if stds[m] else None}
    return {"methods": methods, "deltas": deltas(methods), "model": str(args.model),
            "scenes_file": str(args.scenes), "scenes": len(scenes), "seeds": args.seeds, "cfg": args.cfg,
            "device": args.device, "torch": torch.__version__}


def deltas(methods: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """`a_vs_b`: metric(a) - metric(b) for the comparisons the acceptance names (when both ran)."""
    out = {}
    for a, b in COMPARE:
        if a in methods and b in methods:
            out[f"{a}_vs_{b}"] = {k: None if methods[a][k] is None or methods[b][k] is None
                                  else round(methods[a][k] - methods[b][k], 4) for k in METRICS}
    return out


SHARED = ("model", "scenes_file", "scenes", "seeds", "cfg", "device")  # what the parts of one run share


def merge(logs: Sequence[Path]) -> dict[str, Any]:
    """One result from the last JSON lines of runs split by ``--methods`` (one process per core): the
    methods side by side and the deltas between them. Seeds are paired by scene and seed index, so
    the parts compare as one run; each part's seconds were timed in its own process."""
    parts = []
    for log in logs:
        lines = [line for line in Path(log).read_text().splitlines() if line.startswith("{")]
        if not lines or "methods" not in (last := json.loads(lines[-1])):
            raise ValueError(f"--merge {log}: no finished z2h_eval result there")
        parts.append(last)
    settings = [{k: part.get(k) for k in SHARED} for part in parts]
    if any(s != settings[0] for s in settings):
        raise ValueError(f"--merge: the parts ran with other settings ({settings}); merge parts of one run")
    methods: dict[str, dict[str, Any]] = {}
    for log, part in zip(logs, parts, strict=True):
        if twice := sorted(set(methods) & set(part["methods"])):
            raise ValueError(f"--merge {log}: methods {twice} are in another part too")
        methods.update(part["methods"])
    methods = {m: methods[m] for m in METHODS if m in methods}  # the paper's order
    return {"methods": methods, "deltas": deltas(methods), **settings[0], "torch": parts[0].get("torch"),
            "merged_from": [str(p) for p in logs]}


def save_grid(folder: Path, w: Any, scene: Any, k: int, source: np.ndarray, firsts: dict[str, np.ndarray],
              size: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, view in enumerate(scene.views[1:]):
        truth = w.render(scene.objects, view, size=size).rgb.numpy()
        rows.append(np.concatenate([source, truth, *[imgs[i] for imgs in firsts.values()]], 1))
    name = str(scene.extra.get("id", f"scene{k:03d}"))
    Image.fromarray(np.concatenate(rows, 0)).save(folder / f"{name}.png")
    (folder / "columns.txt").write_text(" | ".join(["source", "ground truth", *firsts]) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.merge is not None:
        result = merge(args.merge)
        print(json.dumps(result))
        return result
    torch.set_num_threads(args.threads)
    try:
        result = evaluate(args)
    except (MissingWorld, FileNotFoundError) as err:
        raise SystemExit(f"z2h_eval: {err}") from None
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
