"""Layout tab: draw boxes, give a phrase per box, and see CSG place each object in its box.

The result sits beside the unguided image from the same seed (boxes drawn on both), with each phrase's
cross-attention heatmap; the run's LayoutConfig is shown in the registry's JSON form together with a
script that reproduces the image outside the app (`LayoutToImagePipeline`, a Diffusers pipeline).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import torch
from gradio_image_annotation import image_annotator

from attn_processors.core.registry import config_to_data
from attn_processors.core.store import render_token_heatmaps
from pipelines.layout_to_image import SAMPLING_DEFAULTS, LayoutToImagePipeline, ModelSettings, draw_boxes

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

TAB = "layout"
TITLE = "Layout"
DEFAULT_MODEL = ROOT / "assets" / "shapes-sd"
METHODS = {  # the switch shown -> LayoutToImagePipeline's mode
    "unguided": "none",  # plain Stable Diffusion from the same seed
    "redistribution": "redistribution",  # cross-attention redistributed into the boxes
    "guidance": "guidance",  # latent updates on the CSG loss in the first steps
    "full": "full",  # both (CSG)
}
CANVAS = 256  # drawing canvas side in pixels; boxes are normalised by the canvas size
SHOW = 256  # shown images are enlarged (nearest) to this side so small models stay visible
EXAMPLE_PROMPT = "a red circle and a blue square"


def canvas_image(size: int = CANVAS, step: int = 32) -> np.ndarray:
    """A white canvas with a light grid to draw boxes on, (size, size, 3) uint8."""
    image = np.full((size, size, 3), 255, np.uint8)
    image[::step, :] = 225
    image[:, ::step] = 225
    return image


def parse_layout(value: dict | None, phrases_text: str | None) -> tuple[list[tuple[float, ...]], list[str]]:
    """Normalised xyxy boxes (clipped to the canvas) and one phrase per box, in drawing order.

    Phrases come from ``phrases_text`` (separated by ';' or new lines) or, when that is empty, from the
    boxes' own labels. ValueError naming the box or the count that is wrong.
    """
    if not value or value.get("image") is None or not value.get("boxes"):
        raise ValueError("no box on the canvas; drag on the canvas to draw one box per object")
    h, w = np.asarray(value["image"]).shape[:2]
    boxes = []
    for j, b in enumerate(value["boxes"], 1):
        x0, x1 = sorted((min(max(float(b["xmin"]), 0.0), w), min(max(float(b["xmax"]), 0.0), w)))
        y0, y1 = sorted((min(max(float(b["ymin"]), 0.0), h), min(max(float(b["ymax"]), 0.0), h)))
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise ValueError(f"box {j} ({b['xmin']}, {b['ymin']})-({b['xmax']}, {b['ymax']}) has zero area "
                             "inside the canvas; draw it at least 1 px wide and tall")
        boxes.append((x0 / w, y0 / h, x1 / w, y1 / h))
    given = [p.strip() for p in (phrases_text or "").replace("\n", ";").split(";") if p.strip()]
    phrases = given or [str(b.get("label") or "").strip() for b in value["boxes"]]
    if len(phrases) != len(boxes) or not all(phrases):
        raise ValueError(f"{len(given)} phrases for {len(boxes)} boxes; give one phrase per box, separated "
                         "by ';' in the order the boxes were drawn (e.g. 'red circle; blue square')")
    return boxes, phrases


def load(source: str) -> LayoutToImagePipeline:
    return LayoutToImagePipeline.from_pretrained(source)


def snippet(model: str, prompt: str, config_json: str, mode: str, steps: int, guidance: float,
            seed: int) -> str:
    """A script that reproduces the app's result image bit for bit (same seed, config and call)."""
    return f'''"""The Gradio app's layout run (seed {seed}); writes layout.png."""
import torch

from attn_processors import config_from_json
from pipelines.layout_to_image import LayoutToImagePipeline

pipe = LayoutToImagePipeline.from_pretrained({model!r})
layout = config_from_json("""
{config_json}
""")  # the app's LayoutConfig in the registry's JSON form
out = pipe({prompt!r}, layout=layout, mode={mode!r}, num_inference_steps={steps}, guidance_scale={guidance!r},
           generator=torch.Generator().manual_seed({seed}), return_attention_maps=True)
out.images[0].save("layout.png")  # out.attention_maps: one heatmap per phrase
'''


def shown(image: PIL.Image.Image, boxes: list[tuple[float, ...]], phrases: list[str]) -> PIL.Image.Image:
    return draw_boxes(image.resize((SHOW, SHOW), PIL.Image.NEAREST), boxes, phrases)


@readable_errors(TAB)
def generate(model: str, canvas: dict | None, prompt: str, phrases: str, method: str, seed: float | None,
             steps: float | None, guidance: float | None, progress=PROGRESS, *, flag: threading.Event):
    """Unguided and layout-controlled images from one seed, per-phrase heatmaps, config, code, files."""
    prompt = check_prompt(prompt)
    boxes, phrase_list = parse_layout(canvas, phrases)
    if method not in METHODS:
        raise ValueError(f"method={method!r}; use one of {list(METHODS)}")
    seed = resolve_seed(seed)
    loaded = MODELS.get(model_source(model, DEFAULT_MODEL), load)
    with loaded.lock:
        pipe = loaded.pipe
        sampling = {**SAMPLING_DEFAULTS, **pipe.settings.sampling}  # the model folder's own settings
        steps = positive_int("steps", steps, sampling["num_inference_steps"])
        guidance = float(sampling["guidance_scale"] if guidance is None else guidance)
        layout = pipe.layout_config(prompt, phrase_list, boxes)  # ValueError: unknown word, ...
        start = time.perf_counter()
        outs = {}
        for name in dict.fromkeys(("unguided", method)):
            with stepping(pipe, progress, flag, name):
                outs[name] = pipe(prompt, layout=layout, mode=METHODS[name], num_inference_steps=steps,
                                  guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
                                  return_attention_maps=True)
        elapsed = time.perf_counter() - start
    result = outs[method]
    image = result.images[0]
    config_json = json.dumps(config_to_data(layout), indent=2)
    code = snippet(model_source(model, DEFAULT_MODEL), prompt, config_json, METHODS[method], steps, guidance,
                   seed)
    heatmaps = render_token_heatmaps(image, result.attention_maps, phrase_list) \
        if result.attention_maps is not None else []
    files = save_run(run_folder(TAB), image, outs["unguided"].images[0], config_json, code, heatmaps)
    status = f"seed {seed} · {steps} steps · guidance {guidance} · {method} · {elapsed:.1f} s for both images"
    return (shown(outs["unguided"].images[0], boxes, phrase_list), shown(image, boxes, phrase_list),
            list(zip(heatmaps, phrase_list, strict=True)), seed, config_json, code, files, status)


def save_run(folder: Path, image: PIL.Image.Image, unguided: PIL.Image.Image, config_json: str, code: str,
             heatmaps: list[PIL.Image.Image]) -> list[str]:
    """The downloadable files: both images at model size, the config JSON, the script, the heatmaps."""
    image.save(folder / "layout.png")
    unguided.save(folder / "unguided.png")
    (folder / "layout_config.json").write_text(config_json + "\n", encoding="utf-8")
    (folder / "layout_snippet.py").write_text(code, encoding="utf-8")
    paths = [folder / n for n in ("layout.png", "unguided.png", "layout_config.json", "layout_snippet.py")]
    for j, tile in enumerate(heatmaps):
        paths.append(folder / f"heatmap_{j}.png")
        tile.save(paths[-1])
    return [str(p) for p in paths]


def build(default_model: str | Path) -> None:
    """The tab's components and events (call inside ``gr.Blocks``); the step count and guidance scale
    start at the default model's own settings (its attn_processors.json)."""
    folder = Path(default_model)
    sampling = {**SAMPLING_DEFAULTS, **(ModelSettings.read(folder).sampling if folder.is_dir() else {})}
    with gr.Tab(TITLE, id=TAB):
        gr.Markdown("Drag on the canvas to draw a box per object, name each box's phrase (as it appears in "
                    "the prompt), pick a method and Generate. Left: unguided, right: with layout control.")
        with gr.Row():
            with gr.Column():
                model = gr.Textbox(str(default_model), label="model (folder or hub id)",
                                   elem_id="layout-model")
                canvas = image_annotator({"image": canvas_image(), "boxes": []}, label="boxes",
                                         image_type="numpy", sources=[], box_min_size=4,
                                         show_download_button=False, show_clear_button=False,
                                         show_remove_button=False, use_default_label=True,
                                         elem_id="layout-canvas")
                prompt = gr.Textbox(EXAMPLE_PROMPT, label="prompt", elem_id="layout-prompt")
                phrases = gr.Textbox("", label="phrases, one per box in drawing order, separated by ';'",
                                     placeholder="red circle; blue square", elem_id="layout-phrases")
                method = gr.Radio(list(METHODS), value="full", label="method", elem_id="layout-method")
                with gr.Row():
                    seed = gr.Number(0, label="seed (-1: random)", precision=0, elem_id="layout-seed")
                    steps = gr.Number(sampling["num_inference_steps"], label="steps", precision=0)
                    guidance = gr.Number(sampling["guidance_scale"], label="guidance scale")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="layout-go")
                    stop = gr.Button("Cancel", elem_id="layout-cancel")
            with gr.Column():
                with gr.Row():
                    unguided = gr.Image(label="unguided", type="pil", format="png", elem_id="layout-unguided")
                    result = gr.Image(label="with layout control", type="pil", format="png",
                                      elem_id="layout-result")
                heatmaps = gr.Gallery(label="cross-attention per phrase", columns=4, format="png", height=220,
                                      preview=False, object_fit="contain", fit_columns=False)
                status, used_seed, config, code, files = run_panel("LayoutConfig", status_id="layout-status",
                                                                   files_id="layout-files")
        go.click(generate, [model, canvas, prompt, phrases, method, seed, steps, guidance],
                 [unguided, result, heatmaps, used_seed, config, code, files, status], api_name="layout",
                 concurrency_limit=1, concurrency_id=TAB)
        stop.click(cancel_button(TAB), None, status, api_name="layout_cancel", queue=False)
