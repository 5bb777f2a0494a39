"""Novel view tab (Zero-to-Hero): one input view + a relative pose -> the plain Zero-1-to-3 view beside
the Zero-to-Hero one (attention map filtering, mutual self-attention, Hourglass resampling)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
import PIL.Image
import torch

from attn_processors.core.registry import config_to_data
from attn_processors.zero_to_hero import ZeroToHeroConfig
from pipelines.zero123 import Zero123Pipeline

from ..runs import (
    MODELS,
    PROGRESS,
    ROOT,
    cancel_button,
    default_model_note,
    positive_int,
    readable_errors,
    resolve_seed,
    run_folder,
    run_panel,
    shipped_or_given,
    stepping,
)

TAB = "novel_view"
TITLE = "Novel view"
DEFAULT_MODEL = ROOT / "assets" / "shapes3d-zero123"
# what to give while the shipped model is missing
NEEDS = "a Zero-1-to-3 folder in Diffusers layout (e.g. a local copy of kxic/zero123-165000)"
SHOW = 256


def load(source: str) -> Zero123Pipeline:
    return Zero123Pipeline.from_pretrained(source)


def snippet(model: str, pose: tuple[float, float, float], config_json: str, steps: int, guidance: float,
            seed: int) -> str:
    return f'''"""The Gradio app's novel-view run (seed {seed}): input.png -> plain.png, filtered.png."""
import PIL.Image
import torch

from attn_processors import config_from_json, processors, stock_processors
from pipelines.zero123 import Zero123Pipeline

pipe = Zero123Pipeline.from_pretrained({model!r})
image = PIL.Image.open("input.png")
plain = pipe(image, poses=[{pose!r}], num_inference_steps={steps}, guidance_scale={guidance!r},
             generator=torch.Generator().manual_seed({seed})).images[0]
pipe.unet.set_attn_processor(processors(pipe.unet, config_from_json("""
{config_json}
""")))
filtered = pipe(image, poses=[{pose!r}], guidance_scale={guidance!r},
                generator=torch.Generator().manual_seed({seed})).images[0]
pipe.unet.set_attn_processor(stock_processors(pipe.unet))
plain.save("plain.png")
filtered.save("filtered.png")
'''


@readable_errors(TAB)
def generate(model: str, image: Any, polar: float, azimuth: float, radius: float, steps: float | None,
             guidance: float, seed: float | None, progress=PROGRESS, *, flag: threading.Event):
    """Plain and Zero-to-Hero views of ``image`` at the relative pose, config, code and files."""
    if image is None:
        raise ValueError("no input image; upload a square view of the object")
    seed = resolve_seed(seed)
    steps = positive_int("steps", steps, 50)
    pose = (float(polar), float(azimuth), float(radius))
    source = shipped_or_given(model, DEFAULT_MODEL, NEEDS)
    loaded = MODELS.get(source, load)
    config = ZeroToHeroConfig()
    with loaded.lock:
        pipe = loaded.pipe
        start = time.perf_counter()
        with stepping(pipe, progress, flag, "plain"):
            plain = pipe(image, poses=[pose], num_inference_steps=steps, guidance_scale=float(guidance),
                         generator=torch.Generator().manual_seed(seed))
        with stepping(pipe, progress, flag, "Zero-to-Hero"):
            filtered = pipe(image, poses=[pose], z2h=config, guidance_scale=float(guidance),
                            generator=torch.Generator().manual_seed(seed))
        elapsed = time.perf_counter() - start
    config_json = json.dumps(config_to_data(config), indent=2)
    code = snippet(source, pose, config_json, steps, float(guidance), seed)
    folder = run_folder(TAB)
    image.save(folder / "input.png")
    plain.images[0].save(folder / "plain.png")
    filtered.images[0].save(folder / "filtered.png")
    (folder / "novel_view_snippet.py").write_text(code, encoding="utf-8")
    files = [str(folder / n) for n in ("input.png", "plain.png", "filtered.png", "novel_view_snippet.py")]
    notes = " · ".join(plain.notes)
    status = f"seed {seed} · plain {steps} steps, Zero-to-Hero {filtered.nfe} evaluations · {elapsed:.1f} s" \
        + (f" · {notes}" if notes else "")
    big = lambda im: im.resize((SHOW, SHOW), PIL.Image.NEAREST)
    return big(plain.images[0]), big(filtered.images[0]), seed, config_json, code, files, status


def build(default_model: str | Path) -> None:
    with gr.Tab(TITLE, id=TAB):
        gr.Markdown("One view of an object and a relative camera move in; Zero-1-to-3's view (plain) beside "
                    "Zero-to-Hero's (filtered attention maps) out. "
                    + default_model_note(Path(default_model), NEEDS))
        with gr.Row():
            with gr.Column():
                model = gr.Textbox(str(default_model), label="Zero-1-to-3 model folder (or hub id)")
                image = gr.Image(label="input view (square)", type="pil", image_mode="RGB", height=256,
                                 elem_id="novel-input")
                polar = gr.Slider(-90, 90, 0, step=5, label="d polar (degrees, + looks from lower)")
                azimuth = gr.Slider(-180, 180, 90, step=5, label="d azimuth (degrees)")
                radius = gr.Slider(-0.5, 0.5, 0, step=0.05, label="d radius")
                with gr.Row():
                    steps = gr.Number(50, label="plain steps", precision=0)
                    guidance = gr.Number(3.0, label="guidance scale")
                    seed = gr.Number(0, label="seed (-1: random)", precision=0)
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="novel-go")
                    stop = gr.Button("Cancel")
            with gr.Column():
                with gr.Row():
                    plain = gr.Image(label="plain Zero-1-to-3", type="pil", format="png")
                    filtered = gr.Image(label="Zero-to-Hero", type="pil", format="png",
                                        elem_id="novel-filtered")
                status, used_seed, config, code, files = run_panel("ZeroToHeroConfig")
        go.click(generate, [model, image, polar, azimuth, radius, steps, guidance, seed],
                 [plain, filtered, used_seed, config, code, files, status], api_name="novel_view",
                 concurrency_limit=1, concurrency_id=TAB)
        stop.click(cancel_button(TAB), None, status, api_name="novel_view_cancel", queue=False)
