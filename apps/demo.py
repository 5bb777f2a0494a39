"""`make demo`: the pictures of the README, drawn by the shipped models, into docs/images/.

    python -m apps.demo [--model assets/shapes-sd] [--video-model assets/moving-shapes-wan]
                        [--novel-view-model assets/shapes3d-zero123] [--out docs/images]

Each panel in ``PANELS`` is a function ``(models, out_dir) -> list[Path]`` that writes one small PNG
(64-px images enlarged nearest-neighbour so a person can see them): the image model's samples, a
per-word attention map, unguided vs CSG layout control, SDPA vs SageAttention2, and dense vs
tile-sparse video attention, and (when the 3D world's novel-view model is there) plain Zero-1-to-3 vs
Zero-to-Hero against the rendered ground truth. Seeds are fixed, so a rerun on the same machine writes
the same files. ``--model`` takes a Stable Diffusion 1.x/2.x pipeline folder, ``--video-model`` a Wan
one, ``--novel-view-model`` a Zero-1-to-3 one; anything else stops with one line saying what to give
instead. Without ``--novel-view-model`` and without ``assets/shapes3d-zero123`` (not trained yet) the
novel-view panel is skipped with one printed line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


class _TorchvisionNote(logging.Filter):
    """Drop transformers' note that its image processors fall back to PIL without torchvision: it is
    printed when diffusers imports its pipelines, which use no image processor here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionNote())

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

if TYPE_CHECKING:
    from attn_processors.zero_to_hero import ZeroToHeroConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "assets" / "shapes-sd"
DEFAULT_VIDEO_MODEL = ROOT / "assets" / "moving-shapes-wan"
DEFAULT_NOVEL_VIEW_MODEL = ROOT / "assets" / "shapes3d-zero123"
NOVEL_VIEW_SCENES = ROOT / "benchmarks" / "cases" / "shapes3d_novel_view.json"
NOVEL_VIEW_GROUPS = ("off_centre_1", "off_centre_2")  # the first scene of each; its first target view
NOVEL_VIEW_SEED = 0
NOVEL_VIEW_PARTS = ("unet", "vae", "image_encoder", "cc_projection")
DEFAULT_OUT = ROOT / "docs" / "images"
LAYOUT_CASES = ROOT / "benchmarks" / "cases" / "layout_default.json"

IMAGE_PIPELINES = ("StableDiffusionPipeline", "LayoutToImagePipeline")
VIDEO_PIPELINES = ("WanPipeline",)
NOVEL_VIEW_PIPELINES = ("Zero1to3StableDiffusionPipeline",)  # the public Diffusers-format layout's name
GRID_PROMPTS = ("a red circle", "a blue square", "a yellow triangle", "a green circle and a purple square")
SEEDS = (0, 1, 2, 3)
ATTENTION_PROMPT = "a red circle and a blue square"
SAGE_PROMPT = "a green triangle and a orange circle"
VIDEO_PROMPT = "a red circle moving right"
VIDEO_KW = dict(num_frames=9, height=64, width=64, guidance_scale=4.0)  # the video model's trained size
STEPS, CFG = 20, 4.0  # the shapes model's sampling settings (its model card)
SCALE = 3  # 64-px images are enlarged (nearest) so a person can see them
LABEL_H = 14


@dataclass
class Models:
    """The shipped models (or those given on the command line), each loaded when a panel needs it;
    ``novel_view_path`` None: no novel-view model here, its panel is skipped."""

    image_path: Path
    video_path: Path
    novel_view_path: Path | None = None
    _image: object = field(default=None, repr=False)
    _video: object = field(default=None, repr=False)
    _novel_view: object = field(default=None, repr=False)

    @property
    def image(self):
        """The shapes model as a stock StableDiffusionPipeline (loaded on first use)."""
        if self._image is None:
            from worlds.shapes.pipeline import load_pipeline

            self._image = load_pipeline(self.image_path)
        return self._image

    @property
    def video(self):
        """The moving-shapes model as a stock WanPipeline (loaded on first use)."""
        if self._video is None:
            from diffusers import WanPipeline

            self._video = WanPipeline.from_pretrained(self.video_path, local_files_only=True)
            self._video.set_progress_bar_config(disable=True)
        return self._video

    @property
    def novel_view(self):
        """The 3D world's Zero-1-to-3 as our Zero123Pipeline (z2h_eval's loader; loaded on first use)."""
        if self._novel_view is None:
            from benchmarks.z2h_eval import load_pipeline

            if self.novel_view_path is None:  # main() skips the panel before this
                raise ValueError("no novel-view model: give Models(novel_view_path=...)")
            self._novel_view = load_pipeline(self.novel_view_path, "cpu")
        return self._novel_view


Panel = Callable[[Models, Path], list[Path]]


# -- checking --model / --video-model ----------------------------------------------------------------
def pipeline_class(path: Path, flag: str, example: Path) -> str:
    """The `_class_name` of the Diffusers folder `path`, or exit with one line saying what to give."""
    index = path / "model_index.json"
    if not path.exists():
        fail(f"{flag} {path}: no such folder. Give a local Diffusers pipeline folder, "
             f"e.g. {flag} {example.relative_to(ROOT)}")
    if not index.is_file():
        fail(f"{flag} {path}: not a Diffusers pipeline folder (no model_index.json). "
             f"Give one such as {example.relative_to(ROOT)}")
    try:
        index_data = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        fail(f"{flag} {path}: model_index.json is not valid JSON ({err})")
    return str(index_data.get("_class_name"))


def check_models(image_path: Path, video_path: Path) -> None:
    image_cls = pipeline_class(image_path, "--model", DEFAULT_MODEL)
    if image_cls not in IMAGE_PIPELINES:
        hint = " (a video model: give it as --video-model)" if image_cls in VIDEO_PIPELINES else ""
        fail(f"--model {image_path} is a {image_cls}{hint}; --model takes a text-to-image Stable Diffusion "
             f"1.x/2.x folder such as {DEFAULT_MODEL.relative_to(ROOT)}")
    video_cls = pipeline_class(video_path, "--video-model", DEFAULT_VIDEO_MODEL)
    if video_cls not in VIDEO_PIPELINES:
        fail(f"--video-model {video_path} is a {video_cls}; --video-model takes a Wan text-to-video "
             f"folder such as {DEFAULT_VIDEO_MODEL.relative_to(ROOT)}")


def check_novel_view_model(path: Path | None) -> Path | None:
    """The novel-view folder to draw with: a given one must be a Zero-1-to-3 folder (else one error
    line); without one, the default folder if it exists, else None (the panel is skipped)."""
    if path is None:
        if not DEFAULT_NOVEL_VIEW_MODEL.exists():
            return None
        path = DEFAULT_NOVEL_VIEW_MODEL
    cls = pipeline_class(path, "--novel-view-model", DEFAULT_NOVEL_VIEW_MODEL)
    if cls not in NOVEL_VIEW_PIPELINES:
        fail(f"--novel-view-model {path} is a {cls}; --novel-view-model takes a Zero-1-to-3 folder "
             f"({NOVEL_VIEW_PIPELINES[0]} layout) such as {DEFAULT_NOVEL_VIEW_MODEL.relative_to(ROOT)}")
    missing = [p for p in NOVEL_VIEW_PARTS if not (path / p / "config.json").is_file()]
    if missing:
        fail(f"--novel-view-model {path} lacks {missing}; export a run with "
             "`python -m worlds.shapes3d.zero123 --run RUN --out FOLDER`")
    return path


def fail(message: str) -> NoReturn:
    raise SystemExit(f"apps.demo: error: {message}")


# -- drawing helpers -----------------------------------------------------------------------------
def enlarge(image: Image.Image, scale: int = SCALE) -> Image.Image:
    return image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)


def labelled_row(tiles: list[tuple[str, Image.Image]], gap: int = 4) -> Image.Image:
    """Tiles side by side, each with its label above."""
    w = sum(t.width for _, t in tiles) + gap * (len(tiles) - 1)
    h = max(t.height for _, t in tiles) + LABEL_H
    row = Image.new("RGB", (w, h), "white")
    draw, x = ImageDraw.Draw(row), 0
    for label, tile in tiles:
        draw.text((x + 2, 1), label, fill=(0, 0, 0))
        row.paste(tile, (x, LABEL_H))
        x += tile.width + gap
    return row


def stack(rows: list[Image.Image], gap: int = 4) -> Image.Image:
    out = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + gap * (len(rows) - 1)),
                    "white")
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height + gap
    return out


def save(image: Image.Image, path: Path) -> Path:
    """A small PNG: 64 colours are plenty for these flat-coloured scenes (63 by median cut + black for
    the labels, no dithering)."""
    palette = image.quantize(colors=63, method=Image.Quantize.MEDIANCUT).getpalette()[: 63 * 3]
    with_black = Image.new("P", (1, 1))
    with_black.putpalette(palette + [0, 0, 0])
    image.convert("RGB").quantize(palette=with_black, dither=Image.Dither.NONE).save(path, optimize=True)
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def difference(a: np.ndarray, b: np.ndarray, gain: int = 10) -> Image.Image:
    """|a - b| x gain as dark pixels on white."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(-1) * gain
    return Image.fromarray((255 - np.clip(d, 0, 255)).astype(np.uint8)).convert("RGB")


def sd_image(pipe, prompt: str, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    out = pipe(prompt, num_inference_steps=STEPS, guidance_scale=CFG, generator=gen, output_type="np")
    return (out.images[0] * 255).round().astype(np.uint8)


# -- panels --------------------------------------------------------------------------------------
def panel_samples(models: Models, out_dir: Path) -> list[Path]:
    """The shapes model's samples: rows = prompts, columns = seeds, detections outlined."""
    from worlds.shapes.detector import detect

    rows = []
    for prompt in GRID_PROMPTS:
        gens = [torch.Generator().manual_seed(s) for s in SEEDS]
        images = models.image([prompt] * len(SEEDS), num_inference_steps=STEPS, guidance_scale=CFG,
                              generator=gens).images
        tiles = []
        for im in images:
            big = enlarge(im, 2)
            draw = ImageDraw.Draw(big)
            for d in detect(np.asarray(im.convert("RGB"))):
                x0, y0, x1, y1 = (v * big.width for v in d.box)
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(0, 0, 0))
            tiles.append(big)
        row = labelled_row([("", t) for t in tiles])
        ImageDraw.Draw(row).text((2, 1), prompt, fill=(0, 0, 0))
        rows.append(row)
    return [save(stack(rows), out_dir / "samples.png")]


def panel_attention(models: Models, out_dir: Path) -> list[Path]:
    """The image and the cross-attention heatmap of each content word (the core's attention store)."""
    from attn_processors import attention_maps
    from attn_processors.core import TokenMaps

    maps = attention_maps(models.image, ATTENTION_PROMPT, num_inference_steps=STEPS, seed=0,
                          guidance_scale=CFG)
    shown = [i for i, word in enumerate(maps.tokens) if word not in ("a", "and", ",")]  # content words
    maps = TokenMaps(maps.image, [maps.tokens[i] for i in shown], maps.maps[shown],
                     [maps.heatmaps[i] for i in shown])
    return [save(maps.grid(), out_dir / "attention_maps.png")]


def panel_layout(models: Models, out_dir: Path) -> list[Path]:
    """Unguided vs CSG layout control from the same seed, boxes drawn (the first case of the eval set),
    with the settings shipped in the model folder (``attn_processors.json``, read by from_pretrained)."""
    from pipelines.layout_to_image import LayoutToImagePipeline, layout_panel

    case = json.loads(LAYOUT_CASES.read_text())["cases"][0]
    layout_pipe = LayoutToImagePipeline.from_pretrained(models.image_path, local_files_only=True)
    layout_pipe.set_progress_bar_config(disable=True)
    panel = layout_panel(layout_pipe, case["prompt"], case["phrases"], case["boxes"], seed=0, size=64 * SCALE)
    return [save(panel, out_dir / "layout.png")]


def panel_sage(models: Models, out_dir: Path) -> list[Path]:
    """SDPA vs SageAttention2 (simulated INT8 Q.K / FP8 P.V on every UNet layer), same seed, and their
    difference x10."""
    from attn_processors import SageConfig, apply

    pipe = models.image
    stock = sd_image(pipe, SAGE_PROMPT, 0)
    with apply(pipe, SageConfig(backend="simulate", min_kv_len=0)):
        sage = sd_image(pipe, SAGE_PROMPT, 0)
    row = labelled_row([("SDPA", enlarge(Image.fromarray(stock))),
                        ("SageAttention2", enlarge(Image.fromarray(sage))),
                        (f"|diff| x10, {psnr(stock, sage):.0f} dB", enlarge(difference(stock, sage)))])
    return [save(row, out_dir / "sage.png")]


def panel_tile_sparse(models: Models, out_dir: Path) -> list[Path]:
    """Dense vs tile-sparse (k = 1 global frame, no warm-up) video attention: every other frame."""
    from attn_processors import TileSparseConfig, apply

    pipe = models.video

    def frames() -> np.ndarray:
        out = pipe(VIDEO_PROMPT, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                   output_type="np", **VIDEO_KW)
        return (out.frames[0] * 255).round().astype(np.uint8)

    dense = frames()
    with apply(pipe, TileSparseConfig(k=1, dense_steps=0.0, dense_blocks=())):
        sparse = frames()
    shown = range(0, len(dense), 2)
    rows = [labelled_row([(f"{name} t={i}" if i == 0 else f"t={i}", enlarge(Image.fromarray(v[i]), 2))
                          for i in shown])
            for name, v in (("dense", dense), ("tile-sparse k=1", sparse))]
    return [save(stack(rows), out_dir / "tile_sparse.png")]


def panel_novel_view(models: Models, out_dir: Path, plain_steps: int = 50,
                     z2h: ZeroToHeroConfig | None = None) -> list[Path]:
    """Source | ground truth | plain Zero-1-to-3 (``plain_steps`` DDIM steps) | Zero-to-Hero (``z2h``,
    default ``ZeroToHeroConfig()``) for the first target view of the first scene of each off-centre
    group, one seed, PSNR against the render in the labels. ``plain_steps`` / ``z2h`` exist so a test
    can draw it fast; the demo uses the defaults (z2h_eval's ``plain`` and ``z2h``)."""
    from attn_processors.zero_to_hero import ZeroToHeroConfig
    from benchmarks.z2h_eval import relative_pose, world

    z2h = ZeroToHeroConfig() if z2h is None else z2h
    w, pipe = world(), models.novel_view
    size = pipe.image_size
    scenes = [s for s in w.first_per_group(w.load_scenes(NOVEL_VIEW_SCENES), 1)
              if s.extra.get("group") in NOVEL_VIEW_GROUPS]
    rows = []
    for scene in scenes:
        source, target = scene.views[0], scene.views[1]
        src = w.render(scene.objects, source, size=size).rgb.numpy()  # (H, W, 3) uint8
        truth = w.render(scene.objects, target, size=size).rgb.numpy()
        pose = relative_pose(source, target)
        made = {}
        for name, config in (("plain", ZeroToHeroConfig.plain(plain_steps)), ("z2h", z2h)):
            out = pipe(src, [pose], z2h=config, output_type="np",
                       generator=torch.Generator().manual_seed(NOVEL_VIEW_SEED))
            made[name] = (out.images[0] * 255).round().astype(np.uint8)
        rows.append(labelled_row([
            (f"source {scene.extra.get('id', '')}", enlarge(Image.fromarray(src))),
            (f"truth, d az {pose[1]:+.0f}", enlarge(Image.fromarray(truth))),
            (f"plain, {plain_steps} steps, {psnr(made['plain'], truth):.1f} dB",
             enlarge(Image.fromarray(made["plain"]))),
            (f"Zero-to-Hero, {psnr(made['z2h'], truth):.1f} dB", enlarge(Image.fromarray(made["z2h"]))),
        ]))
    return [save(stack(rows), out_dir / "novel_view.png")]


PANELS: list[tuple[str, Panel]] = [
    ("samples", panel_samples),
    ("attention", panel_attention),
    ("layout", panel_layout),
    ("sage", panel_sage),
    ("tile_sparse", panel_tile_sparse),
    ("novel_view", panel_novel_view),
]
# what the panels write: the pictures README.md and docs/*.md show (tests/test_docs_examples.py checks).
# novel_view.png only once assets/shapes3d-zero123 ships: until then `make demo` skips it, and the slow
# test compares every name here with what `make demo` draws.
PICTURES = ("samples.png", "attention_maps.png", "layout.png", "sage.png", "tile_sparse.png",
            *(("novel_view.png",) if DEFAULT_NOVEL_VIEW_MODEL.exists() else ()))


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a Stable Diffusion 1.x/2.x folder")
    p.add_argument("--video-model", type=Path, default=DEFAULT_VIDEO_MODEL, help="a Wan text-to-video folder")
    p.add_argument("--novel-view-model", type=Path, default=None,
                   help="a Zero-1-to-3 folder (default: assets/shapes3d-zero123 when it exists)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    check_models(args.model, args.video_model)
    novel_view = check_novel_view_model(args.novel_view_model)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    diffusers_logging.disable_progress_bar()  # loading bars would bury the printed paths
    transformers_logging.disable_progress_bar()
    t0 = time.perf_counter()
    models = Models(args.model, args.video_model, novel_view)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"models: {args.model}, {args.video_model}" + (f", {novel_view}" if novel_view else ""))
    written: list[Path] = []
    for name, panel in PANELS:
        if name == "novel_view" and novel_view is None:
            print(f"[{name}] skipped: no {DEFAULT_NOVEL_VIEW_MODEL.relative_to(ROOT)} yet (train and export "
                  "the 3D world's Zero-1-to-3, or give --novel-view-model)")
            continue
        t = time.perf_counter()
        paths = panel(models, args.out)
        written += paths
        print(f"[{name}] {time.perf_counter() - t:.1f} s: " + ", ".join(str(path) for path in paths))
    print(f"demo done in {time.perf_counter() - t0:.1f} s ({len(written)} files under {args.out})")
    return written


if __name__ == "__main__":
    main()
