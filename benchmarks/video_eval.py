"""Evaluate the moving-shapes Wan model: detection-scored colour / motion / consistency, speed, and
the frame-tile structure of its 3D self-attention; optionally a technique against dense attention.

    python benchmarks/video_eval.py --quick
    python benchmarks/video_eval.py --attention tile_sparse --attention-options '{"k": 2}' --quick
    python benchmarks/video_eval.py --attention '{"__type__": "TileSparseConfig", "k": 2}' --quick
    python benchmarks/video_eval.py --model assets/moving-shapes-wan --num 40 --two-object 20

Videos are generated in one batched WanPipeline call per prompt set, each prompt with its own fixed
seed (generator list), scored per frame by worlds.moving_shapes.detect. ``diagonal_tile_ratio``
is measured on the dense model with a read-only attn1 probe (video_attention.FrameTileProbe): mean
attention mass on the query's own latent frame over the uniform share 1/F, per layer and averaged,
over every denoising step and CFG branch. With ``--attention X`` the same prompts and seeds are
generated again under ``attn_processors.core.install.apply(pipe, *configs)`` and compared per frame
(PSNR vs the dense video). X is a technique name (options in ``--attention-options``) or technique
settings in config JSON form, as ``config_to_json`` writes them (one object, or a list to compose);
``pipelines.video.attention_configs`` builds the configs either way. The last printed line is one JSON
object; bad arguments end in one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attn_processors.core.install import apply  # noqa: E402
from attn_processors.core.registry import config_to_json  # noqa: E402
from pipelines.video import attention_configs, check_request, describe_attention  # noqa: E402
from worlds.moving_shapes.attention_check import install_probes  # noqa: E402
from worlds.moving_shapes.data import eval_prompts  # noqa: E402
from worlds.moving_shapes.detect import score_video  # noqa: E402

DEFAULT_MODEL = ROOT / "assets" / "moving-shapes-wan"


def parse_attention(text: str, options_text: str) -> tuple[str | dict | list, dict]:
    """`--attention` as a technique name or config JSON text, and the options of a name; ValueError
    naming the flag when either is not valid JSON."""
    spec: str | dict | list = text
    if text.lstrip()[:1] in ("{", "["):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--attention is not valid JSON: {err.msg} at column {err.colno}") from err
    try:
        options = json.loads(options_text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--attention-options is not valid JSON: {err.msg} at column {err.colno}") from err
    if not isinstance(options, dict):
        raise ValueError(f"--attention-options must be a JSON object, e.g. '{{\"k\": 2}}' "
                         f"(got {options_text})")
    return spec, options


def check_calibratable(configs: tuple) -> None:
    """ValueError unless some config takes a calibrated tile plan (a `plan` field: tile-sparse)."""
    if not any(_takes_plan(c) for c in configs):
        raise ValueError("--calibrate needs a tile-sparse technique (a config with a `plan` field); got "
                         f"{', '.join(type(c).__name__ for c in configs) or 'dense'}")


def with_plan(configs: tuple, plan: str) -> tuple:
    """The configs with the calibrated tile plan set on every config that takes one."""
    return tuple(dataclasses.replace(c, plan=plan) if _takes_plan(c) else c for c in configs)


def _takes_plan(config) -> bool:
    return "plan" in {f.name for f in dataclasses.fields(config)}


def calibrate_plan(
    pipe, num_prompts: int, target_recall: float, path: Path, args: argparse.Namespace
) -> dict:
    """Calibrate the per-layer tile-sparse k on ``num_prompts`` prompts drawn apart from the evaluation
    prompts (another seed), at the evaluation's size and steps; save the plan JSON to ``path``."""
    from attn_processors.tile_sparse import calibrate

    items = eval_prompts(num_prompts, num_objects=1, seed=args.seed + 7_919)
    plan = calibrate(pipe, [it["prompt"] for it in items], target_recall=target_recall,
                     num_frames=args.frames, height=args.size, width=args.size,
                     num_inference_steps=args.steps, guidance_scale=args.guidance,
                     max_sequence_length=args.max_sequence_length,
                     generator=torch.Generator("cpu").manual_seed(args.seed + 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    plan.save(path)
    return {"plan": str(path), "k": plan.k, "target_recall": target_recall,
            "recall": {name: {str(k): round(r, 4) for k, r in by_k.items()}
                       for name, by_k in plan.recall.items()}}


def load_pipeline(model: Path, device: str):
    from diffusers import WanPipeline

    if not (Path(model) / "model_index.json").exists():
        raise ValueError(f"{model} is not a saved WanPipeline folder (no model_index.json); export one first")
    with quiet_loading():
        pipe = WanPipeline.from_pretrained(model).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No Diffusers/Transformers loading bars (a second's work): the eval shows one bar, over prompts."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = [(m, m.is_progress_bar_enabled()) for m in (diffusers_logging, transformers_logging)]
    for module, _ in was:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, enabled in was:
            if enabled:
                module.enable_progress_bar()


def generate(pipe, prompts: list[str], seeds: list[int], args: argparse.Namespace, desc: str) -> np.ndarray:
    """(N, T, H, W, 3) uint8 videos, generated in batches with one fixed seed per prompt; one progress
    bar over the prompts (the pipeline's own bars are off)."""
    from tqdm.auto import tqdm

    out = []
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=args.no_progress)
    for i in range(0, len(prompts), args.batch):
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[i : i + args.batch]]
        res = pipe(
            prompts[i : i + args.batch],
            num_frames=args.frames,
            height=args.size,
            width=args.size,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=gens,
            max_sequence_length=args.max_sequence_length,
            output_type="np",
        )
        out.append(np.clip(np.rint(np.asarray(res.frames) * 255), 0, 255).astype(np.uint8))
        bar.update(len(gens))
    bar.close()
    return np.concatenate(out)


def score(videos: np.ndarray, items: list[dict]) -> dict:
    rows = [score_video(v, it["objects"]) for v, it in zip(videos, items, strict=True)]
    keys = ("colour_accuracy", "shape_accuracy", "motion_accuracy", "temporal_consistency")
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys} | {"rows": rows}


def frame_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over videos and frames of the per-frame PSNR (dB) of uint8 clips (N, T, H, W, 3)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(2, 3, 4))  # (N, T)
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def measure_diagonal_tiles(
    pipe, prompts: list[str], seeds: list[int], args: argparse.Namespace
) -> list[float]:
    """Per-layer mean same-frame attention mass / (1/F) of attn1, over steps and CFG branches."""
    transformer = pipe.transformer
    saved = transformer.attn_processors
    frames = (args.frames - 1) // pipe.vae_scale_factor_temporal + 1
    probes = install_probes(transformer, frames=frames, record=True)
    try:
        generate(pipe, prompts, seeds, args, "attention probe")
    finally:
        transformer.set_attn_processor(saved)
    return [float(torch.cat(p.history).mean()) * frames for p in probes]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--attention", default="dense", help="dense | tile_sparse | sage | tile_sparse+sage, "
                   "or technique settings in config JSON form: '{\"__type__\": \"TileSparseConfig\", ...}' "
                   "or a list of them")
    p.add_argument("--quick", action="store_true", help="12 one-object + 4 two-object prompts, 12 steps")
    p.add_argument("--num", type=int, default=40, help="one-object prompts")
    p.add_argument("--two-object", type=int, default=20, help="two-object prompts")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument(
        "--max-sequence-length", type=int, default=512, help="WanPipeline default; training matches it"
    )
    p.add_argument("--attention-options", default="{}", help="JSON options of the named technique's config")
    p.add_argument("--calibrate", type=int, default=0,
                   help="tile_sparse: calibrate a per-layer k plan on this many other prompts first")
    p.add_argument("--target-recall", type=float, default=0.9, help="calibration recall target")
    p.add_argument("--plan-out", type=Path, default=ROOT / "outputs" / "video_eval" / "tile_plan.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save", type=Path, default=None, help="write the generated clips here (npz)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar over prompts")
    args = p.parse_args(argv)
    if args.quick:
        args.num, args.two_object, args.steps = 12, 4, 12
    spec, options = parse_attention(args.attention, args.attention_options)
    configs = attention_configs(spec, options)  # fail fast on an unknown technique or option
    if args.calibrate:
        check_calibratable(configs)
    pipe = load_pipeline(args.model, args.device)
    check_request(pipe, num_frames=args.frames, height=args.size, width=args.size,
                  num_inference_steps=args.steps, guidance_scale=args.guidance)
    calibration = None
    if args.calibrate:
        calibration = calibrate_plan(pipe, args.calibrate, args.target_recall, args.plan_out, args)
        configs = with_plan(configs, calibration["plan"])

    one = eval_prompts(args.num, num_objects=1, seed=args.seed)
    two = eval_prompts(args.two_object, num_objects=2, seed=args.seed + 1) if args.two_object else []
    items = one + two
    prompts = [it["prompt"] for it in items]
    seeds = [args.seed * 100_003 + i for i in range(len(items))]

    t0 = time.perf_counter()
    dense = generate(pipe, prompts, seeds, args, "dense")
    sec_dense = (time.perf_counter() - t0) / len(items)
    result: dict = {
        "model": str(args.model),
        "attention": describe_attention(spec),
        "prompts_one": len(one),
        "prompts_two": len(two),
        "steps": args.steps,
        "guidance": args.guidance,
        "frames": args.frames,
        "size": args.size,
        "device": args.device,
        "attention_options": options,
        "configs": json.loads(config_to_json(list(configs))),  # what ran, calibrated plan included
    }
    if calibration is not None:
        result["calibration"] = calibration
    videos, sec = dense, sec_dense
    if configs:
        with apply(pipe, *configs):
            t0 = time.perf_counter()
            videos = generate(pipe, prompts, seeds, args, "technique")
            sec = (time.perf_counter() - t0) / len(items)
        result["psnr_vs_dense"] = round(frame_psnr(videos, dense), 2)
        result["seconds_per_video_dense"] = round(sec_dense, 4)
        result["dense_one_object"] = {k: v for k, v in score(dense[: len(one)], one).items() if k != "rows"}
    s1 = score(videos[: len(one)], one)
    result.update({k: v for k, v in s1.items() if k != "rows"})
    if two:
        s2 = score(videos[len(one) :], two)
        result["two_object"] = {k: v for k, v in s2.items() if k != "rows"}
    result["seconds_per_video"] = round(sec, 4)
    # attention structure on a few prompts (dense model, read-only probe)
    n_attn = min(4, len(one))
    per_layer = measure_diagonal_tiles(pipe, prompts[:n_attn], seeds[:n_attn], args)
    result["diagonal_tile_ratio_per_layer"] = [round(r, 3) for r in per_layer]
    result["diagonal_tile_ratio"] = round(float(np.mean(per_layer)), 3)
    result["latent_frames"] = (args.frames - 1) // pipe.vae_scale_factor_temporal + 1
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.save, videos=videos, prompts=np.array(prompts))
    print(json.dumps(result))
    return result


def cli(argv: list[str] | None = None) -> int:
    """`main` for the command line: bad arguments print one `error:` line (no traceback), exit 2."""
    try:
        main(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
