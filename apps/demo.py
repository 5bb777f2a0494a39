"""`make demo`: the shipped shapes model draws a few prompts and shows where each word attends.

    python -m apps.demo [--model assets/shapes-sd] [--out outputs/demo]

Loads the model from ``assets/shapes-sd`` (any SD 1.x folder works with ``--model``; a tiny
*untrained* model is built, and labelled as such, only when the asset is missing), then runs each
panel in ``PANELS``: a function ``(pipe, out_dir) -> list[Path]`` that writes PNGs. New panels
(e.g. unguided vs layout-controlled) append themselves to ``PANELS``. Prints the paths and the time.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from worlds.shapes.detector import detect  # noqa: E402
from worlds.shapes.pipeline import CFG_SCALE, DEFAULT_MODEL, NUM_STEPS, load_pipeline  # noqa: E402

GRID_PROMPTS = (
    "a red circle",
    "a blue square",
    "a yellow triangle",
    "a green circle and a purple square",
)
ATTENTION_PROMPTS = ("a red circle and a blue square", "a orange triangle")
SEEDS = (0, 1, 2, 3)
SCALE = 3  # 64 px images are enlarged (nearest) so a person can see them

Panel = Callable[[object, Path], list[Path]]


def build_untrained_pipeline():
    """Fallback when the asset is missing: the same architecture with random weights (draws noise)."""
    from diffusers import StableDiffusionPipeline

    from worlds.shapes.models import build_text_encoder, build_unet, build_vae, sample_scheduler
    from worlds.shapes.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=build_vae(), text_encoder=build_text_encoder(tok), tokenizer=tok, unet=build_unet(),
        scheduler=sample_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_model(path: Path) -> tuple[object, str]:
    if (path / "model_index.json").exists():
        return load_pipeline(path), f"model: {path}"
    print(f"WARNING: {path} not found; using a tiny UNTRAINED model (outputs are noise, not shapes).")
    return build_untrained_pipeline(), "model: UNTRAINED tiny stand-in (asset missing)"


def draw_boxes(image: Image.Image) -> Image.Image:
    """Enlarge and outline what the detector finds, labelled 'colour shape'."""
    arr = np.asarray(image.convert("RGB"))
    big = image.resize((image.width * SCALE, image.height * SCALE), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    for d in detect(arr):
        x0, y0, x1, y1 = (v * big.width for v in d.box)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(0, 0, 0))
        draw.text((x0 + 1, y0 + 1), f"{d.colour} {d.shape}", fill=(0, 0, 0))
    return big


def panel_grid(pipe, out_dir: Path) -> list[Path]:
    """Rows = prompts, columns = seeds; detections outlined. One batched call per prompt."""
    rows = []
    for prompt in GRID_PROMPTS:
        gens = [torch.Generator().manual_seed(s) for s in SEEDS]
        images = pipe([prompt] * len(SEEDS), num_inference_steps=NUM_STEPS, guidance_scale=CFG_SCALE,
                      generator=gens).images
        rows.append((prompt, [draw_boxes(im) for im in images]))
    tile = rows[0][1][0].width
    label_h = 14
    grid = Image.new("RGB", (tile * len(SEEDS), (tile + label_h) * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (prompt, images) in enumerate(rows):
        y = r * (tile + label_h)
        draw.text((2, y + 1), prompt, fill=(0, 0, 0))
        for c, im in enumerate(images):
            grid.paste(im, (c * tile, y + label_h))
    path = out_dir / "grid.png"
    grid.save(path)
    return [path]


def panel_attention(pipe, out_dir: Path) -> list[Path]:
    """Per-word cross-attention heatmaps (the core's AttentionStore) for a few prompts."""
    from attn_processors.core.store import attention_maps

    paths = []
    for i, prompt in enumerate(ATTENTION_PROMPTS):
        maps = attention_maps(pipe, prompt, num_inference_steps=NUM_STEPS, seed=i, guidance_scale=CFG_SCALE)
        stem = "attn_" + prompt.replace(" ", "_")
        saved = maps.save(out_dir / "attention", stem=stem)
        paths.append(saved[1])  # the grid: image + one heatmap per word
    return paths


LAYOUT_CASES = Path(__file__).resolve().parents[1] / "benchmarks" / "cases" / "layout_default.json"


def panel_layout(pipe, out_dir: Path) -> list[Path]:
    """Unguided vs CSG layout control from the same seed, boxes drawn (the first cases of the eval set)."""
    import json

    from pipelines.layout_to_image import LayoutToImagePipeline, layout_panel

    spec = json.loads(LAYOUT_CASES.read_text())
    layout_pipe = LayoutToImagePipeline.from_pipe(pipe)
    layout_pipe.set_progress_bar_config(disable=True)
    paths = []
    for i, case in enumerate(spec["cases"][:2]):
        panel = layout_panel(layout_pipe, case["prompt"], case["phrases"], case["boxes"], seed=i,
                             num_inference_steps=NUM_STEPS, guidance_scale=CFG_SCALE,
                             layout_params=spec.get("layout_params"))
        path = out_dir / f"layout_{i}.png"
        panel.save(path)
        paths.append(path)
    return paths


PANELS: list[tuple[str, Panel]] = [
    ("grid", panel_grid),
    ("attention", panel_attention),
    ("layout", panel_layout),
]


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--out", type=Path, default=Path("outputs/demo"))
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    diffusers_logging.disable_progress_bar()  # loading bars would bury the printed paths
    transformers_logging.disable_progress_bar()
    t0 = time.perf_counter()
    pipe, label = load_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    print(label)
    written: list[Path] = []
    for name, panel in PANELS:
        t = time.perf_counter()
        paths = panel(pipe, args.out)
        written += paths
        print(f"[{name}] {time.perf_counter() - t:.1f} s")
        for path in paths:
            print(f"  {path}")
    print(f"demo done in {time.perf_counter() - t0:.1f} s ({len(written)} files under {args.out})")
    return written


if __name__ == "__main__":
    main()
