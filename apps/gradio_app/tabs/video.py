"""Video tab: prompt -> MP4 under dense, tile-sparse, SageAttention2 or tile-sparse + Sage attention.

Each run's measured wall time is shown beside its video and kept in a table for the session, so the
techniques can be compared run by run on the same prompt and seed.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from attn_processors.core.registry import config_to_data
from pipelines.video import (
    ATTENTION_CHOICES,
    attention_configs,
    generate_video,
    load_video_pipeline,
    write_mp4,
)

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
    stepping,
)

TAB = "video"
TITLE = "Video"
DEFAULT_MODEL = ROOT / "assets" / "moving-shapes-wan"
EXAMPLE_PROMPT = "a red circle moving right"
FPS = 8


def load(source: str) -> Any:
    return load_video_pipeline(source).pipe


def parse_options(text: str | None) -> dict[str, Any]:
    """The technique's options from the JSON box (empty: its defaults)."""
    text = (text or "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"attention options are not valid JSON ({err.msg} at column {err.colno}); give an "
                         'object such as {"k": 2} or leave the box empty') from None
    if not isinstance(options, dict):
        raise ValueError(f"attention options must be a JSON object such as {{\"k\": 2}}, got {text!r}")
    return options


def snippet(model: str, prompt: str, configs_json: str | None, frames: int, size: tuple[int, int],
            steps: int, guidance: float, seed: int) -> str:
    """A script that makes the same video on the plain Diffusers path (set_attn_processor)."""
    install = "" if configs_json is None else f'''configs = config_from_json("""
{configs_json}
""")
pipe.transformer.set_attn_processor(processors(pipe, *configs))
'''
    undo, imports = "", ""
    if configs_json is not None:
        undo = "pipe.transformer.set_attn_processor(stock_processors(pipe.transformer))\n"
        imports = "from attn_processors import config_from_json, processors, stock_processors\n"
    return f'''"""The Gradio app's video run (seed {seed}); writes video.mp4."""
import torch
from diffusers import DiffusionPipeline

{imports}from pipelines.video import write_mp4  # deterministic H.264: the same frames give the same bytes

pipe = DiffusionPipeline.from_pretrained({model!r})
{install}frames = pipe(prompt={prompt!r}, num_frames={frames}, height={size[0]}, width={size[1]},
              num_inference_steps={steps}, guidance_scale={guidance!r},
              generator=torch.Generator("cpu").manual_seed({seed}), output_type="np").frames[0]
{undo}write_mp4((frames.clip(0, 1) * 255).round().astype("uint8"), "video.mp4", fps={FPS})
'''


@readable_errors(TAB)
def generate(model: str, prompt: str, attention: str, options: str, frames: float, height: float,
             width: float, steps: float, guidance: float, seed: float | None, history: list | None,
             progress=PROGRESS, *, flag: threading.Event):
    """The MP4, its measured wall time, the session's run table, config JSON, code and files."""
    prompt = check_prompt(prompt)
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention={attention!r}; use one of {list(ATTENTION_CHOICES)}")
    configs = attention_configs(attention, parse_options(options))  # ValueError on a bad option
    seed = resolve_seed(seed)
    frames, height, width, steps = (positive_int(n, v) for n, v in (("frames", frames), ("height", height),
                                                                    ("width", width), ("steps", steps)))
    source = model_source(model, DEFAULT_MODEL)
    loaded = MODELS.get(source, load)
    with loaded.lock, stepping(loaded.pipe, progress, flag, attention):
        result = generate_video(loaded.pipe, prompt, num_frames=frames, height=height, width=width,
                                num_inference_steps=steps, guidance_scale=float(guidance), seed=seed,
                                attention=configs if configs else "dense")
    folder = run_folder(TAB)
    video = write_mp4(result.frames, folder / f"video_{attention.replace('+', '_')}.mp4", fps=FPS)
    config_text = json.dumps([config_to_data(c) for c in configs], indent=2)
    configs_json = config_text if configs else None
    code = snippet(source, prompt, configs_json, frames, (height, width), steps, float(guidance), seed)
    (folder / "video_config.json").write_text(config_text + "\n", encoding="utf-8")
    (folder / "video_snippet.py").write_text(code, encoding="utf-8")
    t = result.timings
    wall = f"**{attention}**: {t['total_s']:.2f} s wall ({t['denoise_s']:.2f} s denoising, " \
           f"{t['decode_s']:.2f} s decoding), seed {seed}"
    history = [*(history or []), [attention, seed, steps, round(t["total_s"], 3), round(t["denoise_s"], 3)]]
    files = [str(video), str(folder / "video_config.json"), str(folder / "video_snippet.py")]
    return str(video), wall, history, history, seed, config_text, code, files


def build(default_model: str | Path) -> None:
    with gr.Tab(TITLE, id=TAB):
        gr.Markdown("A prompt in, an MP4 out, under the chosen attention; the wall time of each run is "
                    "measured in this server process and listed below for comparison.")
        history = gr.State([])
        with gr.Row():
            with gr.Column():
                model = gr.Textbox(str(default_model), label="model (folder or hub id)")
                prompt = gr.Textbox(EXAMPLE_PROMPT, label="prompt", elem_id="video-prompt")
                attention = gr.Radio(list(ATTENTION_CHOICES), value="dense", label="attention",
                                     elem_id="video-attention")
                options = gr.Textbox("", label="attention options (JSON object, empty: defaults)",
                                     placeholder='tile_sparse: {"k": 2} · sage: {"min_kv_len": 0}')
                with gr.Row():
                    frames = gr.Number(9, label="frames", precision=0)
                    height = gr.Number(64, label="height", precision=0)
                    width = gr.Number(64, label="width", precision=0)
                with gr.Row():
                    steps = gr.Number(20, label="steps", precision=0, elem_id="video-steps")
                    guidance = gr.Number(4.0, label="guidance scale")
                    seed = gr.Number(0, label="seed (-1: random)", precision=0)
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="video-go")
                    stop = gr.Button("Cancel")
            with gr.Column():
                video = gr.Video(label="video", elem_id="video-output", autoplay=True, loop=True)
                wall = gr.Markdown(elem_id="video-wall")
                table = gr.Dataframe(headers=["attention", "seed", "steps", "wall s", "denoise s"],
                                     label="runs this session", interactive=False)
                used_seed = gr.Number(label="seed used", precision=0, interactive=False)
                config = gr.Code(label="attention configs (JSON)", language="json", max_lines=12)
                code = gr.Code(label="copy as code", language="python", max_lines=16)
                files = gr.File(label="downloads", file_count="multiple")
        go.click(generate, [model, prompt, attention, options, frames, height, width, steps, guidance, seed,
                            history],
                 [video, wall, table, history, used_seed, config, code, files], api_name="video",
                 concurrency_limit=1, concurrency_id=TAB)
        stop.click(cancel_button(TAB), None, wall, api_name="video_cancel", queue=False)
