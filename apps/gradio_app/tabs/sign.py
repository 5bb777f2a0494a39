"""Sign illustration tab (IlluSign): a short clip of a sign and a style image -> one stylised picture of
the sign with motion arrows, and an overlay MP4 (each frame with its path so far | the illustration).

Runs `pipelines/sign_illustration.py` on the Style tab's model (the same loaded StyleTransferPipeline);
on the moving-shapes world the moving shape stands in for the hand.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import PIL.Image

from attn_processors.core.registry import config_to_data
from attn_processors.style import StyleConfig
from pipelines.sign_illustration import COMBINATIONS, SignIllustrationPipeline, read_frames, write_overlay

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
from . import style

TAB = "sign"
TITLE = "Sign illustration"
DEFAULT_MODEL = ROOT / "assets" / "shapes-style-sd"  # knows the drawing styles (docs/models.md)


def example_clip(folder: Path) -> tuple[Path, np.ndarray]:
    """A moving-shapes clip (two shapes moving right) as MP4, and an outlined style image."""
    from pipelines.video import write_mp4
    from worlds.moving_shapes.data import sample_video
    from worlds.shapes.render import SceneObject
    from worlds.shapes.styles import render_styled

    clip = sample_video(np.random.default_rng(4), num_objects=2, direction="right")
    path = write_mp4(clip.frames, folder / "sign_example.mp4", fps=4)
    style_image = render_styled([SceneObject("green", "square", (0.3, 0.3, 0.7, 0.7))], "outline")
    return path, np.asarray(style_image)


def snippet(model: str, config_json: str, combination: str, steps: int, seed: int) -> str:
    return f'''"""The Gradio app's sign illustration (seed {seed}): clip.mp4 + style.png -> sign.png."""
import attn_processors.style  # noqa: F401  (makes StyleConfig known to config_from_json)
from attn_processors import config_from_json
from pipelines.sign_illustration import SignIllustrationPipeline

pipe = SignIllustrationPipeline.from_pretrained({model!r})
config = config_from_json("""
{config_json}
""")
result = pipe("clip.mp4", "style.png", config=config, combination={combination!r}, seed={seed},
              num_inference_steps={steps})
result.image.save("sign.png")
'''


@readable_errors(TAB)
def generate(model: str, clip: Any, style_image: Any, combination: str, mode: str, steps: float | None,
             seed: float | None, progress=PROGRESS, *, flag: threading.Event):
    """The illustration with arrows, the two stylised frames, the overlay MP4, config, code, files."""
    if not clip:
        raise ValueError("no clip; upload a short MP4 of the sign")
    if style_image is None:
        raise ValueError("the style image is missing; upload one")
    if combination not in COMBINATIONS:
        raise ValueError(f"combination={combination!r}; use one of {list(COMBINATIONS)}")
    if mode not in style.MODES:
        raise ValueError(f"mode={mode!r}; use one of {list(style.MODES)}")
    seed = resolve_seed(seed)
    steps = positive_int("steps", steps, 20)
    frames = read_frames(clip)  # ValueError naming the file when it holds no frames
    config = StyleConfig(mode=mode)
    source = model_source(model, DEFAULT_MODEL)
    loaded = MODELS.get(source, style.load)  # the Style tab's pipeline, shared with its lock
    with loaded.lock:
        start = time.perf_counter()
        with stepping(loaded.pipe, progress, flag, "sign illustration"):
            illustrate = SignIllustrationPipeline(loaded.pipe)
            result = illustrate(frames, style_image, combination=combination, config=config, seed=seed,
                                num_inference_steps=steps)
        elapsed = time.perf_counter() - start
    folder = run_folder(TAB)
    config_json = json.dumps(config_to_data(config), indent=2)
    code = snippet(source, config_json, combination, steps, seed)
    result.image.save(folder / "sign.png")
    style_image.save(folder / "style.png")
    overlay = write_overlay(folder / "overlay.mp4", frames, result)
    (folder / "sign_snippet.py").write_text(code, encoding="utf-8")
    files = [str(folder / n) for n in ("sign.png", "overlay.mp4", "style.png", "sign_snippet.py")]
    big = lambda im: im.convert("RGB").resize((256, 256), PIL.Image.NEAREST)
    status = (f"seed {seed} · frames {result.start}..{result.end} · {len(result.arrows)} arrow(s) · "
              f"{combination} · {elapsed:.1f} s")
    return (result.image, big(result.start_image), big(result.end_image), str(overlay), seed, config_json,
            code, files, status)


def build(default_model: str | Path) -> None:
    clip_example, style_example = example_clip(Path(tempfile.mkdtemp(prefix="attn-app-sign-example-")))
    with gr.Tab(TITLE, id=TAB):
        gr.Markdown("A short clip of a sign and a style image in; the sign as one stylised picture with an "
                    "arrow per moving part out (IlluSign). The example clip is from the moving-shapes world.")
        with gr.Row():
            with gr.Column():
                model = gr.Textbox(str(default_model), label="model (folder or hub id)")
                with gr.Row():
                    clip = gr.Video(str(clip_example), label="sign clip (MP4)", sources=["upload"],
                                    height=200, elem_id="sign-clip")
                    style_image = gr.Image(style_example, label="style", type="pil", image_mode="RGB",
                                           height=200)
                combination = gr.Radio(list(COMBINATIONS), value="fused", label="start and end combined as")
                mode = gr.Radio(list(style.MODES), value="illusign", label="style mode")
                with gr.Row():
                    steps = gr.Number(20, label="steps", precision=0)
                    seed = gr.Number(0, label="seed (-1: random)", precision=0)
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="sign-go")
                    stop = gr.Button("Cancel")
            with gr.Column():
                image = gr.Image(label="illustration with arrows", type="pil", format="png",
                                 elem_id="sign-result")
                with gr.Row():
                    first = gr.Image(label="start frame, stylised", type="pil", format="png")
                    last = gr.Image(label="end frame, stylised", type="pil", format="png")
                overlay = gr.Video(label="frames with their paths | illustration")
                status, used_seed, config, code, files = run_panel("StyleConfig")
        go.click(generate, [model, clip, style_image, combination, mode, steps, seed],
                 [image, first, last, overlay, used_seed, config, code, files, status], api_name="sign",
                 concurrency_limit=1, concurrency_id=style.TAB)  # one model, one queue with the Style tab
        stop.click(cancel_button(TAB), None, status, api_name="sign_cancel", queue=False)
