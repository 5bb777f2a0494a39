"""Attention maps tab: where does each word of the prompt look? One heatmap per prompt token.

Runs a stock Stable Diffusion pipeline with the core's attention store on the cross-attention layers
(`attention_maps`, docs/attention_maps.md); the script shown reproduces it on the plain
`set_attn_processor` path.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import gradio as gr

from attn_processors.core import Select, StoreConfig, attention_maps
from attn_processors.core.registry import config_to_data

from ..runs import (
    MODELS,
    PROGRESS,
    ROOT,
    cancel_button,
    check_prompt,
    model_source,
    positive_int,
    readable_errors,
    resolve_seed,
    run_folder,
    run_panel,
    stepping,
)

TAB = "attention"
TITLE = "Attention maps"
DEFAULT_MODEL = ROOT / "assets" / "shapes-sd"
STORE = StoreConfig(layers=Select(kinds=("cross", "joint")))  # what attention_maps records by default
EXAMPLE_PROMPT = "a red circle and a blue square"


def load(source: str):
    """The shapes model with its vocabulary-checked tokenizer (unknown words refused), else any SD 1.x/2.x."""
    from worlds.shapes.pipeline import load_pipeline

    if Path(source).is_dir():
        return load_pipeline(source)
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(source)


def snippet(model: str, prompt: str, config_json: str, steps: int, guidance: float, seed: int) -> str:
    """A script that records the same maps on the plain Diffusers path."""
    return f'''"""The Gradio app's attention-maps run (seed {seed}); writes image.png, maps [tokens, h, w]."""
import torch
from diffusers import StableDiffusionPipeline

from attn_processors import config_from_json, processors, stock_processors

pipe = StableDiffusionPipeline.from_pretrained({model!r})
store_config = config_from_json("""
{config_json}
""")
procs = processors(pipe, store_config)
pipe.unet.set_attn_processor(procs)
image = pipe({prompt!r}, num_inference_steps={steps}, guidance_scale={guidance!r},
             generator=torch.Generator().manual_seed({seed})).images[0]
pipe.unet.set_attn_processor(stock_processors(pipe.unet))
image.save("image.png")
maps = procs.controller.stores["attention"].token_maps()  # index 1 is the first word
'''


@readable_errors(TAB)
def generate(model: str, prompt: str, seed: float | None, steps: float | None, guidance: float | None,
             progress=PROGRESS, *, flag: threading.Event):
    """The image, one heatmap per prompt word, the store's config, code and files."""
    prompt = check_prompt(prompt)
    seed = resolve_seed(seed)
    steps = positive_int("steps", steps, 20)
    guidance = float(4.0 if guidance is None else guidance)
    source = model_source(model, DEFAULT_MODEL)
    loaded = MODELS.get(source, load)
    with loaded.lock:
        pipe = loaded.pipe
        pipe.tokenizer(prompt)  # ValueError naming words outside a closed vocabulary, before any work
        start = time.perf_counter()
        with stepping(pipe, progress, flag, "attention maps"):
            maps = attention_maps(pipe, prompt, num_inference_steps=steps, seed=seed, guidance_scale=guidance)
        elapsed = time.perf_counter() - start
    config_json = json.dumps(config_to_data(STORE), indent=2)
    code = snippet(source, prompt, config_json, steps, guidance, seed)
    folder = run_folder(TAB)
    files = [str(p) for p in maps.save(folder)]
    (folder / "attention_snippet.py").write_text(code, encoding="utf-8")
    files.append(str(folder / "attention_snippet.py"))
    status = f"seed {seed} · {steps} steps · guidance {guidance} · {len(maps.tokens)} words · {elapsed:.1f} s"
    return (maps.image.resize((256, 256)), list(zip(maps.heatmaps, maps.tokens, strict=True)), seed,
            config_json, code, files, status)


def build(default_model: str | Path) -> None:
    with gr.Tab(TITLE, id=TAB):
        gr.Markdown("A prompt in, one cross-attention heatmap per word out (mean over layers and steps, "
                    "conditional branch).")
        with gr.Row():
            with gr.Column():
                model = gr.Textbox(str(default_model), label="model (folder or hub id)")
                prompt = gr.Textbox(EXAMPLE_PROMPT, label="prompt", elem_id="attention-prompt")
                with gr.Row():
                    seed = gr.Number(0, label="seed (-1: random)", precision=0)
                    steps = gr.Number(20, label="steps", precision=0)
                    guidance = gr.Number(4.0, label="guidance scale")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="attention-go")
                    stop = gr.Button("Cancel")
            with gr.Column():
                image = gr.Image(label="image", type="pil", format="png", elem_id="attention-image")
                heatmaps = gr.Gallery(label="per word", columns=4, format="png", height=220, preview=False,
                                      object_fit="contain")
                status, used_seed, config, code, files = run_panel("StoreConfig")
        go.click(generate, [model, prompt, seed, steps, guidance],
                 [image, heatmaps, used_seed, config, code, files, status], api_name="attention_maps",
                 concurrency_limit=1, concurrency_id=TAB)
        stop.click(cancel_button(TAB), None, status, api_name="attention_cancel", queue=False)
