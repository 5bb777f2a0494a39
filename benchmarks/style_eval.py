"""Style injection on the shapes world: does the output take the style image's look and keep the content?

    python benchmarks/style_eval.py --quick
    python benchmarks/style_eval.py --model assets/shapes-style-sd --seeds 2

Each pair of ``--pairs`` (default ``benchmarks/cases/style_pairs.json``, written before any tuning)
names a content scene (``content_prompt``, objects placed by ``content_seed``), rendered flat, and a
style scene (``style_prompt``, ``style_seed``) rendered in ``style`` (outline / hatched / dotted); the
two never share a colour. Every mode stylises every pair with ``--seeds`` seeds through
``StyleTransferPipeline``:

- ``none``: no injection (the content's inversion replayed with its stored noises: the
  reconstruction floor, ``StyleTransferPipeline.reconstruct``);
- ``illusign``, ``style_aligned``, ``style_id``, ``kv_swap``: ``StyleConfig(mode=...)`` at its defaults;
- ``text``: no injection, the prompt "<content caption>, <style> style" (the text route, a reference;
  skipped with a note when the model's closed vocabulary lacks the style words).

Metrics per image (means per mode):

- ``style_accuracy``: of the objects the style-aware detector (``worlds.shapes.style_classifier``,
  built on ``worlds.shapes.detector``) finds in the output, the share classified as the target style
  (0 when it finds none);
- ``content_kept``: of the content scene's objects, the share found with the right colour and shape
  at box IoU >= 0.5;
- ``gram_distance`` to the style image and ``gram_reduction`` = 1 - d(output, style) / d(content,
  style), on a fixed filter bank (colour + Gabor; no downloadable VGG: ``style_metrics``);
- ``edge_f1`` against the content image (Canny 5x5 blur, 30/120, 3 px tolerance);
- ``seconds_per_image``: wall time of one stylisation (inversions included).

Each injection mode is reported twice: as drawn, and as ``<mode>+colours``, the same images with the
content's colours put back (``pipelines.colour_keep``, ``StyleTransferPipeline(..., keep_colours=True)``):
attention transfer reads its values from the style image, so it takes the style's palette along with
its strokes, while ``content_kept`` asks for the content's colours. The step recolours each stroke
region as drawn and never takes geometry from the content.

``--grid FILE`` writes one picture: a row per pair, columns content, style and each mode (first seed).
The last line is one JSON object: ``{"methods": {mode: {...}}, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.style_metrics import edge_f1, gram_distance, gram_reduction  # noqa: E402
from pipelines.colour_keep import keep_content_colours  # noqa: E402
from worlds.shapes.data import sample_background, sample_objects  # noqa: E402
from worlds.shapes.detector import box_iou  # noqa: E402
from worlds.shapes.render import SceneObject  # noqa: E402
from worlds.shapes.style_classifier import detect_styled  # noqa: E402
from worlds.shapes.styles import STYLE_WORDS, STYLES, render_styled  # noqa: E402
from worlds.shapes.vocab import COLOUR_RGB, parse_caption  # noqa: E402

MODES = ("none", "illusign", "style_aligned", "style_id", "kv_swap", "text")
INJECTION_MODES = ("illusign", "style_aligned", "style_id", "kv_swap")
KEPT_SUFFIX = "+colours"  # an injection mode's outputs with the content's colours put back
DEFAULT_MODEL = ROOT / "assets" / "shapes-style-sd"
DEFAULT_PAIRS = ROOT / "benchmarks" / "cases" / "style_pairs.json"
PAIR_KEYS = ("content_prompt", "content_seed", "style", "style_prompt", "style_seed")
QUICK_PAIRS = 3
KEPT_IOU = 0.5


# ------------------------------------------------------------------------------------------ pairs
def load_pairs(path: str | Path) -> list[dict]:
    """The pair list of a JSON file (a list, or {"pairs": [...]}), each pair checked."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"pair file {str(path)!r} does not exist; give a JSON list of {list(PAIR_KEYS)} objects"
        )
    data = json.loads(path.read_text())
    pairs = data["pairs"] if isinstance(data, dict) and "pairs" in data else data
    if not isinstance(pairs, list) or not pairs:
        raise ValueError(f"{str(path)!r} holds no pairs; give a non-empty JSON list of {list(PAIR_KEYS)}")
    for i, pair in enumerate(pairs):
        missing = [k for k in PAIR_KEYS if k not in pair]
        if missing:
            raise ValueError(f"pair {i} of {str(path)!r} lacks {missing}; every pair needs {list(PAIR_KEYS)}")
        if pair["style"] not in STYLES or pair["style"] == "flat":
            allowed = [s for s in STYLES if s != "flat"]
            raise ValueError(f"pair {i}: style {pair['style']!r}; use one of {allowed}")
        parse_caption(pair["content_prompt"])  # ValueError naming the caption
        parse_caption(pair["style_prompt"])
    return pairs


def render_scene(prompt: str, seed: int, style: str, size: int) -> tuple[np.ndarray, list[SceneObject]]:
    """The caption's objects placed by ``seed`` (the training data's box sampler) drawn in ``style``.

    Flat scenes get the training data's grey background; colours are the reference ones.
    """
    wanted = parse_caption(prompt)
    rng = np.random.default_rng([seed, len(wanted)])
    boxes = [o.box for o in sample_objects(rng, len(wanted), size)]
    objects = [SceneObject(c, s, b, COLOUR_RGB[c]) for (c, s), b in zip(wanted, boxes, strict=True)]
    background = sample_background(rng) if style == "flat" else None
    return render_styled(objects, style, size, background=background), objects


# ---------------------------------------------------------------------------------------- scoring
def score(output: np.ndarray, content: np.ndarray, style_image: np.ndarray,
          objects: list[SceneObject], style: str) -> dict[str, float]:
    """The per-image metrics of the module docstring."""
    found = detect_styled(output)
    by_colour = {d.colour: d for d in found}
    kept = [
        o.colour in by_colour and by_colour[o.colour].shape == o.shape
        and box_iou(by_colour[o.colour].box, o.box) >= KEPT_IOU
        for o in objects
    ]
    return {
        "style_accuracy": float(np.mean([d.style == style for d in found])) if found else 0.0,
        "content_kept": float(np.mean(kept)),
        "gram_distance": gram_distance(output, style_image),
        "gram_reduction": gram_reduction(output, content, style_image),
        "edge_f1": edge_f1(output, content),
    }


def knows_style_words(tokenizer) -> bool:
    """False for a closed-vocabulary shapes tokenizer without the style words (the text route's)."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    closed = 0 < len(vocab) < 1000
    return not closed or all(w + "</w>" in vocab for w in STYLE_WORDS)


# ------------------------------------------------------------------------------------------- runs
def parse_overrides(items: list[str]) -> dict[str, dict[str, object]]:
    """``--set MODE.FIELD=VALUE`` items as {mode: {field: value}}; VALUE is JSON (lists become tuples).

    Each field is checked against ``StyleConfig`` so a typo fails before any image is made.
    """
    import dataclasses

    from attn_processors.style import StyleConfig

    fields = {f.name for f in dataclasses.fields(StyleConfig)} - {"mode"}
    out: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        mode, dot, name = key.partition(".")
        if not sep or not dot or mode not in INJECTION_MODES or name not in fields:
            raise ValueError(f"--set {item!r}: give MODE.FIELD=VALUE with MODE in {INJECTION_MODES} "
                             f"and FIELD a StyleConfig field ({sorted(fields)}), e.g. illusign.contrast=1.3")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text  # a bare word: a string field such as edge_stream=out
        out.setdefault(mode, {})[name] = tuple(value) if isinstance(value, list) else value
    for mode, changes in out.items():
        StyleConfig(mode=mode, **changes)  # ValueError naming the field and the value
    return out


def stylise(pipe, mode: str, content: np.ndarray, style_image: np.ndarray, pair: dict, seed: int,
            steps: int, prompt: str, overrides: dict[str, object] | None = None) -> np.ndarray:
    """One output of ``mode`` (its ``StyleConfig`` defaults, changed by ``overrides``) as (H, W, 3) uint8."""
    from attn_processors.style import StyleConfig

    if mode == "text":
        image = pipe.text_route(pair["content_prompt"], pair["style"], seed=seed, num_inference_steps=steps)
    elif mode == "none":  # the content's inversion replayed without injection: the reconstruction floor
        latent = pipe.encode([Image.fromarray(content)])
        inv = pipe.invert(latent, prompt, seed=seed, num_inference_steps=steps)
        image = pipe.decode(pipe.reconstruct(inv, prompt))
    else:
        config = StyleConfig(mode=mode, **(overrides or {}))
        image = pipe(Image.fromarray(content), Image.fromarray(style_image), config=config, prompt=prompt,
                     seed=seed, num_inference_steps=steps).image
    return np.asarray(image.convert("RGB"))


def run_mode(pipe, mode: str, pairs: list[dict], seeds: list[int], steps: int, use_caption: bool,
             save_dir: Path | None = None, firsts: list[np.ndarray] | None = None,
             overrides: dict[str, object] | None = None,
             kept_firsts: list[np.ndarray] | None = None) -> tuple[dict[str, float], dict[str, float] | None]:
    """Mean metrics of ``mode`` over pairs x seeds, and for an injection mode those of the same outputs
    with the content's colours kept (``pipelines.colour_keep``; else None). The outputs go as PNGs
    under ``save_dir``; each pair's first-seed output is appended to ``firsts`` (``kept_firsts``)."""
    size = pipe.image_size
    rows, seconds = [], 0.0
    kept_rows: list[dict[str, float]] | None = [] if mode in INJECTION_MODES else None
    for i, pair in enumerate(pairs):
        content, objects = render_scene(pair["content_prompt"], pair["content_seed"], "flat", size)
        style_image, _ = render_scene(pair["style_prompt"], pair["style_seed"], pair["style"], size)
        prompt = pair["content_prompt"] if use_caption else ""
        for seed in seeds:
            t0 = time.perf_counter()
            out = stylise(pipe, mode, content, style_image, pair, seed, steps, prompt, overrides)
            seconds += time.perf_counter() - t0
            rows.append(score(out, content, style_image, objects, pair["style"]))
            if kept_rows is not None:  # the same output with the content's colours put back
                kept = np.asarray(keep_content_colours(Image.fromarray(out), Image.fromarray(content)))
                kept_rows.append(score(kept, content, style_image, objects, pair["style"]))
                if kept_firsts is not None and seed == seeds[0]:
                    kept_firsts.append(kept)
            if firsts is not None and seed == seeds[0]:
                firsts.append(out)
            if save_dir is not None:
                grid = np.concatenate([content, style_image, out], axis=1)
                Image.fromarray(grid).save(save_dir / f"{mode}_pair{i}_seed{seed}.png")
    timing = {"images": len(rows), "seconds_per_image": round(seconds / len(rows), 3)}
    summary = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]} | timing
    if not kept_rows:
        return summary, None
    return summary, {k: round(float(np.mean([r[k] for r in kept_rows])), 4) for k in kept_rows[0]} | timing


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"--modes {text!r}: give comma-separated modes of {MODES}")
    return modes


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="SD 1.x folder (default: the style model)")
    p.add_argument("--pairs", default=str(DEFAULT_PAIRS), help="JSON list of content/style pairs")
    p.add_argument("--seeds", type=int, default=2, help="seeds per pair (0 .. N-1)")
    p.add_argument("--steps", type=int, default=None, help="inversion and denoising steps (50; --quick 10)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    p.add_argument("--caption-prompt", action="store_true",
                   help="invert and denoise with the content caption (default: the empty prompt)")
    p.add_argument("--save", default=None, help="folder for content | style | output PNGs per image")
    p.add_argument("--grid", default=None,
                   help="write a PNG grid here: a row per pair, columns content, style, each mode (seed 0)")
    p.add_argument("--set", action="append", default=[], metavar="MODE.FIELD=VALUE",
                   help="change one StyleConfig default of a mode (JSON value), e.g. illusign.contrast=1.3; "
                        "repeatable (for tuning on a pair file that is then not reported)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true",
                   help=f"CI size: the first {QUICK_PAIRS} pairs, 1 seed, 10 steps")
    args = p.parse_args(argv)
    for name in ("seeds", "steps", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} {getattr(args, name)}: give a positive integer")
    try:
        modes = parse_modes(args.modes)
        pairs = load_pairs(args.pairs)
        overrides = parse_overrides(args.set)
    except ValueError as err:
        p.error(str(err))
    model = Path(args.model)
    if not model.exists() and args.model == str(DEFAULT_MODEL):
        p.error(f"the style model {DEFAULT_MODEL.relative_to(ROOT)} is not there yet: train and export it "
                "(see worlds/shapes), or run the plumbing on the flat model with --model assets/shapes-sd")
    if not (model / "model_index.json").is_file():
        p.error(f"--model {args.model}: no Diffusers pipeline folder there (model_index.json missing)")
    seeds = list(range(1 if args.quick else args.seeds))
    steps = args.steps or (10 if args.quick else 50)
    if args.quick:
        pairs = pairs[:QUICK_PAIRS]

    import torch

    from pipelines.style_transfer import StyleTransferPipeline

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe = StyleTransferPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0
    save_dir = Path(args.save) if args.save else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    print(f"model {args.model}: {len(pairs)} pairs x {len(seeds)} seeds, {steps} steps, modes {modes}")
    methods: dict[str, object] = {}
    outputs: dict[str, list[np.ndarray]] = {}
    for mode in modes:
        if mode == "text" and not knows_style_words(pipe.tokenizer):
            methods[mode] = {"skipped": "the model's vocabulary lacks the style words (a flat-only model)"}
            print(f"  {mode:14s} skipped: {methods[mode]['skipped']}")
            continue
        outputs[mode], kept_outputs = [], []
        row, kept = run_mode(pipe, mode, pairs, seeds, steps, args.caption_prompt, save_dir, outputs[mode],
                             overrides.get(mode), kept_outputs)
        methods[mode] = row
        if kept is not None:
            methods[mode + KEPT_SUFFIX] = kept
            outputs[mode + KEPT_SUFFIX] = kept_outputs
        for name in (mode, mode + KEPT_SUFFIX) if kept is not None else (mode,):
            r = methods[name]
            print(f"  {name:18s} style {r['style_accuracy']:.3f}  content {r['content_kept']:.3f}  "
                  f"gram {r['gram_distance']:.3f} (reduction {r['gram_reduction']:+.3f})  "
                  f"edge F1 {r['edge_f1']:.3f}  {r['seconds_per_image']:.2f} s/image")
    result = {"methods": methods, "model": args.model, "pairs": args.pairs, "num_pairs": len(pairs),
              "seeds": seeds, "steps": steps, "load_seconds": round(load_s, 2),
              "prompt": "content caption" if args.caption_prompt else "empty",
              "overrides": {m: {k: list(v) if isinstance(v, tuple) else v for k, v in o.items()}
                            for m, o in overrides.items()}}
    if args.grid:
        write_grid(args.grid, pairs, outputs, pipe.image_size)
        print(f"grid -> {args.grid}")
    print(json.dumps(result))
    return result


def write_grid(path: str | Path, pairs: list[dict], outputs: dict[str, list[np.ndarray]], size: int) -> None:
    """Rows = pairs; columns = content, style, then each mode's first-seed output (x2, nearest)."""
    rows = []
    for i, pair in enumerate(pairs):
        content, _ = render_scene(pair["content_prompt"], pair["content_seed"], "flat", size)
        style_image, _ = render_scene(pair["style_prompt"], pair["style_seed"], pair["style"], size)
        rows.append(np.concatenate([content, style_image, *(outs[i] for outs in outputs.values())], axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid.resize((grid.width * 2, grid.height * 2), Image.Resampling.NEAREST).save(path, optimize=True)


if __name__ == "__main__":
    main()
