"""Multi-view edit tab (QNeRF): posed views of one object (a zip with a nerfstudio transforms.json) and an
edit prompt -> every view edited consistently, shown as a before/after figure.

Runs `pipelines/multiview_edit.py` (per-view MasaCtrl edit consolidated by a query NeRF); QNeRF
options come as JSON (`{"alpha": 0}` is the per-view edit without consolidation, the baseline).
"""

from __future__ import annotations

import json
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import gradio as gr
import PIL.Image
import torch

import attn_processors.qnerf  # noqa: F401  (registers QNeRFConfig with the config registry)
from attn_processors.core.registry import config_from_data, config_to_data
from pipelines.multiview_edit import MultiViewEditPipeline, load_depths, load_views
from worlds.shapes3d.models import depth_control

from ..runs import (
    MODELS,
    PROGRESS,
    ROOT,
    cancel_button,
    check_prompt,
    default_model_note,
    positive_int,
    readable_errors,
    resolve_seed,
    run_folder,
    run_panel,
    shipped_or_given,
    stepping,
)

TAB = "multiview"
TITLE = "Multi-view edit"
DEFAULT_MODEL = ROOT / "assets" / "shapes3d-sd"
# what to give while the shipped model is missing
NEEDS = "a Stable Diffusion model folder (optionally with a `controlnet-depth/` ControlNet)"
TILE = 128  # each view's side in the before/after figure


def load(source: str) -> MultiViewEditPipeline:
    return MultiViewEditPipeline.from_pretrained(source)


def transforms_of(upload: str | None, folder: Path) -> Path:
    """The transforms.json of an uploaded zip (extracted into ``folder``) or of an uploaded .json file."""
    if not upload:
        raise ValueError("no views; upload a zip holding a nerfstudio transforms.json and its images")
    path = Path(upload)
    if path.suffix.lower() == ".json":
        return path
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path.name} is not a zip file; upload a zip holding transforms.json and its "
                         "images")
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if Path(n).name == "transforms.json"]
        if len(names) != 1:
            raise ValueError(f"{path.name} holds {len(names)} transforms.json files; give exactly one "
                             "(with the images it names beside it)")
        archive.extractall(folder / "views")  # zipfile drops absolute paths and '..' parts
    return folder / "views" / names[0]


def parse_options(text: str | None) -> Any:
    """QNeRFConfig from the JSON options box (empty: the defaults)."""
    text = (text or "").strip()
    try:
        options = json.loads(text) if text else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"QNeRF options are not valid JSON ({err.msg} at column {err.colno}); give an "
                         'object such as {"alpha": 0} or leave the box empty') from None
    if not isinstance(options, dict):
        raise ValueError(f'QNeRF options must be a JSON object such as {{"alpha": 0}}, got {text!r}')
    if "__type__" in options:
        raise ValueError('give QNeRFConfig fields only (no "__type__"), e.g. {"alpha": 0}')
    try:
        return config_from_data({"__type__": "QNeRFConfig", **options})
    except TypeError as err:
        raise ValueError(f"QNeRF options {sorted(options)}: {err}") from None


def figure(before: list[PIL.Image.Image], after: list[PIL.Image.Image]) -> PIL.Image.Image:
    """Input views (top row) above the edited views (bottom row), each enlarged to TILE px."""
    out = PIL.Image.new("RGB", (TILE * len(before), 2 * TILE), "white")
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        out.paste(a.convert("RGB").resize((TILE, TILE), PIL.Image.NEAREST), (i * TILE, 0))
        out.paste(b.convert("RGB").resize((TILE, TILE), PIL.Image.NEAREST), (i * TILE, TILE))
    return out


def depth_controls(depths: torch.Tensor) -> torch.Tensor:
    """The depth ControlNet's input per view (V, 3, H, W), the 3D world's convention (normalised inverse
    depth), used for the source and the edit alike: right for appearance edits; a shape edit needs the new
    shape's depth (``controls=`` in a script)."""
    return torch.stack([depth_control(d) for d in depths])


def snippet(model: str, transforms: Path, source: str, edit: str, config_json: str, steps: int,
            guidance: float, seed: int) -> str:
    return f'''"""The Gradio app's multi-view edit (seed {seed}); writes edited_<i>.png."""
import torch

import attn_processors.qnerf  # noqa: F401  (makes QNeRFConfig known to config_from_json)
from attn_processors import config_from_json
from pipelines.multiview_edit import MultiViewEditPipeline, load_depths, load_views
from worlds.shapes3d.models import depth_control

pipe = MultiViewEditPipeline.from_pretrained({model!r})
images, cameras = load_views({str(transforms)!r})
depths = load_depths({str(transforms)!r})  # None without depth files
controls = None  # the depth ControlNet's input, when the model has one and the views carry depth
if depths is not None and pipe.controlnet is not None:
    controls = torch.stack([depth_control(d) for d in depths])
qnerf = config_from_json("""
{config_json}
""")
out = pipe(images, cameras, {source!r}, {edit!r}, qnerf=qnerf, controls=controls, depths=depths,
           num_inference_steps={steps}, guidance_scale={guidance!r},
           generator=torch.Generator().manual_seed({seed}))
for i, image in enumerate(out.images):
    image.save(f"edited_{{i}}.png")
'''


@readable_errors(TAB)
def generate(model: str, views: Any, source_prompt: str, edit_prompt: str, options: str, steps: float | None,
             guidance: float, seed: float | None, progress=PROGRESS, *, flag: threading.Event):
    """Edited views, the before/after figure, the config, code and files."""
    source_prompt, edit_prompt = check_prompt(source_prompt), check_prompt(edit_prompt)
    config = parse_options(options)
    seed = resolve_seed(seed)
    steps = positive_int("steps", steps, 20)
    folder = run_folder(TAB)
    transforms = transforms_of(views, folder)
    images, cameras = load_views(transforms)  # ValueError naming the file and frame
    depths = load_depths(transforms)  # None when the frames carry no depth_file_path
    source = shipped_or_given(model, DEFAULT_MODEL, NEEDS)
    loaded = MODELS.get(source, load)
    controls = depth_controls(depths) if depths is not None and loaded.pipe.controlnet is not None else None
    with loaded.lock:
        start = time.perf_counter()
        with stepping(loaded.pipe, progress, flag, "multi-view edit"):
            out = loaded.pipe(images, cameras, source_prompt, edit_prompt, qnerf=config, controls=controls,
                              depths=depths, num_inference_steps=steps, guidance_scale=float(guidance),
                              generator=torch.Generator().manual_seed(seed))
        elapsed = time.perf_counter() - start
    before = [PIL.Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255)
                                  .astype("uint8")) for x in images]
    config_json = json.dumps(config_to_data(config), indent=2)
    code = snippet(source, transforms, source_prompt, edit_prompt, config_json, steps, float(guidance), seed)
    paths = []
    for i, image in enumerate(out.images):
        paths.append(folder / f"edited_{i}.png")
        image.save(paths[-1])
    fig = figure(before, list(out.images))
    fig.save(folder / "before_after.png")
    (folder / "multiview_snippet.py").write_text(code, encoding="utf-8")
    files = [str(p) for p in (*paths, folder / "before_after.png", folder / "multiview_snippet.py")]
    st = out.stats
    status = (f"seed {seed} · {len(images)} views · {steps} steps · {len(st['fits'])} QNeRF fits · "
              f"{st['denoiser_calls']} denoiser calls · {elapsed:.1f} s")
    return fig, [(im, f"view {i}") for i, im in enumerate(out.images)], seed, config_json, code, files, status


def build(default_model: str | Path) -> None:
    with gr.Tab(TITLE, id=TAB):
        gr.Markdown("Posed views of one object in (a zip with a nerfstudio `transforms.json` and its "
                    "images, and depth files if its frames name them: they supervise the query NeRF's "
                    "density and feed the model's depth ControlNet, for the source and the edit alike), "
                    "every view edited to the edit prompt and kept consistent by a query NeRF. "
                    + default_model_note(Path(default_model), NEEDS))
        with gr.Row():
            with gr.Column():
                model = gr.Textbox(str(default_model), label="model (Stable Diffusion folder)",
                                   elem_id="multiview-model")
                views = gr.File(label="views (.zip with transforms.json)", file_types=[".zip", ".json"],
                                type="filepath", elem_id="multiview-views")
                source_prompt = gr.Textbox("a red cube", label="source prompt (what the views show)")
                edit_prompt = gr.Textbox("a blue cube", label="edit prompt")
                options = gr.Textbox("", label="QNeRF options (JSON object, empty: defaults)",
                                     placeholder='{"alpha": 0} is the per-view edit (no consolidation)',
                                     elem_id="multiview-options")
                with gr.Row():
                    steps = gr.Number(20, label="steps", precision=0)
                    guidance = gr.Number(5.0, label="guidance scale")
                    seed = gr.Number(0, label="seed (-1: random)", precision=0)
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="multiview-go")
                    stop = gr.Button("Cancel")
            with gr.Column():
                fig = gr.Image(label="before (top) / after (bottom)", type="pil", format="png",
                               elem_id="multiview-figure")
                edited = gr.Gallery(label="edited views", columns=4, format="png", height=220, preview=False,
                                    fit_columns=False)
                status, used_seed, config, code, files = run_panel("QNeRFConfig")
        go.click(generate, [model, views, source_prompt, edit_prompt, options, steps, guidance, seed],
                 [fig, edited, used_seed, config, code, files, status], api_name="multiview_edit",
                 concurrency_limit=1, concurrency_id=TAB)
        stop.click(cancel_button(TAB), None, status, api_name="multiview_cancel", queue=False)
