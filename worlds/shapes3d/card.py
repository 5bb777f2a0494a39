"""MODEL_CARD.md of the novel-view model, written from the files that hold the facts.

    python -m worlds.shapes3d.card --model assets/shapes3d-zero123 --run-log runs/zero123/train.log \\
        [--novel-view NOVEL_VIEW_EVAL.json] [--z2h Z2H_EVAL.json]

Every number of the card is read or computed here, never typed in: the architecture and parameter
counts from the folder's components, the recipe from its ``training.json``, the compute from the run's
``train.log``, the figures from the last JSON line of ``benchmarks/novel_view_eval.py`` and
``benchmarks/z2h_eval.py``, and the acceptance bars of issues 15 and 16 evaluated on those figures. A
rerun after more training or a new eval rewrites the card; the worlds never import the benchmarks, so
the eval outputs come in as files.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worlds.finetune import read_log

from .data import TRAIN_SPEC
from .models import count_parameters
from .train_zero123 import (
    CURRICULUM_START_DEG,
    HOLDOUT_SEED_OFFSET,
    ORBIT_SEED_OFFSET,
    VAE_SEED_OFFSET,
    min_snr_weights,
)
from .zero123 import load_parts

METRICS = ("psnr", "ssim", "mask_iou", "colour_present")
# issue 15's novel-view bars (off-centre groups, 2 seeds, 50 DDIM steps)
BAR_PSNR_OVER_COPY, BAR_MASK_IOU, BAR_COLOUR = 2.0, 0.5, 0.8
BAR_SEEDS, BAR_STEPS = 2, 50
BAR_Z2H_PSNR_GAIN = 0.3  # issue 16: z2h over plain, dB


@dataclass
class Bar:
    """One acceptance bar: what it asks, the measured value, and whether it is met (None: not measured)."""

    name: str
    measured: str
    met: bool | None

    def line(self) -> str:
        mark = {True: "**met**", False: "**not met**", None: "not measured"}[self.met]
        return f"- {self.name}: {mark} ({self.measured})"


# -- reading ---------------------------------------------------------------------------------------
def last_json_line(path: Path) -> dict[str, Any]:
    """The eval scripts print their result as the last line; a saved stdout works as well."""
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path} is empty; give the output of the eval script")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the last line is not JSON ({err}); give the eval script's output"
                         ) from None


def compute(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Steps, PSNR and timings of the VAE and UNet phases of a train.log."""
    vae = [r for r in records if r.get("phase") == "vae"]
    unet = [r for r in records if r.get("phase") == "unet"]
    vae_done = next((r for r in vae if r.get("done")), None)
    vae_start = next((r for r in vae if r.get("step") == 0 and "psnr_db" in r), None)
    unet_steps = [r for r in unet if "step" in r and "s_per_step" in r]
    unet_done = next((r for r in reversed(unet) if r.get("done")), None)
    hours, prev = 0.0, 0
    for r in unet_steps:  # each log line covers the steps since the previous one at its s/step
        step = int(r["step"])
        hours += max(step - prev, 0) * float(r["s_per_step"]) / 3600
        prev = step
    vae_rates = [float(r["s_per_step"]) for r in vae if "s_per_step" in r]
    unet_rates = [float(r["s_per_step"]) for r in unet_steps]
    return {
        "vae_trained": any("step" in r or r.get("done") for r in vae),  # not a VAE taken with --init
        "vae_from": next((r["copied_from"] for r in vae if "copied_from" in r), None),
        "vae_steps": vae_done["steps"] if vae_done else max((r.get("step", 0) for r in vae), default=0),
        "vae_psnr_start": vae_start["psnr_db"] if vae_start else None,
        "vae_psnr": vae_done.get("psnr_db") if vae_done else None,
        "scaling_factor": vae_done.get("scaling_factor") if vae_done else None,
        "vae_s_per_step": round(statistics.median(vae_rates), 3) if vae_rates else None,
        "vae_hours": round(sum(vae_rates) * _log_every(vae) / 3600, 2) if vae_rates else None,
        "cache_scenes": max((r.get("scenes", 0) for r in records if r.get("phase") == "cache"
                             and r.get("file", "views.pt") == "views.pt"), default=0),  # not the orbit cache
        "unet_steps": unet_done["steps"] if unet_done else (unet_steps[-1]["step"] if unet_steps else 0),
        "unet_done": unet_done is not None,
        "unet_s_per_step": round(statistics.median(unet_rates), 3) if unet_rates else None,
        "unet_hours": round(hours, 2),
        "resumes": sum(1 for r in unet if "resumed_at" in r),
        "last_loss": unet_steps[-1].get("loss") if unet_steps else None,
    }


def vae_given(source: str | None) -> str:
    """The recipe line for a run that did not train its VAE: taken from the ``--init`` model, or put in
    the run folder by hand before it started."""
    if source is not None:
        return (f"- VAE: not trained by this run: taken with `--init` from `{repo_path(source)}`, weights "
                "and `scaling_factor` unchanged, so the VAE phase was skipped.")
    return VAE_GIVEN


VAE_GIVEN = ("- VAE: not trained by this run: its `vae/` was put in the run folder before it started (an "
             "earlier run's, whose weights and `scaling_factor` it keeps), so the VAE phase was skipped.")


def loss_words(name: str | None, gamma: float) -> str:
    """The loss weights of ``train_zero123 --loss-weights`` in words (min-SNR when not recorded)."""
    if name == "x0_floor":
        return (f"x0-floor weights (min-SNR-{gamma:g}, but the implied x0 error weighs at least 1, so the "
                "high-noise steps that decide where objects go count)")
    return f"min-SNR-{gamma:g} weights"


def pair_sources(args: dict[str, Any]) -> list[str]:
    """Card lines for the training pairs beyond the main cache: orbit and front pairs, the azimuth
    curriculum and copy pairs (none when the run used none)."""
    lines = []
    orbit, front = float(args.get("orbit_pairs") or 0), float(args.get("front_pairs") or 0)
    if orbit or front:
        lines.append(
            f"- Of each batch, a share of {front:g} front pairs and {orbit:g} orbit pairs from a second "
            f"cache of {args.get('orbit_scenes')} scenes (seed + {ORBIT_SEED_OFFSET}, twelve views at one "
            "elevation per scene): an orbit pair differs in azimuth alone; a front pair is a one-object "
            "scene seen first from the view facing its object, so the object moves sideways by its "
            "distance times -sin d azimuth.")
    if int(args.get("azimuth_curriculum") or 0):
        copies = float(args.get("copy_pairs") or 0)
        lines.append(
            f"- Azimuth curriculum: each pair's azimuth change capped at {CURRICULUM_START_DEG:g} degrees, "
            f"growing to 180 over "
            f"{args['azimuth_curriculum']} steps"
            + (f"; copies (target = source) {copies:g} of the pairs at first, none at its end." if copies
               else "."))
    return lines


def earlier_stages(record: dict[str, Any]) -> list[str]:
    """Card lines for the stages a model was trained through before this run (``--init`` chains kept in
    ``training.json`` as ``init_record``), oldest last, and the steps of all stages together."""
    gamma = inspect.signature(min_snr_weights).parameters["gamma"].default
    lines, steps, stage = [], int(record.get("step") or 0), record
    while stage.get("init_record") is not None:
        init, stage = stage.get("args", {}).get("init"), stage["init_record"]
        a = stage.get("args", {})
        steps += int(stage.get("step") or 0)
        start = f"from `{repo_path(a['init'])}`" if a.get("init") else "from random weights"
        sources = " ".join(line.removeprefix("- ") for line in pair_sources(a))
        lines.append(
            f"- Started from `{repo_path(init)}` as it was then: {stage.get('step', 'n/a')} steps {start}, "
            f"time limit {a.get('time_limit', 'not recorded')} s on {a.get('device', 'n/a')} with "
            f"{a.get('threads', 'n/a')} thread(s), batch {a.get('batch', 'n/a')}, lr {a.get('lr', 'n/a')}, "
            f"{loss_words(a.get('loss_weights'), gamma)}, input latent `{a.get('input_latent', 'n/a')}`. "
            f"{sources}".rstrip())
    if lines:
        lines.append(f"- Steps over all stages: {steps}.")
    return lines


def _log_every(records: list[dict[str, Any]]) -> int:
    steps = [int(r["step"]) for r in records if "s_per_step" in r]
    return steps[1] - steps[0] if len(steps) > 1 else (steps[0] if steps else 1)


# -- the bars --------------------------------------------------------------------------------------
def repo_path(path: Any) -> Any:
    """A path under the repository as the repository-relative path a reader can use; others as given."""
    root = Path(__file__).resolve().parents[2]
    try:
        return str(Path(path).resolve().relative_to(root))
    except (TypeError, ValueError):
        return path


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def novel_view_bars(nv: dict[str, Any]) -> list[Bar]:
    """Issue 15's novel-view bars on the headline (off-centre) numbers of novel_view_eval.py."""
    psnr, copy = nv.get("psnr"), nv.get("psnr_copy_input")
    iou, colour = nv.get("mask_iou"), nv.get("colour_present")
    gain = None if psnr is None or copy is None else psnr - copy
    return [
        Bar(f"PSNR >= copy-the-input + {BAR_PSNR_OVER_COPY:g} dB",
            f"{_fmt(psnr, 2)} vs {_fmt(copy, 2)} dB: {'n/a' if gain is None else f'{gain:+.2f}'} dB",
            None if gain is None else gain >= BAR_PSNR_OVER_COPY),
        Bar(f"mask IoU >= {BAR_MASK_IOU:g}",
            f"{_fmt(iou)}; copy-the-input {_fmt(nv.get('mask_iou_copy_input'))}",
            None if iou is None else iou >= BAR_MASK_IOU),
        Bar(f"colour present >= {BAR_COLOUR:g}", _fmt(colour),
            None if colour is None else colour >= BAR_COLOUR),
    ]


def z2h_bars(z2h: dict[str, Any]) -> list[Bar]:
    """Issue 16's bars on z2h_eval.py's methods: z2h vs plain and vs plain_equal_nfe."""
    m = z2h.get("methods", {})
    z, p, e = m.get("z2h", {}), m.get("plain", {}), m.get("plain_equal_nfe", {})

    def diff(a: dict, b: dict, key: str) -> float | None:
        return None if a.get(key) is None or b.get(key) is None else a[key] - b[key]

    gain, iou, eq = diff(z, p, "psnr"), diff(z, p, "mask_iou"), diff(z, e, "psnr")
    return [
        Bar(f"Zero-to-Hero PSNR >= plain + {BAR_Z2H_PSNR_GAIN:g} dB",
            f"{_fmt(z.get('psnr'), 2)} vs {_fmt(p.get('psnr'), 2)} dB: "
            f"{'n/a' if gain is None else f'{gain:+.2f}'} dB",
            None if gain is None else gain >= BAR_Z2H_PSNR_GAIN),
        Bar("Zero-to-Hero mask IoU >= plain", f"{_fmt(z.get('mask_iou'))} vs {_fmt(p.get('mask_iou'))}",
            None if iou is None else iou >= 0),
        Bar("Zero-to-Hero PSNR > plain at equal network evaluations",
            f"{_fmt(z.get('psnr'), 2)} vs {_fmt(e.get('psnr'), 2)} dB", None if eq is None else eq > 0),
    ]


def _setting_note(nv: dict[str, Any]) -> str:
    seeds, steps = nv.get("seeds"), nv.get("steps")
    if seeds == BAR_SEEDS and steps == BAR_STEPS:
        return f"Measured in the bars' setting ({seeds} seeds, {steps} DDIM steps)."
    return (f"Measured with {seeds} seed(s) and {steps} DDIM steps; the bars are set for {BAR_SEEDS} seeds "
            f"and {BAR_STEPS} steps, so these verdicts are provisional.")


# -- sections --------------------------------------------------------------------------------------
def _params(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def vae_cell(v: Any) -> str:
    """The AutoencoderKL config cell (shared with the text + depth card, whose VAE is the same kind)."""
    return (f"channels {tuple(v.block_out_channels)}, {v.latent_channels} latent channels, "
            f"x{2 ** (len(v.block_out_channels) - 1)} down, scaling_factor {v.scaling_factor:.5g}")


def scheduler_row(s: Any, name: str = "DDIMScheduler") -> str:
    """The scheduler's table row, from its config."""
    return (f"| {name} | {s.beta_schedule} {s.beta_start}-{s.beta_end}, {s.num_train_timesteps} "
            f"train steps, {s.prediction_type}, steps_offset {s.steps_offset} | |")


def architecture(folder: Path) -> tuple[list[str], int, dict[str, Any]]:
    """Table rows (component, config, params) from the folder's own components, the total, the parts."""
    parts = load_parts(folder)
    u, e, c, v, s = (parts.unet.config, parts.image_encoder.config.vision_config
                     if hasattr(parts.image_encoder.config, "vision_config") else parts.image_encoder.config,
                     parts.cc_projection.config, parts.vae.config, parts.scheduler.config)
    down = ", ".join(b.replace("Block2D", "") for b in u.down_block_types)
    up = ", ".join(b.replace("Block2D", "") for b in u.up_block_types)
    rows = [
        ("UNet2DConditionModel", f"sample {u.sample_size}, in/out channels {u.in_channels}/{u.out_channels} "
         f"(noisy latent ++ source latent), channels {tuple(u.block_out_channels)}, {u.layers_per_block} "
         f"layer(s) per block, down ({down}), up ({up}), cross_attention_dim {u.cross_attention_dim}",
         count_parameters(parts.unet)),
        ("CLIPVisionModelWithProjection", f"hidden {e.hidden_size}, {e.num_hidden_layers} layers, "
         f"{e.num_attention_heads} heads, image {e.image_size}, patch {e.patch_size}, projection "
         f"{e.projection_dim}, {e.hidden_act}", count_parameters(parts.image_encoder)),
        ("CCProjection (`cc_projection`)", f"Linear {c.in_channel} -> {c.out_channel}: [image embedding, "
         "d polar, sin d azimuth, cos d azimuth, d radius] -> the one cross-attention token",
         count_parameters(parts.cc_projection)),
        ("AutoencoderKL", vae_cell(v), count_parameters(parts.vae)),
    ]
    lines = [f"| {name} | {cfg} | {_params(n)} |" for name, cfg, n in rows]
    lines.append(scheduler_row(s))
    return lines, sum(n for _, _, n in rows), {"input_latent": parts.input_latent}


def figures(nv: dict[str, Any] | None, z2h: dict[str, Any] | None) -> list[str]:
    out = ["## Figures"]
    if nv is None:
        out += ["No `benchmarks/novel_view_eval.py` result was given (`--novel-view`): not measured.", ""]
    else:
        out += [f"`benchmarks/novel_view_eval.py` on `{repo_path(nv.get('scenes_file'))}` "
                f"({nv.get('scenes')} scenes, "
                f"{nv.get('seeds')} seed(s), {nv.get('steps')} DDIM steps, CFG {nv.get('cfg')}, "
                f"{nv.get('device')}): each target view generated from the source render and scored "
                "against its render; model / copy-the-input per group.", "",
                "| group | views | PSNR | SSIM | mask IoU | colour present |",
                "| --- | --- | --- | --- | --- | --- |"]
        for g, d in nv.get("groups", {}).items():
            mod, cp = d.get("model", {}), d.get("copy_input", {})
            cells = " | ".join(f"{_fmt(mod.get(k))} / {_fmt(cp.get(k))}" for k in METRICS)
            out.append(f"| {g} | {mod.get('views') or cp.get('views')} | {cells} |")
        out.append(f"| **headline** ({', '.join(nv.get('headline_groups', []))}) | | "
                   f"{_fmt(nv.get('psnr'))} / {_fmt(nv.get('psnr_copy_input'))} | "
                   f"{_fmt(nv.get('ssim'))} / {_fmt(nv.get('ssim_copy_input'))} | "
                   f"{_fmt(nv.get('mask_iou'))} / {_fmt(nv.get('mask_iou_copy_input'))} | "
                   f"{_fmt(nv.get('colour_present'))} / n/a |")
        out += ["", f"Seconds per view: {_fmt(nv.get('seconds_per_view'))}.", "",
                "**Issue 15 bars** (off-centre groups). " + _setting_note(nv), ""]
        out += [b.line() for b in novel_view_bars(nv)] + [""]
    if z2h is None:
        out += ["No `benchmarks/z2h_eval.py` result was given (`--z2h`): Zero-to-Hero not measured here.", ""]
    else:
        out += [f"`benchmarks/z2h_eval.py` ({z2h.get('scenes')} scenes, {z2h.get('seeds')} seed(s), "
                f"CFG {z2h.get('cfg')}, {z2h.get('device')}), paired seeds across methods:", "",
                "| method | PSNR | SSIM | mask IoU | colour present | NFE | s / view | seed std |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, m in z2h.get("methods", {}).items():
            cells = " | ".join(_fmt(m.get(k)) for k in (*METRICS, "nfe", "seconds_per_view", "seed_std"))
            out.append(f"| {name} | {cells} |")
        out += ["", "**Issue 16 bars**:", ""] + [b.line() for b in z2h_bars(z2h)] + [""]
    return out


def build_card(model: Path, run_log: Path | None, nv: dict[str, Any] | None = None,
               z2h: dict[str, Any] | None = None) -> str:
    """The card's Markdown."""
    record = json.loads((model / "training.json").read_text()) if (model / "training.json").is_file() else {}
    args: dict[str, Any] = record.get("args", {})
    log = compute(read_log(run_log)) if run_log is not None and run_log.is_file() else None
    rows, total, info = architecture(model)
    mb = sum(f.stat().st_size for f in model.rglob("*") if f.is_file() and f.name != "MODEL_CARD.md") / 2**20
    gamma = inspect.signature(min_snr_weights).parameters["gamma"].default

    def arg(key: str) -> str:
        return "not recorded" if args.get(key) is None else str(args[key])

    spec = TRAIN_SPEC
    views = spec.views
    scenes = args.get("scenes")
    vae_scenes = (int(args["vae_steps"]) * max(1, int(args["vae_batch"]) // views)
                  if args.get("vae_steps") is not None and args.get("vae_batch") is not None else None)
    threads = args.get("threads")
    machine = f"{arg('device')}, {threads} intra-op thread(s)" if threads is not None else arg("device")
    name = model.name
    lines = [
        f"# {name}: a Zero-1-to-3 trained on the 3D shapes world", "",
        "**Purpose.** A verifiable stand-in for the public Zero-1-to-3 checkpoints, which cannot be "
        "downloaded here. It has the exact Zero-1-to-3 structure (an 8-channel `UNet2DConditionModel` on "
        "the noisy latent ++ the source view's latent, a `CLIPVisionModelWithProjection`, the "
        "`cc_projection` linear that maps [image embedding, relative pose] to the one cross-attention "
        "token, an "
        "`AutoencoderKL` and DDIM scaled-linear 0.00085-0.012), saved in the folder layout of the public "
        "Diffusers-format checkpoints, and draws 64x64 views of scenes whose every view can be rendered "
        "and scored against ground truth (`worlds.shapes3d.score`). It is what Zero-to-Hero "
        "(`attn_processors.zero_to_hero`) is measured on.", "",
        "```python",
        "from pipelines.zero123 import Zero123Pipeline",
        f'pipe = Zero123Pipeline.from_pretrained("{model}")   # offline, one code path',
        "views = pipe(image, poses=[(0.0, 90.0, 0.0)]).images    # (d polar, d azimuth, d radius)",
        "```", "",
        "A public Diffusers-format checkpoint loads the same way: `Zero123Pipeline.from_pretrained(\"kxic/"
        "zero123-165000\")` (a hub id or its downloaded folder) reads the same subfolders (`unet/`, `vae/`, "
        "`image_encoder/`, `cc_projection/`, CLIP mean/std from `feature_extractor/`) and builds its own "
        "DDIM scheduler, since converted checkpoints carry wrong betas. This folder also records "
        f"`input_latent` = `{info['input_latent']}` in `training.json` (how the source latent enters the "
        "UNet), which the pipeline reads; the public checkpoints use `raw`.", "",
        "## Data",
        f"Rendered by `worlds/shapes3d/render.py` from `worlds/shapes3d/data.py` `TRAIN_SPEC` "
        f"(deterministic per seed and index): {min(spec.n_objects)}-{max(spec.n_objects)} objects "
        f"(drawn from {spec.n_objects}), off the look-at point ({spec.min_offset}-{spec.disc} world units), "
        f"sizes {spec.size[0]}-{spec.size[1]}, palette colours jittered +-{spec.colour_jitter} per channel; "
        f"{views} views per scene at elevations {spec.elevation[0]:g}-{spec.elevation[1]:g} deg, any "
        f"azimuth, radius {spec.radius}; 64x64 RGB.",
        f"- UNet: {scenes if scenes is not None else 'not recorded'} scenes (seed {arg('seed')}) x {views} "
        f"views = {int(scenes) * views if scenes is not None else 'n/a'} images, trained on pairs of "
        "distinct views of one scene (VAE posteriors cached, resampled every step).",
        *pair_sources(args),
        ("- VAE: not trained by this run (Recipe)." if log is not None and not log["vae_trained"] else
         f"- VAE: {vae_scenes if vae_scenes is not None else 'n/a'} other scenes (seed + {VAE_SEED_OFFSET}); "
         f"PSNR and latent scale on {arg('eval_scenes')} held-out scenes (seed + {HOLDOUT_SEED_OFFSET})."),
        "- Evaluation: `benchmarks/cases/shapes3d_novel_view.json` (other seeds, "
        "`worlds/shapes3d/cases.py`).",
        "",
        f"## Architecture (Diffusers / transformers classes, safetensors, {mb:.1f} MB, {_params(total)} "
        "parameters)",
        "| component | config | params |", "| --- | --- | --- |", *rows, "",
        "## Recipe (`python -m worlds.shapes3d.train_zero123`)",
        f"- UNet + CLIP image encoder + `cc_projection` jointly: {record.get('step', 'n/a')} steps done "
        f"(target {arg('steps')}), batch {arg('batch')}, AdamW lr {arg('lr')} ({arg('warmup')}-step "
        f"warm-up), weight decay 1e-2, grad clip 1, EMA {arg('ema')} (the EMA weights are shipped).",
        f"- Epsilon loss with {loss_words(args.get('loss_weights'), gamma)}; {arg('drop_prob')} joint "
        "condition dropout (token and input latent zeroed) for classifier-free guidance.",
        f"- Input latent: `{arg('input_latent')}` (source posterior mean, "
        f"{'x scaling_factor' if args.get('input_latent') == 'scaled' else 'unscaled as in Zero-1-to-3'}).",
        (vae_given(log["vae_from"]) if log is not None and not log["vae_trained"] else
         f"- VAE fine-tune first: {arg('vae_steps')} steps, {arg('vae_batch')} images per step, AdamW "
         f"{arg('vae_lr')}, L1 + MSE + 1e-7 KL, from `{repo_path(arg('init_vae'))}`."),
        f"- Time limit: {arg('time_limit')} s; seed {arg('seed')}.",
        *earlier_stages(record), "",
        "## Compute",
    ]
    if log is None:
        lines += ["No train.log was given (`--run-log`): compute not recorded.", ""]
    else:
        lines += [
            f"Machine: {machine}.",
            (f"- VAE: {log['vae_steps']} steps at a median {_fmt(log['vae_s_per_step'])} s/step "
             f"(~{_fmt(log['vae_hours'], 2)} h); held-out PSNR {_fmt(log['vae_psnr_start'], 2)} -> "
             f"{_fmt(log['vae_psnr'], 2)} dB, scaling_factor {_fmt(log['scaling_factor'], 5)}."
             if log["vae_trained"] else "- VAE: none in this run (given)."),
            f"- View cache: {log['cache_scenes']} scenes encoded.",
            f"- UNet: {log['unet_steps']} steps logged"
            f"{'' if log['unet_done'] else ' (run still going)'} at a median "
            f"{_fmt(log['unet_s_per_step'])} s/step (~{_fmt(log['unet_hours'], 2)} h), "
            f"{log['resumes']} resume(s), last logged loss {_fmt(log['last_loss'], 5)}.", ""]
    lines += figures(nv, z2h)
    lines += [
        "## Limitations",
        "- A toy: 64x64 renders of 1-3 primitives on a ground plane in a fixed palette, one camera radius, "
        "elevations of the training range; it knows nothing of real objects.",
        "- Cameras look at the origin from a fixed radius: d radius is always 0 in training, so other radii "
        "are untested.",
        "- Small (a few M parameters) and trained on CPU unless stated: shapes and places come before "
        "colours and shading; see the bars above for what is and is not reached.",
        "- The CLIP image encoder is trained from scratch with the UNet, not OpenAI's: its embeddings mean "
        "nothing outside this world.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("assets/shapes3d-zero123"))
    p.add_argument("--run-log", type=Path, default=Path("runs/zero123/train.log"))
    p.add_argument("--novel-view", type=Path, default=None, help="benchmarks/novel_view_eval.py output")
    p.add_argument("--z2h", type=Path, default=None, help="benchmarks/z2h_eval.py output")
    a = p.parse_args(argv)
    if not (a.model / "model_index.json").is_file():
        p.error(f"--model {a.model}: no model_index.json; export a run with "
                "`python -m worlds.shapes3d.zero123`")
    for flag, path in (("--run-log", a.run_log), ("--novel-view", a.novel_view), ("--z2h", a.z2h)):
        if path is not None and not path.is_file():
            p.error(f"{flag} {path}: no such file")
    try:
        nv = last_json_line(a.novel_view) if a.novel_view else None
        z2h = last_json_line(a.z2h) if a.z2h else None
    except ValueError as err:
        p.error(str(err))
    out = a.model / "MODEL_CARD.md"
    out.write_text(build_card(a.model, a.run_log, nv, z2h), encoding="utf-8")
    print(out)
    return out


if __name__ == "__main__":
    main()
