"""MODEL_CARD.md of the 3D world's text-to-image + depth-ControlNet model, written from its files.

    python -m worlds.shapes3d.depth_card --model assets/shapes3d-sd --run-log runs/sd3d/train.log \\
        [--eval SHAPES3D_EVAL.json] [--qnerf QNERF_EVAL.json]
    python -m worlds.shapes3d.depth_card --model assets/shapes3d-sd --eval ... --qnerf ...   # new figures

Every number of the card is read or computed here, never typed in: the architecture, parameter counts
and vocabulary from the folder's components (``controlnet-depth/`` included), the shipped steps from
its ``training.json``, the recipe and compute from the run's ``train.log`` (the ``start`` line each
invocation of ``worlds.shapes3d.train_depth`` logs per phase; without ``--run-log`` the recipe and
compute sections of the folder's current card, written from that log before, are kept; the log of a
later ``--phase joint`` fine-tune of the shipped weights, which holds no base phase, adds a Fine-tune
section to them), the figures
from the last JSON line of ``benchmarks/shapes3d_eval.py`` and ``benchmarks/qnerf_eval.py``, and the
acceptance bars of issues 15 (text + depth) and 17 (QNeRF) evaluated on those figures. The helpers
shared with the novel-view card come from ``.card``; the worlds never import the benchmarks, so the
eval outputs come in as files.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from worlds.finetune import read_log
from worlds.shapes.tokenizer import load_words

from .card import Bar, _fmt, _params, last_json_line, repo_path, scheduler_row, vae_cell
from .card import compute as vae_compute
from .data import TRAIN_SPEC
from .models import count_parameters
from .train_zero123 import min_snr_weights

CONTROLNET = "controlnet-depth"
PHASES = {"unet": "Text-to-image UNet + text encoder", "controlnet": "Depth ControlNet (UNet and text "
          "encoder frozen)", "joint": "Joint fine-tune (UNet, text encoder and ControlNet together, through "
          "the depth path)"}
BASE_PHASES = ("unet", "controlnet")  # a log with none of these is a fine-tune of the shipped weights
FINE_TUNE = "## Fine-tune"
FINE_TUNE_TIME = "Fine-tune time (from the logged s/step)"
# issue 15's text + depth bars, each on the one- and two-object groups separately
BAR_COLOUR, BAR_DEPTH, BAR_GROUPS = 0.9, 0.8, ("one", "two")
BAR_QNERF_REDUCTION = 0.30  # issue 17: QNeRF's consistency error at least this much below per-view
EVAL_KEYS = ("mask_iou", "colour_accuracy", "depth_adherence", "groups")
GROUP_METRICS = ("mask_iou", "colour_accuracy", "depth_adherence", "psnr")
QNERF_METRICS = ("consistency_error", "consistency_raw", "gt_psnr", "edit_success", "seconds")


# -- reading ---------------------------------------------------------------------------------------
def carried_recipe(card: Path, drop_fine_tune: bool = False) -> list[str]:
    """The Recipe and Compute sections of an earlier card (with its Fine-tune section unless
    ``drop_fine_tune``, when a new fine-tune log replaces it): a run's log is not shipped with the model,
    so new figures must not erase what was once read from it. Empty without such a card."""
    if not card.is_file():
        return []
    lines = card.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("## Recipe")), None)
    end = next((i for i, line in enumerate(lines) if line.startswith("## Figures")), None)
    if start is None or end is None or end <= start:
        return []
    if any("No train.log was given" in line for line in lines[start:end]):
        return []
    if drop_fine_tune:
        end = next((i for i in range(start, end) if lines[i].startswith(FINE_TUNE)), end)
    return lines[start:end]


def check_model(folder: Path) -> None:
    """A clear ValueError unless ``folder`` is an exported text + depth model (pipeline + ControlNet)."""
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"--model {folder}: no model_index.json; export a run with "
                         "`python -m worlds.shapes3d.train_depth --out RUN --export DIR`")
    if not (folder / CONTROLNET / "config.json").is_file():
        raise ValueError(f"--model {folder}: no {CONTROLNET}/config.json; train the ControlNet phase "
                         "(`train_depth --controlnet-steps N`) and export again")


def read_eval(path: Path) -> dict[str, Any]:
    """The last JSON line of ``benchmarks/shapes3d_eval.py``; names the missing keys otherwise."""
    ev = last_json_line(path)
    missing = [k for k in EVAL_KEYS if not isinstance(ev, dict) or k not in ev]
    if missing or not isinstance(ev["groups"], dict) or not all(isinstance(g, dict)
                                                                for g in ev["groups"].values()):
        raise ValueError(f"--eval {path}: the last JSON line lacks {missing or ['groups of objects']}; "
                         "give the output of `python benchmarks/shapes3d_eval.py --model DIR`")
    return ev


def read_qnerf(path: Path) -> dict[str, Any]:
    """The last JSON line of ``benchmarks/qnerf_eval.py``: ``{"methods": {"per_view", "qnerf"}}``."""
    q = last_json_line(path)
    methods = q.get("methods") if isinstance(q, dict) else None
    if not isinstance(methods, dict) or not all(isinstance(methods.get(m), dict)
                                                for m in ("per_view", "qnerf")):
        raise ValueError(f"--qnerf {path}: the last JSON line has no \"methods\" with \"per_view\" and "
                         "\"qnerf\"; give the output of `python benchmarks/qnerf_eval.py --model DIR`")
    return q


def phase_log(records: list[dict[str, Any]], phase: str) -> dict[str, Any]:
    """One phase of a train_depth log: its recipes, steps, logged losses and training seconds.

    Each progress line covers the steps since the previous one (or since the step its invocation
    started or resumed at) at its s/step, so the seconds add up across resumes."""
    recs = [r for r in records if r.get("phase") == phase]
    starts = [r["start"] for r in recs if isinstance(r.get("start"), dict)]
    progress = [r for r in recs if "step" in r and "s_per_step" in r]
    seconds, prev = 0.0, 0
    last_start = last_done = -1
    for i, r in enumerate(recs):
        if isinstance(r.get("start"), dict):
            prev, last_start = int(r["start"].get("step", 0)), i
        elif "resumed_at" in r:
            prev = int(r["resumed_at"])
        elif "step" in r and "s_per_step" in r:
            step = int(r["step"])
            seconds += max(step - prev, 0) * float(r["s_per_step"])
            prev = step
        elif r.get("done"):
            last_done = i
    done = recs[last_done] if last_done >= 0 else None
    init = next((r for r in recs if "init" in r), None)
    rates = [float(r["s_per_step"]) for r in progress]
    return {
        "logged": bool(recs),
        "starts": starts,
        "steps": done["steps"] if done else (progress[-1]["step"] if progress else 0),
        "done": done is not None and last_done > last_start,
        "stopped": done.get("stopped") if done else None,
        "seconds": seconds,
        "s_per_step": statistics.median(rates) if rates else None,
        "first_loss": progress[0].get("loss") if progress else None,
        "last_loss": progress[-1].get("loss") if progress else None,
        "resumes": sum(1 for r in recs if "resumed_at" in r),
        "init": None if init is None else init["init"],
        "new_words": None if init is None else init.get("new_words"),
    }


# -- formatting ------------------------------------------------------------------------------------
def _values(starts: list[dict[str, Any]], key: str) -> str:
    """The distinct values a recipe key took over the invocations, in order ("4e-4 then 2e-4")."""
    seen: list[Any] = []
    for s in starts:
        if key in s and (not seen or seen[-1] != s[key]):
            seen.append(s[key])
    return " then ".join("none" if v is None else str(v) for v in seen) if seen else "not recorded"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.0f} %"


# -- sections --------------------------------------------------------------------------------------
def architecture(folder: Path) -> tuple[list[str], int, dict[str, Any]]:
    """Table rows from the folder's own components, the parameter total, and facts the text needs."""
    kw = {"local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kw)
    te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **kw)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw)
    cn = ControlNetModel.from_pretrained(folder / CONTROLNET, **kw)
    tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **kw)
    sched = DDIMScheduler.from_pretrained(folder, subfolder="scheduler", **kw)
    words = load_words(folder / "tokenizer")
    one_token = all(len(tok(w, add_special_tokens=False).input_ids) == 1 for w in words)
    u, t, c = unet.config, te.config, cn.config
    latent = u.sample_size
    image = latent * 2 ** (len(vae.config.block_out_channels) - 1)

    def blocks(types: Sequence[str]) -> str:
        return ", ".join(b.replace("Block2D", "") for b in types)

    embed = c.conditioning_embedding_out_channels
    rows = [
        ("UNet2DConditionModel", f"sample {latent}, in/out channels {u.in_channels}/{u.out_channels}, "
         f"channels {tuple(u.block_out_channels)}, {u.layers_per_block} layer(s) per block, down "
         f"({blocks(u.down_block_types)}), up ({blocks(u.up_block_types)}), cross_attention_dim "
         f"{u.cross_attention_dim}", count_parameters(unet)),
        ("CLIPTextModel", f"hidden {t.hidden_size}, {t.num_hidden_layers} layers, {t.num_attention_heads} "
         f"heads, {t.max_position_embeddings} positions, vocab {t.vocab_size}, {t.hidden_act}",
         count_parameters(te)),
        ("AutoencoderKL", vae_cell(vae.config), count_parameters(vae)),
        (f"ControlNetModel (`{CONTROLNET}/`)", f"channels {tuple(c.block_out_channels)}, down "
         f"({blocks(c.down_block_types)}), conditioning {c.conditioning_channels} channels through "
         f"{tuple(embed)} (x{2 ** (len(embed) - 1)} down, {c.controlnet_conditioning_channel_order})",
         count_parameters(cn)),
    ]
    lines = [f"| CLIPTokenizer | {len(words)} words ({'' if one_token else 'NOT '}one token each),"
             f" {len(tok)} ids, `model_max_length` {tok.model_max_length} | |"]
    lines += [f"| {name} | {cfg} | {_params(n)} |" for name, cfg, n in rows]
    lines.append(scheduler_row(sched.config, type(sched).__name__))
    return lines, sum(n for _, _, n in rows), {"words": words, "image": image, "latent": latent}


def recipe(logs: dict[str, dict[str, Any]], shipped: dict[str, Any]) -> list[str]:
    """Per phase: steps, time, batch, lr, first/last logged loss, initialisation."""
    gamma = inspect.signature(min_snr_weights).parameters["gamma"].default
    out = ["## Recipe (`python -m worlds.shapes3d.train_depth`)",
           f"Every phase: epsilon loss with min-SNR-{gamma:g} weights, AdamW with linear warm-up, EMA "
           "weights shipped; captions dropped to empty at the rate below (for classifier-free "
           "guidance); the depth map enters as `models.depth_control` (inverse depth / its maximum).", ""]
    for phase, title in PHASES.items():
        lg = logs.get(phase, {"logged": False, "starts": []})
        st = lg["starts"]
        if phase == "joint" and not lg["logged"] and phase not in shipped:
            continue  # the optional phase, not run
        if not lg["logged"]:
            out += [f"- **{title}** (`{phase}`): not in this log; shipped at step "
                    f"{shipped.get(phase, 'not recorded')} (`training.json`)."]
            continue
        if phase == "unet":
            init = ("random initialisation" if lg["init"] is None else
                    f"`{lg['init']}` (shared words keep their embeddings; new words "
                    f"{', '.join(lg['new_words'] or []) or 'none'})")
        elif phase == "controlnet":
            init = "the text-to-image UNet's EMA weights (`ControlNetModel.from_unet`)"
        else:
            init = (f"the EMA weights of `{lg['init']}`; {_values(st, 'multi_object_frac')} of each batch "
                    "from views of two or more objects (`--multi-object-frac`)")
        stopped = {"steps": "reached the step target", "time_limit": "stopped by the time limit"}
        state = (stopped.get(lg["stopped"], f"stopped: {lg['stopped']}") if lg["done"] else
                 "no `done` line after the last start: still running or interrupted")
        limit = ("no time limit" if all(s.get("time_limit") is None for s in st) else
                 f"time limit {_values(st, 'time_limit')} s")
        tail = ", ".join(f"{s['decay_tail']:.0%}" for s in st if s.get("time_limit") and "decay_tail" in s)
        out.append(
            f"- **{title}** (`{phase}`): {lg['steps']} steps ({state}; target {_values(st, 'target_steps')}, "
            f"{limit}), shipped at step "
            f"{shipped.get(phase, 'not recorded')} (`training.json`); batch {_values(st, 'batch')}, "
            f"lr {_values(st, 'lr')} ({_values(st, 'warmup')}-step warm-up"
            f"{f', decayed over the last {tail} of the time limit' if tail else ''}), "
            f"EMA {_values(st, 'ema')}, empty captions {_values(st, 'empty_prob')}; "
            f"init: {init}; logged loss {_fmt(lg['first_loss'], 5)} -> {_fmt(lg['last_loss'], 5)}; "
            f"{_duration(lg['seconds'])} of training, {lg['resumes']} resume(s).")
    return out + [""]


def compute(records: list[dict[str, Any]], logs: dict[str, dict[str, Any]]) -> list[str]:
    """Machine, cache, VAE and the training time of each phase, all from the log."""
    starts = [s for lg in logs.values() for s in lg["starts"]]
    machines = sorted({f"{s.get('device')}, {s.get('threads')} intra-op thread(s)" for s in starts})
    cache = max((r.get("scenes", 0) for r in records if r.get("phase") == "cache"), default=0)
    out = ["## Compute", f"Machine: {'; '.join(machines) or 'not recorded'}.",
           f"- Cache: {cache} scenes x {TRAIN_SPEC.views} views = {cache * TRAIN_SPEC.views} images encoded "
           "(VAE posteriors, captions, depth maps).",
           f"- VAE: {_vae_line(records)}"]
    for phase, lg in logs.items():
        if lg["logged"]:
            out.append(f"- `{phase}`: {lg['steps']} steps, {_duration(lg['seconds'])} at a median "
                       f"{_fmt(lg['s_per_step'])} s/step.")
    total = sum(lg["seconds"] for lg in logs.values())
    return out + [f"- Training time in all (from the logged s/step): {_duration(total)}.", ""]


def fine_tune(logs: dict[str, dict[str, Any]], shipped: dict[str, Any]) -> list[str]:
    """A later run's joint fine-tune of the shipped weights, appended to the carried Recipe and Compute."""
    lg = logs["joint"]
    starts = lg["starts"]
    machines = sorted({f"{s.get('device')}, {s.get('threads')} intra-op thread(s)" for s in starts})
    lines = [x for x in recipe(logs, shipped)[3:] if "(`joint`)" in x]  # the base phases are not logged
    return [f"{FINE_TUNE} (`python -m worlds.shapes3d.train_depth --phase joint`, a later run)",
            "Same loss, optimiser and EMA as above; the depth ControlNet's output feeds the UNet and all "
            "three parts learn.", "", *lines,
            f"Machine: {'; '.join(machines) or 'not recorded'}; {lg['steps']} steps at a median "
            f"{_fmt(lg['s_per_step'])} s/step.", f"{FINE_TUNE_TIME}: {_duration(lg['seconds'])}.", ""]


def _vae_line(records: list[dict[str, Any]]) -> str:
    if not any(r.get("phase") == "vae" for r in records):
        return "no `vae` phase in this log: copied in with `--vae`."
    v = vae_compute(records)  # the novel-view trainer's VAE phase, which train_depth runs unchanged
    return (f"fine-tuned in this run, {v['vae_steps']} steps; held-out PSNR {_fmt(v['vae_psnr_start'], 2)} "
            f"-> {_fmt(v['vae_psnr'], 2)} dB, scaling_factor {_fmt(v['scaling_factor'], 5)}.")


def text_depth_bars(ev: dict[str, Any]) -> list[Bar]:
    """Issue 15's text + depth bars, each on the one- and two-object groups separately."""
    bars = []
    for key, label, bar in (("colour_accuracy", "colour accuracy", BAR_COLOUR),
                            ("depth_adherence", "depth adherence", BAR_DEPTH)):
        for g in BAR_GROUPS:
            d = ev.get("groups", {}).get(g)
            v = None if d is None else d.get(key)
            measured = (f"no `{g}` group in the eval" if d is None else
                        f"{_fmt(v)} over {d.get('images')} images")
            bars.append(Bar(f"{label} >= {bar:g} ({g}-object group)", measured,
                            None if v is None else v >= bar))
    return bars


def _change(reduction: float) -> str:
    """A relative reduction in words, rounded to whole percent ("5 % lower", "2 % higher", "no change")."""
    pct = round(100 * reduction)
    return f"{pct} % lower" if pct > 0 else f"{-pct} % higher" if pct < 0 else "no change"


def qnerf_bars(q: dict[str, Any]) -> list[Bar]:
    """Issue 17's bars: QNeRF vs per-view editing on consistency, edit success and ground-truth PSNR."""
    p, o = q["methods"]["per_view"], q["methods"]["qnerf"]
    pe, oe = p.get("consistency_error"), o.get("consistency_error")
    if pe is None or oe is None:
        cons = Bar(f"consistency error >= {BAR_QNERF_REDUCTION:.0%} below per-view", "n/a", None)
    elif pe <= 0:
        cons = Bar(f"consistency error >= {BAR_QNERF_REDUCTION:.0%} below per-view",
                   f"per-view {_fmt(pe)} is at the renderer's floor: no reduction to measure", None)
    else:
        red = 1 - oe / pe
        cons = Bar(f"consistency error >= {BAR_QNERF_REDUCTION:.0%} below per-view",
                   f"{_fmt(oe)} vs {_fmt(pe)}: {_change(red)}", red >= BAR_QNERF_REDUCTION)

    def not_lower(key: str, label: str) -> Bar:
        a, b = o.get(key), p.get(key)
        return Bar(f"{label} not lower than per-view", f"{_fmt(a)} vs {_fmt(b)}",
                   None if a is None or b is None else a >= b)

    return [cons, not_lower("edit_success", "edit success"), not_lower("gt_psnr", "ground-truth PSNR")]


CONTROL_TEXT = {  # what `qnerf_eval.py --control` handed the edit
    "edited": "the edit's ControlNet gets the edited scene's depth (an oracle 3D control)",
    "source": "the edit's ControlNet gets the source views' depth (no new geometry: shape edits must change "
              "the shape against their control)",
}


def qnerf_section(q: dict[str, Any]) -> list[str]:
    """One `qnerf_eval.py` result: its setting, the method table, the shape/colour groups, the bars."""
    control = str(q.get("control", "edited"))
    extra = ", ".join(f"{k} {q[k]}" for k in ("alpha", "guidance_steps", "until_step", "hard_inject")
                      if q.get(k) is not None)
    out = [f"`benchmarks/qnerf_eval.py` ({q.get('scenes')} scenes x {q.get('views')} views, "
           f"{q.get('steps')} steps; model `{q.get('model')}`{'; ' + extra if extra else ''}): "
           f"{CONTROL_TEXT.get(control, control)}; the same edits per view and with query consolidation, "
           "scored against the edited scene's renders.", "",
           "| method | group | consistency error | raw | GT PSNR | edit success | seconds |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    parts = [("all", q["methods"]), *sorted((q.get("groups") or {}).items())]
    for name in q["methods"]:
        for group, methods in parts:
            if name in methods:
                cells = " | ".join(_fmt(methods[name].get(k)) for k in QNERF_METRICS)
                out.append(f"| {name} | {group} | {cells} |")
    return out + ["", f"**Issue 17 bars** ({control} depth):", ""] + [b.line() for b in qnerf_bars(q)] + [""]


def figures(ev: dict[str, Any] | None, qs: Sequence[dict[str, Any]] = ()) -> list[str]:
    out = ["## Figures"]
    if ev is None:
        out += ["No `benchmarks/shapes3d_eval.py` result was given (`--eval`): text + depth not measured.",
                ""]
    else:
        out += [f"`benchmarks/shapes3d_eval.py` on `{repo_path(ev.get('scenes_file'))}` "
                f"({ev.get('scenes')} scenes, "
                f"{ev.get('images')} images, {ev.get('steps')} DDIM steps, CFG {ev.get('cfg')}, "
                f"{ev.get('device')}; model `{ev.get('model')}`): caption and depth in, each image scored "
                "against its render.", "",
                "| group | images | objects | mask IoU | colour accuracy | depth adherence | PSNR |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for g, d in ev["groups"].items():
            cells = " | ".join(_fmt(d.get(k)) for k in GROUP_METRICS)
            out.append(f"| {g} | {d.get('images')} | {d.get('objects')} | {cells} |")
        out += [f"| **all** | {ev.get('images')} | | {_fmt(ev.get('mask_iou'))} | "
                f"{_fmt(ev.get('colour_accuracy'))} | {_fmt(ev.get('depth_adherence'))} | |", "",
                f"Seconds per image: {_fmt(ev.get('seconds_per_image'))}.", "",
                "**Issue 15 bars** (text + depth, each group separately):", ""]
        out += [b.line() for b in text_depth_bars(ev)] + [""]
    if not qs:
        out += ["No `benchmarks/qnerf_eval.py` result was given (`--qnerf`): QNeRF not measured here.", ""]
    for q in qs:
        out += qnerf_section(q)
    return out


def build_card(model: Path, run_log: Path | None, ev: dict[str, Any] | None = None,
               qs: Sequence[dict[str, Any]] = ()) -> str:
    """The card's Markdown; ``qs``: QNeRF results, one section each (e.g. edited and source depth)."""
    check_model(model)
    record = json.loads((model / "training.json").read_text()) if (model / "training.json").is_file() else {}
    shipped: dict[str, Any] = record.get("steps", {})
    records = read_log(run_log) if run_log is not None and run_log.is_file() else None
    logs = {p: phase_log(records or [], p) for p in PHASES}
    tuned_only = records is not None and not any(logs[p]["logged"] for p in BASE_PHASES)
    carried = carried_recipe(model / "MODEL_CARD.md", drop_fine_tune=tuned_only) if (
        records is None or tuned_only) else []
    if tuned_only and not carried:
        raise ValueError(f"--run-log {run_log} holds no unet or controlnet phase and {model}/MODEL_CARD.md "
                         "has no recipe to add it to; give the log of the run that trained the base model")
    rows, total, info = architecture(model)
    mb = sum(f.stat().st_size for f in model.rglob("*") if f.is_file() and f.name != "MODEL_CARD.md") / 2**20
    size, words = info["image"], info["words"]
    kwargs = f"height={size}, width={size}"
    if ev is not None:
        kwargs += f", num_inference_steps={ev.get('steps')}, guidance_scale={ev.get('cfg')}"
    devices = sorted({str(s.get("device")) for lg in logs.values() for s in lg["starts"]})
    hours = sum(lg["seconds"] for lg in logs.values())
    init = init_of(carried) if carried else logs["unet"]["init"]
    spec = TRAIN_SPEC
    lines = [
        f"# {model.name}: a text-to-image model with a depth ControlNet, trained on the 3D shapes world", "",
        "**Purpose.** A verifiable stand-in for Stable Diffusion 1.x with a depth ControlNet, which cannot "
        "be downloaded here. It has the stock classes (`UNet2DConditionModel`, `CLIPTextModel`, "
        "`AutoencoderKL`, `ControlNetModel`) in the folder layout of the public checkpoints, and draws "
        f"{size}x{size} views of scenes whose every view can be rendered and scored against ground truth "
        "(`worlds.shapes3d.score`). It is what QNeRF (`pipelines.multiview_edit.MultiViewEditPipeline`, "
        "which reads the same folder) is measured on.", "",
        "```python",
        "from pathlib import Path",
        "from diffusers import ControlNetModel, StableDiffusionControlNetPipeline",
        "from worlds.shapes3d.models import depth_control   # z-depth (H, W) -> (3, H, W) inverse depth",
        f'folder = Path("{model}")',
        f'controlnet = ControlNetModel.from_pretrained(folder / "{CONTROLNET}", local_files_only=True)',
        "pipe = StableDiffusionControlNetPipeline.from_pretrained(folder, controlnet=controlnet,",
        "                                                         local_files_only=True)  # offline",
        'image = pipe("a red cube and a blue sphere", image=depth_control(depth)[None],',
        f"             {kwargs}).images[0]",
        "```", "",
        "## Data",
        f"Rendered by `worlds/shapes3d/render.py` from `worlds/shapes3d/data.py` `TRAIN_SPEC` "
        f"(deterministic per seed and index): {min(spec.n_objects)}-{max(spec.n_objects)} objects (drawn "
        f"from {spec.n_objects}), sizes {spec.size[0]}-{spec.size[1]}, {spec.views} views per scene at "
        f"elevations {spec.elevation[0]:g}-{spec.elevation[1]:g} deg, radius {spec.radius}; {size}x{size} "
        "RGB. Each view is paired with its scene's caption (\"a red cube and a blue sphere\") and its "
        "inverse-depth map. Evaluation: `benchmarks/cases/shapes3d_text_depth.json` (other seeds).", "",
        f"## Architecture (Diffusers / transformers classes, safetensors, {mb:.1f} MB, {_params(total)} "
        "parameters)",
        "| component | config | params |", "| --- | --- | --- |", *rows, "",
    ]
    tuned = fine_tune(logs, shipped) if tuned_only else []
    if carried:
        lines += carried + tuned
    elif records is None:
        lines += ["## Recipe", "No train.log was given (`--run-log`): recipe and compute not recorded; "
                  f"shipped steps {shipped or 'not recorded'} (`training.json`).", ""]
    else:
        lines += recipe(logs, shipped) + compute(records, logs)
    lines += figures(ev, qs)
    lines += [
        "## Limitations",
        f"- A toy: {size}x{size} renders ({info['latent']}x{info['latent']} latents) of primitives on a "
        "ground disc in a fixed palette, one camera radius; it knows nothing of real objects or real "
        "depth maps.",
        f"- Closed vocabulary of {len(words)} words: {', '.join(f'`{w}`' for w in words)}. Any other "
        "word is split into characters the model never saw.",
        f"- Small ({_params(total)} parameters) and trained on "
        f"{machine_of(carried) if carried else ' and '.join(devices) or 'a device not recorded'} for "
        f"{trained_for(carried + tuned) if carried else _duration(hours)} of logged training: see "
        "the bars above for what is and is not reached.",
        "- The depth control is this world's inverse depth normalised per image (`depth_control`), not a "
        "MiDaS estimate; the text encoder is this world's own (trained from scratch"
        f"{'' if init is None else f', through `{init}`'}), not OpenAI's CLIP: its embeddings mean "
        "nothing outside this world.", ""]
    return "\n".join(lines)


def machine_of(carried: list[str]) -> str:
    """The device named by a carried Compute section ("Machine: cpu, ..."), for the limitations."""
    line = next((x for x in carried if x.startswith("Machine: ")), None)
    return line.removeprefix("Machine: ").split(",")[0] if line else "a device not recorded"


def init_of(carried: list[str]) -> str | None:
    """The text-to-image UNet's starting folder named by a carried Recipe ("init: `assets/shapes-sd`")."""
    line = next((x for x in carried if "(`unet`)" in x), "")
    found = re.search(r"init: `([^`]+)`", line)
    return found.group(1) if found else None


def trained_for(carried: list[str]) -> str:
    """The training time of a carried Compute section ("... in all (from the logged s/step): 79.8 min."),
    plus its fine-tune's ("79.8 min plus a 40.0 min fine-tune")."""
    line = next((x for x in carried if "Training time in all" in x), None)
    base = line.rsplit(": ", 1)[1].rstrip(".") if line else "a time not recorded"
    tuned = next((x for x in carried if x.startswith(FINE_TUNE_TIME)), None)
    return base if tuned is None else f"{base} plus a {tuned.rsplit(': ', 1)[1].rstrip('.')} fine-tune"


def main(argv: Sequence[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("assets/shapes3d-sd"))
    p.add_argument("--run-log", type=Path, default=None,
                   help="the run's train.log (default: keep the current card's recipe and compute)")
    p.add_argument("--eval", type=Path, default=None, help="benchmarks/shapes3d_eval.py output")
    p.add_argument("--qnerf", type=Path, action="append", default=[],
                   help="benchmarks/qnerf_eval.py output (repeat for several settings)")
    a = p.parse_args(argv)
    for flag, path in (("--run-log", a.run_log), ("--eval", a.eval), *(("--qnerf", q) for q in a.qnerf)):
        if path is not None and not path.is_file():
            p.error(f"{flag} {path}: no such file")
    try:
        check_model(a.model)
        ev = read_eval(a.eval) if a.eval else None
        qs = [read_qnerf(path) for path in a.qnerf]
        text = build_card(a.model, a.run_log, ev, qs)
    except ValueError as err:
        p.error(str(err))
    out = a.model / "MODEL_CARD.md"
    out.write_text(text, encoding="utf-8")
    print(out)
    return out


if __name__ == "__main__":
    main()
