"""Evaluate a shapes text-to-image model: does it draw the requested colours, shapes and counts, and
do its colour words attend to their objects?

    python benchmarks/shapes_eval.py --quick
    python benchmarks/shapes_eval.py --model assets/shapes-sd --steps 20 --cfg 4.0

Unguided generation with fixed seeds over a prompt set (default: 50 one-object + 50 two-object
prompts, plus 30 three-object prompts reported apart). The detector of ``worlds.shapes``
scores each image:

* colour accuracy: every requested colour is present;
* shape accuracy: fraction of requested objects whose colour is present with the requested shape;
* count accuracy: as many objects detected as requested.

Cross-attention localisation over the first ``--attn-images`` images: per attn2 layer, each colour
word's map (summed over steps, conditional branch) upsampled to the image, vs the detected box of
that colour: mass-in-box / box-area-share and peak-in-box rate. One progress bar counts the images.
The last line is one JSON object.
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
from tqdm.auto import tqdm  # noqa: E402

from worlds.shapes.attention_check import (  # noqa: E402
    AttentionTally,
    MapAccumulator,
    install_probes,
    restore,
)
from worlds.shapes.detector import detect  # noqa: E402
from worlds.shapes.pipeline import CFG_SCALE, DEFAULT_MODEL, NUM_STEPS, load_pipeline  # noqa: E402
from worlds.shapes.vocab import COLOURS, SHAPES, caption, object_phrase, parse_caption  # noqa: E402


def prompt_set(n_objects: int, count: int, seed: int = 0) -> list[str]:
    """``count`` distinct-colour prompts with ``n_objects`` objects; one-object prompts cycle all 18."""
    rng = np.random.default_rng([seed, n_objects])
    prompts = []
    for i in range(count):
        if n_objects == 1:
            pairs = [(COLOURS[i % len(COLOURS)], SHAPES[(i // len(COLOURS)) % len(SHAPES)])]
        else:
            cols = rng.choice(len(COLOURS), size=n_objects, replace=False)
            pairs = [(COLOURS[int(c)], SHAPES[int(rng.integers(len(SHAPES)))]) for c in cols]
        prompts.append(caption([object_phrase(c, s) for c, s in pairs]))
    return prompts


def score(image: np.ndarray, wanted: list[tuple[str, str]]) -> dict[str, float]:
    found = {d.colour: d for d in detect(image)}
    colour_ok = all(c in found for c, _ in wanted)
    shape_hits = sum(1 for c, s in wanted if c in found and found[c].shape == s)
    count_ok = len(found) == len(wanted)
    return {"colour": float(colour_ok), "shape": shape_hits / len(wanted), "count": float(count_ok)}


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, cfg: float, batch: int,
             tally: AttentionTally | None, attn_images: int) -> tuple[list[np.ndarray], float]:
    """Images for every (prompt, seed) pair, in that order, and the generation wall time."""
    jobs = [(p, s) for p in prompts for s in seeds]
    images: list[np.ndarray] = []
    seconds = 0.0
    bar = tqdm(total=len(jobs), desc="shapes_eval", unit="image")  # the pipeline's own bars are off
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        probe = tally is not None and tally.images < attn_images
        acc = MapAccumulator(cond_half=cfg > 1.0)
        previous = install_probes(pipe.unet, acc) if probe else None
        gens = [torch.Generator().manual_seed(s * 100_003 + start + i) for i, (_, s) in enumerate(chunk)]
        t0 = time.perf_counter()
        out = pipe([p for p, _ in chunk], num_inference_steps=steps, guidance_scale=cfg, generator=gens,
                   output_type="np").images
        seconds += time.perf_counter() - t0
        if previous is not None:
            restore(pipe.unet, previous)
        batch_images = [(np.clip(x, 0, 1) * 255).round().astype(np.uint8) for x in out]
        if probe:
            keep = min(len(chunk), attn_images - tally.images)
            chunk_prompts = [p for p, _ in chunk][:keep]
            tally.add({k: v[:keep] for k, v in acc.maps.items()}, batch_images[:keep], chunk_prompts)
        images.extend(batch_images)
        bar.update(len(chunk))
    bar.close()
    return images, seconds


def evaluate(pipe, prompts: list[str], seeds: list[int], steps: int, cfg: float, batch: int,
             tally: AttentionTally | None, attn_images: int, verbose: bool = True) -> dict[str, object]:
    images, seconds = generate(pipe, prompts, seeds, steps, cfg, batch, tally, attn_images)
    rows = []
    for i, prompt in enumerate(prompts):
        wanted = parse_caption(prompt)
        scores = [score(images[i * len(seeds) + k], wanted) for k in range(len(seeds))]
        row = {k: float(np.mean([s[k] for s in scores])) for k in ("colour", "shape", "count")}
        rows.append({"prompt": prompt, "objects": len(wanted), **row})
        if verbose:
            print(f"  {prompt:55s} colour {row['colour']:.2f} shape {row['shape']:.2f} "
                  f"count {row['count']:.2f}")
    per_image = round(seconds / max(len(images), 1), 4)
    summary: dict[str, object] = {"images": len(images), "seconds_per_image": per_image}
    for n in sorted({r["objects"] for r in rows}):
        sub = [r for r in rows if r["objects"] == n]
        summary[f"{n}_object"] = {k + "_accuracy": round(float(np.mean([r[k] for r in sub])), 3)
                                  for k in ("colour", "shape", "count")} | {"prompts": len(sub)}
    for k in ("colour", "shape", "count"):
        summary[k + "_accuracy"] = round(float(np.mean([r[k] for r in rows])), 3)
    return summary


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="pipeline folder (default: the shipped model)")
    p.add_argument("--prompts", default=None,
                   help="file with one caption per line, or captions separated by ';' (default: built-in)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, one image per prompt and seed")
    p.add_argument("--single", type=int, default=50, help="one-object prompts in the default set")
    p.add_argument("--double", type=int, default=50, help="two-object prompts in the default set")
    p.add_argument("--triple", type=int, default=30, help="three-object prompts, reported apart")
    p.add_argument("--steps", type=int, default=NUM_STEPS)
    p.add_argument("--cfg", type=float, default=CFG_SCALE)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--attn-images", type=int, default=50, help="images used for the attention figures")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="CI size: 12+12 prompts, 6 triples, 12 attn images")
    args = p.parse_args(argv)
    for name in ("steps", "batch", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} {getattr(args, name)}: give a positive integer")
    for name in ("single", "double", "triple", "attn_images"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: give 0 or more")
    if args.cfg < 0:
        p.error(f"--cfg {args.cfg}: give a guidance scale >= 0 (<= 1 turns classifier-free guidance off)")
    torch.set_num_threads(args.threads)
    if args.quick:
        args.single, args.double, args.triple, args.attn_images = 12, 12, 6, 12
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. --seeds 0,1,2")
    if not seeds:
        p.error("--seeds is empty: give at least one seed, e.g. --seeds 0")
    if args.prompts:
        path = Path(args.prompts)
        text = path.read_text() if path.exists() else args.prompts.replace(";", "\n")
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
        for prompt in prompts:
            parse_caption(prompt)  # ValueError naming the problem
        triples: list[str] = []
    else:
        singles, doubles = prompt_set(1, args.single), prompt_set(2, args.double)
        # interleaved, so the attention figures (first --attn-images images) cover both kinds
        prompts = [p for pair in zip(singles, doubles, strict=False) for p in pair]
        prompts += singles[len(doubles):] + doubles[len(singles):]
        triples = prompt_set(3, args.triple)

    t0 = time.perf_counter()
    pipe = load_pipeline(args.model)
    load_s = time.perf_counter() - t0
    tally = AttentionTally()
    print(f"model {args.model}: {len(prompts)} prompts x {len(seeds)} seeds, {args.steps} steps, "
          f"CFG {args.cfg}")
    main_set = evaluate(pipe, prompts, seeds, args.steps, args.cfg, args.batch, tally, args.attn_images)
    result: dict[str, object] = {
        "model": args.model, "steps": args.steps, "cfg": args.cfg, "seeds": seeds,
        "load_seconds": round(load_s, 2),
        **main_set,
    }
    if triples:
        print("three-object prompts (reported apart):")
        result["three_object"] = evaluate(pipe, triples, seeds, args.steps, args.cfg, args.batch, None, 0)
    result["attention"] = tally.report()
    att = result["attention"]
    print("cross-attention localisation of colour words (mass-in-box / area share, peak-in-box rate):")
    for name, v in att["layers"].items():  # type: ignore[union-attr]
        print(f"  {name:32s} ratio {v['mass_ratio']:.2f}  peak {v['peak_in_box']:.2f}  ({v['words']} words)")
    print(f"  layer mean {att['layer_mean']}  maps averaged over layers {att['maps_averaged_over_layers']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
