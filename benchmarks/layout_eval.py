"""Does CSG put the objects in their boxes? Layout accuracy of each method on the shapes model.

For every case {prompt, phrases, boxes} and seed, generates with unguided / redistribution /
guidance / full CSG (same initial noise), detects objects with the shapes detector and scores:
- hit_rate: fraction of objects found with the right colour and shape and IoU >= 0.5 with the box;
- miou: mean over objects of the best IoU of a right colour+shape detection (0 when none);
- all_hit_rate: fraction of images in which every object hits;
- seconds_per_image: wall time of one pipeline call (decode included, warm-up excluded);
- colour_hit_rate, colour_miou: the same with the shape ignored (diagnostic: right colour in the box).
The last line is one JSON object: {"methods": {...}, "time_ratio_full_vs_unguided": ...}.

    python benchmarks/layout_eval.py --seeds 4                     # default cases, assets/shapes-sd
    python benchmarks/layout_eval.py --cases benchmarks/cases/layout_heldout.json --seeds 4
    python benchmarks/layout_eval.py --quick
    python benchmarks/layout_eval.py --layout-params '{"scale_factor": 20}'   # override the model's

The pipeline's defaults are the model's (``<model>/attn_processors.json``: its LayoutConfig and sampling
sections, see ``pipelines.layout_to_image.ModelSettings``). A case file is a list of cases, or
{"cases": [...]} with optional "layout_params" / "sampling" that override the model's settings for
that file; ``--layout-params`` and ``--steps`` override both. The JSON records the values used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from pipelines.layout_to_image import (  # noqa: E402
    SAMPLING_DEFAULTS,
    LayoutToImagePipeline,
    check_layout_params,
    draw_boxes,
)
from worlds.shapes.detector import box_iou, detect  # noqa: E402

METHODS = {"unguided": "none", "redistribution": "redistribution", "guidance": "guidance", "full": "full"}
DEFAULT_CASES = ROOT / "benchmarks" / "cases" / "layout_default.json"  # the settings were tuned on these
HELDOUT_CASES = ROOT / "benchmarks" / "cases" / "layout_heldout.json"  # never tuned on
DEFAULT_MODEL = ROOT / "assets" / "shapes-sd"


def load_cases(path: Path) -> tuple[list[dict], dict, dict]:
    """(cases, layout_params, sampling) from a case file; ValueError naming the file on bad content."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no case file at {path}; pass --cases with a JSON file like {DEFAULT_CASES}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if isinstance(data, list):
        data = {"cases": data}
    cases = data.get("cases")
    if not cases:
        raise ValueError(f"{path}: no cases; give a list of {{prompt, phrases, boxes}}")
    for i, c in enumerate(cases):
        missing = {"prompt", "phrases", "boxes"} - set(c)
        if missing:
            raise ValueError(f"{path}: case {i} lacks {sorted(missing)}")
    params = dict(data.get("layout_params", {}))
    try:
        check_layout_params(params)
    except ValueError as err:
        raise ValueError(f"{path}: layout_params: {err}") from None
    return cases, params, dict(data.get("sampling", {}))


def parse_layout_params(text: str) -> dict:
    """The ``--layout-params`` JSON object; ValueError saying what is wrong with it."""
    try:
        params = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--layout-params {text!r} is not valid JSON ({err}); give an object like "
                         '\'{"scale_factor": 1.0, "iterations": 5}\'') from None
    if not isinstance(params, dict):
        raise ValueError(f"--layout-params {text!r} must be a JSON object of LayoutConfig values, "
                         'like \'{"scale_factor": 1.0}\'')
    try:
        check_layout_params(params)
    except ValueError as err:
        raise ValueError(f"--layout-params: {err}") from None
    return params


def parse_phrase(phrase: str) -> tuple[str, str]:
    """'red circle' -> ('red', 'circle'): the detector's colour and shape labels."""
    words = [w for w in phrase.split() if w not in ("a", "an", "the")]
    if len(words) != 2:
        raise ValueError(f"phrase {phrase!r} must be '<colour> <shape>' for the shapes detector")
    return words[0], words[1]


def score(image: np.ndarray, phrases: list[str], boxes: list[list[float]],
          match_shape: bool = True) -> list[float]:
    """Best IoU of a right colour+shape detection with each object's box (0 when none).

    ``match_shape=False`` ignores the shape (diagnostic: is the right colour in the box?)."""
    dets = detect(image)
    out = []
    for phrase, box in zip(phrases, boxes, strict=True):
        colour, shape = parse_phrase(phrase)
        ious = [box_iou(d.box, box) for d in dets
                if d.colour == colour and (d.shape == shape or not match_shape)]
        out.append(max(ious, default=0.0))
    return out


def evaluate(pipe: LayoutToImagePipeline, cases: list[dict], seeds: range, params: dict, sampling: dict,
             methods: list[str], save: Path | None = None) -> dict:
    """Score every method on every (case, seed). Methods run interleaved per (case, seed), so a
    loaded machine slows them alike and the time ratio stays fair. ``params`` and ``sampling``
    override the pipeline's (the model's) defaults."""
    steps, cfg = sampling.get("num_inference_steps"), sampling.get("guidance_scale")
    c0 = cases[0]
    pipe(c0["prompt"], boxes=c0["boxes"], phrases=c0["phrases"], mode="full", num_inference_steps=2,
         guidance_scale=cfg, layout_params=params, generator=torch.Generator().manual_seed(0))  # warm-up
    acc: dict[str, dict[str, list]] = {m: {"ious": [], "colour": [], "all_hit": [], "secs": []}
                                       for m in methods}
    bar = tqdm(total=len(cases) * len(seeds), desc="layout_eval", unit="case x seed")
    for ci, case in enumerate(cases):
        for seed in seeds:
            for method in methods:
                a = acc[method]
                t0 = time.perf_counter()
                out = pipe(case["prompt"], boxes=case["boxes"], phrases=case["phrases"], mode=METHODS[method],
                           num_inference_steps=steps, guidance_scale=cfg, layout_params=params,
                           generator=torch.Generator().manual_seed(seed))
                a["secs"].append(time.perf_counter() - t0)
                img = np.asarray(out.images[0].convert("RGB"))
                s = score(img, case["phrases"], case["boxes"])
                a["ious"] += s
                a["colour"] += score(img, case["phrases"], case["boxes"], match_shape=False)
                a["all_hit"].append(all(v >= 0.5 for v in s))
                if save is not None:
                    big = out.images[0].resize((256, 256), 0)
                    draw_boxes(big, case["boxes"], case["phrases"]).save(save / f"{method}_c{ci}_s{seed}.png")
            bar.update()
    bar.close()
    results = {}
    for method, a in acc.items():
        arr, col = np.array(a["ious"]), np.array(a["colour"])
        results[method] = {"hit_rate": float((arr >= 0.5).mean()), "miou": float(arr.mean()),
                           "all_hit_rate": float(np.mean(a["all_hit"])),
                           "seconds_per_image": float(np.mean(a["secs"])),
                           "colour_hit_rate": float((col >= 0.5).mean()), "colour_miou": float(col.mean()),
                           "objects": int(arr.size), "images": len(a["all_hit"])}
        print(json.dumps({method: results[method]}), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=Path, default=DEFAULT_CASES)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--seed-offset", type=int, default=0,
                    help="first seed (seeds offset .. offset+N-1); tune parameters on other seeds than "
                         "the reported 0..N-1")
    ap.add_argument("--quick", action="store_true", help="2 cases, 1 seed (CI-sized)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    ap.add_argument("--layout-params", default="{}",
                    help="JSON object of LayoutConfig values overriding the model's and the case file's")
    ap.add_argument("--steps", type=int, default=None, help="override the number of denoising steps")
    ap.add_argument("--save", type=Path, default=None, help="folder for PNGs with boxes drawn")
    ap.add_argument("--out", type=Path, default=None, help="also write the final JSON object to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not (args.model / "model_index.json").is_file():
        raise SystemExit(f"no Diffusers pipeline at {args.model}; train/export it or pass --model PATH")
    if args.seeds < 1:
        ap.error(f"--seeds {args.seeds}: give at least 1 seed")
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps {args.steps}: give a positive number of denoising steps")
    try:
        cases, params, sampling = load_cases(args.cases)
        params.update(parse_layout_params(args.layout_params))
    except ValueError as err:
        ap.error(str(err))
    if args.steps:
        sampling["num_inference_steps"] = args.steps
    seeds = range(args.seed_offset, args.seed_offset + (1 if args.quick else args.seeds))
    if args.quick:
        cases = cases[:2]
    methods = [m for m in args.methods.split(",") if m]
    bad = set(methods) - set(METHODS)
    if bad:
        raise SystemExit(f"unknown methods {sorted(bad)}; use {list(METHODS)}")
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
    pipe = LayoutToImagePipeline.from_pretrained(args.model, dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    res = evaluate(pipe, cases, seeds, params, sampling, methods, args.save)
    used_params = {**pipe.settings.layout, **params}
    used_sampling = {**SAMPLING_DEFAULTS, **pipe.settings.sampling, **sampling}
    source = str(pipe.settings.source) if pipe.settings.source else "LayoutConfig defaults"
    ratio = None
    if "full" in res and "unguided" in res:
        ratio = res["full"]["seconds_per_image"] / res["unguided"]["seconds_per_image"]
    summary = {"methods": res, "time_ratio_full_vs_unguided": ratio, "model": str(args.model),
               "cases": len(cases), "seeds": len(seeds), "seed_offset": args.seed_offset,
               "case_file": str(args.cases), "layout_params": used_params, "sampling": used_sampling,
               "model_settings": source, "overrides": {"layout_params": params, "sampling": sampling}}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
