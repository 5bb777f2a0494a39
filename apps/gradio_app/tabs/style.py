"""Style tab (IlluSign and its peers): a content image and a style image -> the content drawn in the style.

Runs `pipelines/style_transfer.py` stage 1 with the chosen mode (IlluSign, StyleID, K/V swap,
StyleAligned); the content's edges (IlluSign's geometry stream) are shown beside the result.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, get_args

import gradio as gr
import numpy as np
import PIL.Image

from attn_processors.core.registry import config_to_data
from attn_processors.style import StyleConfig
from attn_processors.style.config import StyleMode
from pipelines.style_transfer import StyleTransferPipeline

from ..runs import (
    MODELS,
    PROGRESS,
    ROOT,
    cancel_button,
    model_source,
    positive_int,
    readable_errors,
    resolve_seed,
    run_folder,
    run_panel,
    stepping,
)

TAB = "style"
TITLE = "Style / IlluSign"
DEFAULT_MODEL = ROOT / "assets" / "shapes-style-sd"  # knows the drawing styles (docs/models.md)
MODES: tuple[str, ...] = get_args(StyleMode)
SHOW = 256


def example_images() -> tuple[np.ndarray, np.ndarray]:
    """A flat red circle (content) and an outlined blue square (style) from the shapes world."""
    from worlds.shapes.render import SceneObject
    from worlds.shapes.styles import render_styled

    content = render_styled([SceneObject("red", "circle", (0.2, 0.2, 0.7, 0.7))], "flat")
    style = render_styled([SceneObject("blue", "square", (0.3, 0.3, 0.8, 0.8))], "outline")
    return np.asarray(content), np.asarray(style)


def load(source: str) -> StyleTransferPipeline:
    return StyleTransferPipeline.from_pretrained(source)


def snippet(model: str, config_json: str, prompt: str, steps: int, guidance: float, seed: int) -> str:
    return f'''"""The Gradio app's style run (seed {seed}): content.png + style.png -> illustration.png."""
import PIL.Image

import attn_processors.style  # noqa: F401  (makes StyleConfig known to config_from_json)
from attn_processors import config_from_json
from pipelines.style_transfer import StyleTransferPipeline

pipe = StyleTransferPipeline.from_pretrained({model!r})
config = config_from_json("""
{config_json}
""")
result = pipe(PIL.Image.open("content.png"), PIL.Image.open("style.png"), config=config, prompt={prompt!r},
              seed={seed}, num_inference_steps={steps}, guidance_scale={guidance!r})
result.image.save("illustration.png")
'''


@readable_errors(TAB)
def generate(model: str, content: Any, style: Any, mode: str, prompt: str, steps: float | None,
             guidance: float, seed: float | None, progress=PROGRESS, *, flag: threading.Event):
    """The illustration, the content's edges, the config, code and files."""
    if content is None or style is None:
        raise ValueError(f"the {'content' if content is None else 'style'} image is missing; upload one")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; use one of {list(MODES)}")
    seed = resolve_seed(seed)
    steps = positive_int("steps", steps, 20)
    prompt = (prompt or "").strip()
    config = StyleConfig(mode=mode)
    source = model_source(model, DEFAULT_MODEL)
    loaded = MODELS.get(source, load)
    with loaded.lock:
        start = time.perf_counter()
        with stepping(loaded.pipe, progress, flag, mode):
            result = loaded.pipe(content, style, config=config, prompt=prompt, seed=seed,
                                 num_inference_steps=steps, guidance_scale=float(guidance))
        elapsed = time.perf_counter() - start
    config_json = json.dumps(config_to_data(config), indent=2)
    code = snippet(source, config_json, prompt, steps, float(guidance), seed)
    folder = run_folder(TAB)
    content.save(folder / "content.png")
    style.save(folder / "style.png")
    result.image.save(folder / "illustration.png")
    (folder / "style_snippet.py").write_text(code, encoding="utf-8")
    files = [str(folder / n) for n in ("illustration.png", "content.png", "style.png", "style_snippet.py")]
    big = lambda im: im.convert("RGB").resize((SHOW, SHOW), PIL.Image.NEAREST)
    edges = big(result.edges) if result.edges is not None else None
    status = f"seed {seed} · {mode} · {steps} steps · {elapsed:.1f} s"
    return big(result.image), edges, seed, config_json, code, files, status


def build(default_model: str | Path) -> None:
    content_example, style_example = example_images()
    with gr.Tab(TITLE, id=TAB):
        gr.Markdown("A content image and a style image in; the content drawn in the style out. IlluSign "
                    "fuses the content's edges into the query; its peers are selectable as modes.")
        with gr.Row():
            with gr.Column():
                model = gr.Textbox(str(default_model), label="model (folder or hub id)")
                with gr.Row():
                    content = gr.Image(content_example, label="content", type="pil", image_mode="RGB",
                                       height=200)
                    style = gr.Image(style_example, label="style", type="pil", image_mode="RGB", height=200)
                mode = gr.Radio(list(MODES), value="illusign", label="mode")
                prompt = gr.Textbox("", label="prompt (optional, the model's words)")
                with gr.Row():
                    steps = gr.Number(20, label="steps", precision=0)
                    guidance = gr.Number(1.0, label="guidance scale")
                    seed = gr.Number(0, label="seed (-1: random)", precision=0)
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="style-go")
                    stop = gr.Button("Cancel")
            with gr.Column():
                with gr.Row():
                    result = gr.Image(label="illustration", type="pil", format="png", elem_id="style-result")
                    edges = gr.Image(label="content edges", type="pil", format="png")
                status, used_seed, config, code, files = run_panel("StyleConfig")
        go.click(generate, [model, content, style, mode, prompt, steps, guidance, seed],
                 [result, edges, used_seed, config, code, files, status], api_name="style",
                 concurrency_limit=1, concurrency_id=TAB)
        stop.click(cancel_button(TAB), None, status, api_name="style_cancel", queue=False)
