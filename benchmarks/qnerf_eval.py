"""QNeRF multi-view editing on the 3D shapes world: per-view edits vs consolidated edits, scored
against the ground truth (the scene re-rendered with the object changed).

    python benchmarks/qnerf_eval.py --scenes benchmarks/cases/qnerf_edit.json --model assets/shapes3d-sd
    python benchmarks/qnerf_eval.py --scenes benchmarks/cases/qnerf_edit.json --quick
    python benchmarks/qnerf_eval.py --scenes FILE --edit "red cube=>blue cube"     # one edit for all
    python benchmarks/qnerf_eval.py --scenes FILE --grid grid.png   # first scene: source/edits/truth
    python benchmarks/qnerf_eval.py --write-cases benchmarks/cases/qnerf_edit.json # regenerate the file

Each scene carries ``"edit": {"from": "red cube", "to": "blue sphere"}``: the object matching
``from`` becomes ``to`` (same place, size and yaw). Every view is rendered (source), the edited scene
is rendered too (ground truth: RGB, z-depth, masks), and both methods edit the source renders with
the source / edited captions and depth controls (``worlds.shapes3d.models.depth_control``):

- ``per_view``: MasaCtrl + ControlNet per view (``QNeRFConfig(alpha=0)``: no consolidation);
- ``qnerf``: the same with query consolidation (``--alpha``, ``--tau``, ``--fit-iters``).

Per method (means over scenes): ``consistency_error`` (mean absolute colour difference, 0..255, between
a view and every other view reprojected into it with the ground-truth depth and cameras, over
co-visible pixels, minus the same figure for the ground-truth renders: the renderer's own
reprojection floor), ``consistency_raw``, ``gt_psnr`` (vs the ground-truth renders), ``edit_success``
(views where the edited object is present with the target colour and covers its ground-truth mask
with IoU >= 0.5, by ``worlds.shapes3d.score.score_view``) and ``seconds``. The last line is JSON
``{"methods": {...}, ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attn_processors.qnerf import QNeRFConfig  # noqa: E402
from pipelines.multiview_edit import MultiViewEditPipeline  # noqa: E402
from worlds.shapes.vocab import COLOURS  # noqa: E402
from worlds.shapes3d.camera import Camera, to_cameras  # noqa: E402
from worlds.shapes3d.models import depth_control, scene_caption  # noqa: E402
from worlds.shapes3d.render import RenderOutput, render  # noqa: E402
from worlds.shapes3d.scene import SHAPES3D, Object3D, Scene, SceneSpec, View, load_scenes, sample_scene  # noqa: E402
from worlds.shapes3d.score import psnr, score_view  # noqa: E402

DEFAULT_MODEL = ROOT / "assets" / "shapes3d-sd"
VIEWS, CASE_SEED = 8, 9201
CASE_SPEC = SceneSpec(n_objects=(1, 2), disc=0.4, min_offset=0.1, size=(0.22, 0.3), elevation=(15.0, 35.0),
                      radius=2.4, views=1)
MIN_IOU = 0.5  # the edited object's mask IoU for an edit to count as done


# -- the edit ---------------------------------------------------------------------------------------
def parse_phrase(text: str, where: str) -> tuple[str, str]:
    """'red cube' -> ('red', 'cube'); ValueError naming ``where`` otherwise."""
    words = text.split()
    if len(words) != 2 or words[0] not in COLOURS or words[1] not in SHAPES3D:
        raise ValueError(f"{where}={text!r}; give '<colour> <shape>' with a colour of {COLOURS} and a shape "
                         f"of {SHAPES3D}, e.g. 'red cube'")
    return words[0], words[1]


def parse_edit(text: str) -> dict[str, str]:
    """--edit 'red cube=>blue sphere' -> {'from': 'red cube', 'to': 'blue sphere'}."""
    if text.count("=>") != 1:
        raise ValueError(f"--edit {text!r}; write it as 'red cube=>blue cube'")
    src, dst = (s.strip() for s in text.split("=>"))
    parse_phrase(src, "--edit from")
    parse_phrase(dst, "--edit to")
    return {"from": src, "to": dst}


def edited_scene(scene: Scene, edit: dict[str, str], where: str) -> tuple[Scene, int]:
    """(the scene with the object matching edit['from'] changed to edit['to'], its index)."""
    colour, shape = parse_phrase(edit["from"], f"{where}.edit.from")
    new_colour, new_shape = parse_phrase(edit["to"], f"{where}.edit.to")
    hits = [i for i, o in enumerate(scene.objects) if (o.colour, o.shape) == (colour, shape)]
    if len(hits) != 1:
        have = [f"{o.colour} {o.shape}" for o in scene.objects]
        raise ValueError(f"{where}.edit.from={edit['from']!r} matches {len(hits)} objects of {have}; "
                         "name exactly one object of the scene")
    objects = list(scene.objects)
    objects[hits[0]] = replace(objects[hits[0]], colour=new_colour, shape=new_shape, rgb=None)
    return Scene(tuple(objects), scene.views, scene.extra), hits[0]


# -- cameras and renders ----------------------------------------------------------------------------
def to_model(rgb: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) in [-1, 1]."""
    return rgb.permute(2, 0, 1).float() / 127.5 - 1


def to_rgb(images: torch.Tensor) -> list[torch.Tensor]:
    """Pipeline output (V, 3, H, W) in [0, 1] -> one (H, W, 3) uint8 image per view, as scored."""
    return [(x.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8) for x in images]


def scene_edit(scene: Scene, where: str, hint: str = "") -> dict[str, str]:
    """The scene's ``"edit"`` ({"from": ..., "to": ...}); one ValueError naming ``where`` without it."""
    edit = scene.extra.get("edit")
    if not isinstance(edit, dict) or not {"from", "to"} <= set(edit):
        raise ValueError(f"{where} has no 'edit': {{'from': ..., 'to': ...}}; add one{hint}")
    return edit


# -- metrics ----------------------------------------------------------------------------------------
def _sample(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear colours (N, 3) of image (H, W, 3) at pixel points uv (N, 2) (pixel centres at +0.5)."""
    h, w = image.shape[:2]
    grid = torch.stack([uv[:, 0] / w * 2 - 1, uv[:, 1] / h * 2 - 1], -1)[None, None].float()
    out = torch.nn.functional.grid_sample(image.permute(2, 0, 1)[None].float(), grid, align_corners=False)
    return out[0, :, 0].T  # (N, 3)


def pair_error(img_a: torch.Tensor, img_b: torch.Tensor, cam_a: Camera, depth_a: torch.Tensor, cam_b: Camera,
               depth_b: torch.Tensor, rel_tol: float = 0.01) -> tuple[float, int]:
    """(sum of mean-over-channels |a - b reprojected|, count) over a's surface pixels that b sees.

    A pixel of a is lifted with its true depth and projected into b; it counts when it lands inside b
    and b's depth there (nearest pixel) agrees within ``rel_tol`` (not occluded)."""
    ok = torch.isfinite(depth_a)
    pts = cam_a.lift(depth_a.where(ok, 0.0))[ok]  # (N, 3)
    uv, z = cam_b.project(pts)
    j, i = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    inside = (i >= 0) & (i < cam_b.h) & (j >= 0) & (j < cam_b.w) & (z > 0)
    seen = torch.zeros_like(inside)
    d_b = depth_b[i[inside], j[inside]]
    seen[inside] = torch.isfinite(d_b) & ((z[inside] - d_b).abs() <= rel_tol * d_b)
    if not seen.any():
        return 0.0, 0
    mine = img_a[ok][seen].float()  # (M, 3)
    theirs = _sample(img_b, uv[seen])
    return float((mine - theirs).abs().mean(-1).sum()), int(seen.sum())


def consistency(images: list[torch.Tensor], truth: list[RenderOutput]) -> float:
    """Mean colour difference (0..255) over co-visible pixels of every ordered pair of views."""
    total, count = 0.0, 0
    for a in range(len(images)):
        for b in range(len(images)):
            if a != b:
                s, n = pair_error(images[a], images[b], truth[a].camera, truth[a].depth, truth[b].camera,
                                  truth[b].depth)
                total, count = total + s, count + n
    return total / max(count, 1)


def edit_done(image: torch.Tensor, truth: RenderOutput, colours: list[str], index: int) -> bool | None:
    """Whether the edited object shows with its new colour over its true mask (None: not visible)."""
    rec = score_view(image, truth, colours)
    for obj in rec["objects"]:
        if obj["colour"] == colours[index]:
            return bool(obj["present"] and obj["iou"] >= MIN_IOU)
    return None


def score(images: list[torch.Tensor], truth: list[RenderOutput], colours: list[str], index: int,
          floor: float) -> dict[str, float | None]:
    done = [d for d in (edit_done(img, t, colours, index) for img, t in zip(images, truth, strict=True))
            if d is not None]
    raw = consistency(images, truth)
    return {"consistency_error": raw - floor, "consistency_raw": raw,
            "gt_psnr": float(np.mean([psnr(img, t.rgb) for img, t in zip(images, truth, strict=True)])),
            "edit_success": float(np.mean(done)) if done else None}


# -- one scene --------------------------------------------------------------------------------------
def edit_depths(src: list[RenderOutput], gt: list[RenderOutput], control: str,
                field_depth: str) -> tuple[list[RenderOutput], list[RenderOutput] | None]:
    """(the renders whose depth drives the edit's ControlNet, those whose depth supervises the field).

    ``control="edited"`` hands the edit the edited scene's geometry (an oracle 3D control: a shape
    edit then only has to fill it in); ``"source"`` gives it the source views' depth, all a user
    without the new geometry has, so a shape edit must change the shape against its control.
    ``field_depth="control"`` follows ``control``; ``"none"`` fits the field without depth."""
    depth_of = {"edited": gt, "source": src}
    if control not in depth_of or field_depth not in (*depth_of, "control", "none"):
        raise ValueError(f"control={control!r}, field_depth={field_depth!r}; use 'edited' or 'source' "
                         "(field depth also 'control' or 'none')")
    field = control if field_depth == "control" else field_depth
    return depth_of[control], None if field == "none" else depth_of[field]


def run_scene(pipe: MultiViewEditPipeline, scene: Scene, edit: dict[str, str], where: str,
              args: argparse.Namespace, **pipe_kw: Any) -> dict[str, Any]:
    """Every method of ``args.methods`` on one scene; ``pipe_kw`` go to each pipeline call."""
    target, index = edited_scene(scene, edit, where)
    views = scene.views[: args.views] if args.views else scene.views
    src = [render(scene.objects, v, size=args.size) for v in views]
    gt = [render(target.objects, v, size=args.size) for v in views]
    cameras = to_cameras([r.camera for r in gt])
    box = ((-args.bound,) * 3, (args.bound,) * 3)
    control, field = edit_depths(src, gt, args.control, args.field_depth)
    kw = dict(controls=torch.stack([depth_control(r.depth) for r in control]) if pipe.controlnet else None,
              source_controls=torch.stack([depth_control(r.depth) for r in src]) if pipe.controlnet else None,
              depths=None if field is None else torch.stack([r.depth for r in field]).float(),
              bounds=box, conditioning_scale=args.conditioning_scale,
              num_inference_steps=args.steps, guidance_scale=args.guidance, view_batch=args.view_batch,
              output_type="pt")
    images = torch.stack([to_model(r.rgb) for r in src])
    floor = consistency([r.rgb for r in gt], gt)
    colours = [o.colour for o in target.objects]
    out: dict[str, Any] = {"id": scene.extra.get("id", where), "group": scene.extra.get("group"),
                           "edit": edit, "floor": floor,
                           "rows": {"source": [r.rgb for r in src], "truth": [r.rgb for r in gt]}}
    base = QNeRFConfig(alpha=args.alpha, tau=args.tau, fit_iters=args.fit_iters, kv_start_step=args.kv_start,
                       guidance_steps=args.guidance_steps, until_step=args.until_step,
                       hard_inject=args.hard_inject)
    configs = {"per_view": replace(base, alpha=0.0, hard_inject=False), "qnerf": base}
    for method in args.methods:
        config = configs[method]
        start = time.perf_counter()
        result = pipe(images, cameras, scene_caption(scene.objects), scene_caption(target.objects),
                      qnerf=config, generator=torch.Generator().manual_seed(args.seed), **kw, **pipe_kw)
        seconds = time.perf_counter() - start
        rgb = to_rgb(result.images)
        out[method] = {**score(rgb, gt, colours, index, floor), "seconds": seconds,
                       "denoiser_calls": result.stats["denoiser_calls"]}
        out["rows"][method] = rgb
    return out


def save_grid(rows: dict[str, list[torch.Tensor]], path: Path) -> None:
    """One PNG: a row per method (source, per_view, qnerf, truth), a column per view."""
    order = [k for k in ("source", "per_view", "qnerf", "truth") if k in rows]
    grid = torch.cat([torch.cat(rows[k], dim=1) for k in order], dim=0)  # (rows*H, views*W, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(grid.numpy()).save(path)


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    methods: dict[str, dict[str, float | None]] = {}
    for method in [m for m in ("per_view", "qnerf") if records and m in records[0]]:
        keys = ("consistency_error", "consistency_raw", "gt_psnr", "edit_success", "seconds")
        vals = {k: [r[method][k] for r in records if r[method][k] is not None] for k in keys}
        methods[method] = {k: (round(float(np.mean(v)), 4) if v else None) for k, v in vals.items()}
    if len(methods) < 2:
        return methods
    per, ours = methods["per_view"]["consistency_error"], methods["qnerf"]["consistency_error"]
    if per is not None and ours is not None and per > 0:
        methods["qnerf"]["consistency_reduction"] = round(1 - ours / per, 4)
    return methods


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over all scenes and per edit group (colour / shape), and the scene count."""
    groups = sorted({str(r.get("group")) for r in records})
    return {"methods": summarise(records),
            "groups": {g: summarise([r for r in records if str(r.get("group")) == g]) for g in groups},
            "scenes": len(records)}


RUN_KEYS = ("methods", "groups", "scenes")  # what differs between the parts of one split run


def merge(logs: list[Path]) -> dict[str, Any]:
    """One result from the logs of a run split by ``--first-scene`` / ``--max-scenes`` (one process per
    core): the per-scene lines are summarised together; the parts must share every setting."""
    records, settings = [], []
    for log in logs:
        for line in log.read_text().splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                (records if "id" in row else settings).append(row)
    if not records or not settings:
        raise ValueError(f"--merge {[str(p) for p in logs]}: no finished qnerf_eval run there")
    same = [{k: v for k, v in s.items() if k not in RUN_KEYS} for s in settings]
    if any(s != same[0] for s in same):
        raise ValueError(f"--merge: the logs ran with other settings ({same}); merge parts of one run")
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"--merge: scenes {sorted({i for i in ids if ids.count(i) > 1})} appear twice")
    return {**summary(records), **same[0], "per_scene": records}


# -- the case file ----------------------------------------------------------------------------------
def case_scenes(count: int = 8, seed: int = CASE_SEED) -> list[Scene]:
    """Scenes of 1-2 off-centre objects seen from ``VIEWS`` cameras around them (45 degrees apart,
    jittered), each with an edit: colour edits first, then shape edits."""
    scenes = []
    for k in range(count):
        base = sample_scene(seed, k, CASE_SPEC)
        rng = np.random.default_rng([seed, k, 1])
        start = float(rng.uniform(0, 45))
        views = tuple(View(round(float(rng.uniform(*CASE_SPEC.elevation)), 2),
                           round((start + 45 * v + float(rng.uniform(-8, 8))) % 360, 2), CASE_SPEC.radius)
                      for v in range(VIEWS))
        obj: Object3D = base.objects[0]
        if k < count // 2:
            free = [c for c in COLOURS if c not in {o.colour for o in base.objects}]
            to = f"{free[int(rng.integers(len(free)))]} {obj.shape}"
            kind = "colour"
        else:
            shapes = [s for s in SHAPES3D if s != obj.shape]
            to = f"{obj.colour} {shapes[int(rng.integers(len(shapes)))]}"
            kind = "shape"
        edit = {"from": f"{obj.colour} {obj.shape}", "to": to}
        scenes.append(Scene(base.objects, views, {"group": kind, "id": f"{kind}-{k:02d}", "edit": edit}))
    return scenes


def dumps(scenes: list[Scene]) -> str:
    return "[\n" + ",\n".join(json.dumps(s.to_dict()) for s in scenes) + "\n]\n"


# -- main -------------------------------------------------------------------------------------------
def scene_args(p: argparse.ArgumentParser) -> None:
    """The options of every benchmark on the edit case file: which scenes, views and model, the render
    size, the steps, the edit's control and the seed."""
    p.add_argument("--scenes", type=Path, default=ROOT / "benchmarks" / "cases" / "qnerf_edit.json")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--first-scene", type=int, default=0, help="skip the scenes before this index")
    p.add_argument("--max-scenes", type=int, default=None)
    p.add_argument("--views", type=int, default=None, help="use the first N views of each scene")
    p.add_argument("--size", type=int, default=None, help="render size (default: the model's image size)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--control", choices=["edited", "source"], default="edited",
                   help="depth driving the edit's ControlNet: the edited scene's (a 3D control of the edit) "
                        "or the source views' (all a user without the new geometry has)")
    p.add_argument("--seed", type=int, default=0)


def check_scene_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.steps < 1:
        p.error(f"--steps {args.steps} must be >= 1")
    if args.views is not None and args.views < 2:
        p.error(f"--views {args.views} must be >= 2 (consistency compares views)")


def with_eval_defaults(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """``args`` (checked) with the rest of this benchmark's settings at their defaults."""
    check_scene_args(p, args)
    return argparse.Namespace(**{**vars(parse_args([])), **vars(args)})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    scene_args(p)
    p.add_argument("--quick", action="store_true", help="2 scenes, 4 views, 6 steps, 30 fit iterations")
    p.add_argument("--edit", type=parse_edit, default=None, help="'red cube=>blue cube' for every scene")
    p.add_argument("--alpha", type=float, default=QNeRFConfig.alpha)
    p.add_argument("--tau", type=int, default=QNeRFConfig.tau)
    p.add_argument("--guidance-steps", type=int, default=QNeRFConfig.guidance_steps,
                   help="gradient moves of alpha per guided step (the paper: 1)")
    p.add_argument("--until-step", type=int, default=None, help="no consolidation from this step on")
    p.add_argument("--hard-inject", action="store_true",
                   help="the paper's ablation: guided steps replace the target queries by the rendered ones")
    p.add_argument("--fit-iters", type=int, default=QNeRFConfig.fit_iters)
    p.add_argument("--kv-start", type=int, default=QNeRFConfig.kv_start_step)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--view-batch", type=int, default=4)
    p.add_argument("--bound", type=float, default=1.0, help="the query field covers [-bound, bound]^3")
    p.add_argument("--conditioning-scale", type=float, default=1.0, help="ControlNet conditioning scale")
    p.add_argument("--field-depth", choices=["control", "edited", "source", "none"], default="control",
                   help="z-depth supervising the field (default: the same depth as --control)")
    p.add_argument("--methods", nargs="+", choices=["per_view", "qnerf"], default=["per_view", "qnerf"])
    p.add_argument("--grid", type=Path, default=None, metavar="PNG",
                   help="save the first scene's views: source / per_view / qnerf / ground truth")
    p.add_argument("--write-cases", type=Path, default=None, metavar="FILE",
                   help="write the default scene file to FILE and stop")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="LOG",
                   help="summarise the logs of one run split over processes and stop")
    p.add_argument("--case-seed", type=int, default=CASE_SEED,
                   help="seed of --write-cases (another seed: a tuning set apart from the reported one)")
    args = p.parse_args(argv)
    if args.quick:
        args.max_scenes, args.views = args.max_scenes or 2, args.views or 4
        args.steps, args.fit_iters = min(args.steps, 6), min(args.fit_iters, 30)
    check_scene_args(p, args)
    for name in ("tau", "view_batch", "guidance_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def load_pipe(args: argparse.Namespace) -> MultiViewEditPipeline:
    """The edit pipeline of ``args.model`` (one clear exit when it is missing); fills ``args.size``
    with the model's image size when it was not given."""
    if not (args.model / "unet" / "config.json").is_file():
        raise SystemExit(f"--model {args.model}: no model there; train and export it first "
                         "(worlds/shapes3d/README.md) or pass --model DIR")
    pipe = MultiViewEditPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    if args.size is None:
        args.size = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
    return pipe


SceneRecord = Callable[[MultiViewEditPipeline, Scene, str, argparse.Namespace], dict[str, Any]]


def scene_records(args: argparse.Namespace, record: SceneRecord) -> list[dict[str, Any]]:
    """``record(pipe, scene, where, args)`` on each scene of ``args`` (the model loaded once), each
    record printed as one JSON line as it comes: what the studies on this case file share."""
    pipe = load_pipe(args)
    records = []
    for i, scene in enumerate(load_scenes(args.scenes)[args.first_scene:][: args.max_scenes]):
        records.append(record(pipe, scene, f"scenes[{i + args.first_scene}]", args))
        print(json.dumps(records[-1]))
    return records


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.write_cases is not None:
        cases = case_scenes(seed=args.case_seed)
        args.write_cases.write_text(dumps(cases))
        result: dict[str, Any] = {"file": str(args.write_cases), "scenes": len(cases), "seed": args.case_seed}
        print(json.dumps(result))
        return result
    if args.merge is not None:
        result = merge(args.merge)
        print(json.dumps(result))
        return result
    torch.manual_seed(args.seed)
    pipe = load_pipe(args)
    scenes = load_scenes(args.scenes)[args.first_scene:][: args.max_scenes]
    records = []
    for i, scene in enumerate(scenes):
        edit = args.edit or scene_edit(scene, f"scenes[{i}]", " or pass --edit")
        rec = run_scene(pipe, scene, edit, f"scenes[{i + args.first_scene}]", args)
        if args.grid is not None and not records:
            save_grid(rec["rows"], args.grid)
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ("id", "group", "floor", *args.methods)}))
    result = {**summary(records), "views": args.views or VIEWS, "size": args.size,
              "steps": args.steps, "control": args.control, "conditioning_scale": args.conditioning_scale,
              "alpha": args.alpha, "guidance_steps": args.guidance_steps, "until_step": args.until_step,
              "hard_inject": args.hard_inject,
              "tau": args.tau, "fit_iters": args.fit_iters,
              "model": str(args.model), "torch": torch.__version__}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
