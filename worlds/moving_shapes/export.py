"""Export a moving-shapes training run as a standard, offline-loadable ``WanPipeline`` folder.

    python -m worlds.moving_shapes.export --run runs/video --out assets/moving-shapes-wan

Weights are saved in fp32 safetensors (the whole model is a few MB, and fp32 keeps CPU inference
exact); ``_name_or_path`` is stripped from the configs so nothing points at the training machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import textwrap
from pathlib import Path

import torch


def _strip_name_or_path(folder: Path) -> None:
    for cfg in folder.rglob("config.json"):
        data = json.loads(cfg.read_text())
        if data.pop("_name_or_path", None) is not None:
            cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def export_pipeline(folder: Path, vae, text_encoder, tokenizer, transformer, meta: dict | None = None):
    """Assemble WanPipeline from trained parts and ``save_pretrained`` it into ``folder``."""
    from diffusers import WanPipeline

    from worlds.moving_shapes import models as vm

    folder = Path(folder)
    # a fast tokenizer that has encoded batches keeps that call's padding/truncation in its backend,
    # and save_pretrained would write it into tokenizer.json: export a clean copy
    tokenizer = copy.deepcopy(tokenizer)
    if hasattr(tokenizer, "backend_tokenizer"):
        tokenizer.backend_tokenizer.no_padding()
        tokenizer.backend_tokenizer.no_truncation()
    # copies on the CPU, so exporting mid-training leaves the live (possibly CUDA) models in place
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=copy.deepcopy(text_encoder).to("cpu"),
        vae=copy.deepcopy(vae).to("cpu"),
        scheduler=vm.make_scheduler(),
        transformer=copy.deepcopy(transformer).to("cpu"),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    _strip_name_or_path(folder)
    if meta is not None:
        (folder / "training_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return pipe


def load_run(run: Path, device: str = "cpu"):
    """(vae, text_encoder, tokenizer, transformer) from a run folder, using the EMA weights."""
    from worlds.moving_shapes import models as vm
    from worlds.moving_shapes.tokenizer import build_video_tokenizer

    run = Path(run)
    tokenizer = build_video_tokenizer()
    vae = vm.make_vae()
    vae.load_state_dict(torch.load(run / "vae.pt", map_location=device, weights_only=False)["model"])
    cache = torch.load(run / "cache.pt", map_location="cpu", weights_only=False)
    vae.register_to_config(latents_mean=cache["latents_mean"], latents_std=cache["latents_std"])
    ck = torch.load(run / "dit.pt", map_location=device, weights_only=False)
    transformer = vm.make_transformer()
    transformer.load_state_dict(ck["ema_transformer"])
    text_encoder = vm.make_text_encoder(len(tokenizer))
    text_encoder.load_state_dict(ck["ema_text_encoder"])
    return vae.eval(), text_encoder.eval(), tokenizer, transformer.eval(), ck["step"]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines() if line.strip()]


def training_summary(run: Path) -> dict:
    """Steps, wall-clock spans and last logged numbers per stage, from the run's log.jsonl."""
    records = _records(run)
    out: dict = {}
    for stage in ("vae", "cache", "dit"):
        rs = [r for r in records if r.get("stage") == stage]
        if not rs:
            continue
        steps = [r for r in rs if "step" in r and "loss" in r]
        out[stage] = {"wall_minutes": round((rs[-1]["time"] - rs[0]["time"]) / 60, 1)}
        if steps:
            out[stage].update(
                {
                    "steps": steps[-1]["step"],
                    "last": {k: v for k, v in steps[-1].items() if k not in ("time", "stage")},
                }
            )
        done = [r for r in rs if "psnr_full" in r]
        if done:
            out[stage]["psnr_full"] = done[-1]["psnr_full"]
        notes = [f"at step {r['at_step']}: {r['surgery']}" for r in rs if "surgery" in r]
        if notes:
            out[stage]["interventions"] = notes
        clips = [r["clips"] for r in rs if "clips" in r]
        if clips:
            out[stage]["clips"] = clips[-1]
    if (Path(run) / "args.json").exists():
        out["args"] = json.loads((Path(run) / "args.json").read_text())
    for stage in ("vae", "dit"):  # the checkpoints know the exact step (the log samples every 20-50)
        ck = Path(run) / f"{stage}.pt"
        if stage in out and ck.exists():
            out[stage]["steps"] = torch.load(ck, map_location="cpu", weights_only=False)["step"]
    return out


def finetune_summary(run: Path) -> dict:
    """What a ``moving_shapes.train --init-pipeline`` run did, from its log.jsonl and args.json: the
    folder and steps it started from, the device, steps, batch, clips, learning rate, budget, wall
    time, losses."""
    records = _records(run)
    init = next((r for r in records if r.get("stage") == "dit" and "init" in r), None)
    if init is None:
        raise ValueError(f"{run} is not a fine-tune run: its log.jsonl has no --init-pipeline record")
    steps = [r for r in records if r.get("stage") == "dit" and "step" in r]
    losses = [r for r in steps if "loss" in r]
    if not losses:
        raise ValueError(f"{run} logged no transformer steps")
    hp = json.loads((Path(run) / "args.json").read_text())
    return {
        "init": init["init"], "init_steps": init.get("init_steps"), "device": init.get("device"),
        "steps": max(r["step"] for r in steps), "batch": hp["dit_batch"], "lr": hp["dit_lr"],
        "time_limit_s": hp.get("time_limit"), "decay_tail": hp.get("decay_tail"), "ema": hp["ema"],
        "clips": max((r["clips"] for r in records if "clips" in r), default=None),
        "wall_minutes": round((steps[-1]["time"] - init["time"]) / 60, 1),
        "steps_per_s": losses[-1].get("steps_per_s"),
        "first_loss": losses[0]["loss"], "last_loss": losses[-1]["loss"],
    }


def _finetune_section(ft: dict | None) -> str:
    if not ft:
        return ""
    budget = (f"a {ft['time_limit_s']:.0f} s budget, the learning rate decayed linearly to 0.1x over "
              f"its last {100 * ft['decay_tail']:.0f} %" if ft.get("time_limit_s") else "no time limit")
    return textwrap.fill(
        f"5. GPU fine-tune of the weights above (the EMA after {ft['init_steps']} steps), on one "
        f"{ft['device']}: a fresh cache of {ft['clips']} clips encoded by the same VAE (its latent "
        f"statistics kept), then {ft['steps']} steps at batch {ft['batch']} ({ft['steps_per_s']} steps/s), "
        f"AdamW {ft['lr']} with the 200-step warm-up and {budget}; the EMA ({ft['ema']}) restarted from "
        f"the starting weights. Flow loss {ft['first_loss']} -> {ft['last_loss']}; {ft['wall_minutes']} min "
        "wall. Same objective, regulariser and padding treatment as step 3 "
        "(`moving_shapes.train --init-pipeline ... --device cuda --time-limit ...`; "
        "`benchmarks/gpu_session.sh`).",
        width=100, subsequent_indent="   ", break_on_hyphens=False) + "\n"


def _motion_line(metrics: dict | None) -> str:
    if metrics and metrics.get("motion_accuracy", 0) >= 0.7:
        return ""
    return ("\n  Motion is the transformer's weakest skill: generated objects drift 1-2 px per frame, "
            "often along\n  the wrong axis, where training clips move 2-3.2 px per frame along the "
            "prompted one.")


CARD_TEMPLATE = """# moving-shapes-wan: a small trained text-to-video model in Wan architecture

A stand-in for Wan 2.1 that loads offline with `WanPipeline.from_pretrained(this_folder)` and whose
outputs a detector can score. It exists so attention techniques (tile-sparse, SageAttention) can be
shown to change what a video model draws; it is not a general video model.

## Data
Synthetic clips rendered on the fly (`worlds/moving_shapes/data.py`): {frames} frames,
{size}x{size} RGB, light grey background with a small tint; 1 object (60 %) or 2 objects (40 %) with
distinct colours (red, green, blue, yellow, purple, orange, +-15 RGB jitter), shapes circle / square /
upright triangle of 14-22 px, moving left / right / up / down at a steady 2.0-3.2 px per frame, never
overlapping. Captions: "a red circle moving right", "a red circle moving right and a blue square
moving up"; 10 % empty captions for classifier-free guidance.

## Architecture
Stock diffusers / transformers classes; configs in `worlds/moving_shapes/models.py`.

| component | config |
| --- | --- |
{vae_row}
{dit_row}
| UMT5EncoderModel | d_model {d_model}, {text_layers} layers, {text_heads} heads, d_ff {d_ff} |
| T5Tokenizer | Unigram over the closed vocabulary: each word one piece, characters as fallback |
| FlowMatchEulerDiscreteScheduler | shift {shift} |

## Training
`python -m worlds.moving_shapes.train --out runs/video` (seeded, resumable, `--device cuda`).

1. VAE: L1 + MSE + 1e-6 KL, AdamW cosine, batch 8 (32x32 crops; every 4th step 2 whole clips), shape
   pixels weighted x{object_weight} in the loss (they are ~6 % of the pixels but all the detector reads).
   History: a first attempt at Wan's 4x temporal compression (1,100 steps) kept colours but not the
   motion inside a 4-frame chunk; its weights warm-started a 2x-temporal VAE (450 steps, unweighted
   loss), which warm-started this one: {vae_steps} steps, {vae_min} min wall. Reconstruction PSNR on
   held-out whole clips: {vae_psnr} dB.
2. Latent cache: {clips} clips (posterior mean and std); per-channel `latents_mean` / `latents_std`
   measured and stored in the VAE config as Wan does; {cache_min} min wall.
3. Transformer and text encoder jointly with rectified flow as in Wan: x_s = (1 - s) x0 + s eps,
   target eps - x0, s from the shift-{shift} schedule; AdamW {dit_lr} (200-step warm-up{decay}),
   weight decay 1e-2 on matrices only (none on norm gains and biases), grad clip 1, batch {dit_batch},
   EMA 0.999 (the EMA is shipped). {dit_steps} steps, {dit_min} min wall; last logged flow loss
   {dit_loss}.{interventions}
   Cross-attention trains against exactly the 512 zero-padded text rows WanPipeline feeds (an
   equivalent logit bias on 32 rows, tested), so default calls are in distribution. Those ~500
   identical padding rows share one key; at unit RMSNorm gains it took 93-95 % of the cross-attention
   mass in a first model and diluted the prompt ~20x, so the attn2 `norm_q` / `norm_k` gains start at
   {cross_gain} (logits x{cross_logit}).
4. Frame-tile structure: a hinge regulariser (weight 0.2) pushes each layer's head-averaged
   same-frame attention mass up to 0.5 (uniform share 1/F = 0.2) while it is below that. Large video
   DiTs show this structure by themselves (Efficient-vDiT reports diagonal tiles at ~2.8x the
   off-diagonal ones); this tiny, briefly trained model is shaped to have it so that tile-sparse
   attention has real structure to keep or drop. It is a property of this stand-in, not evidence
   about large models.
{finetune}
Compute: steps 1-4 on one or two CPU threads (torch 2.13 CPU) on a 2-core machine shared with other
jobs, so wall minutes overstate the work{finetune_compute}.

## Metrics
`benchmarks/video_eval.py`, detection-scored per frame, fixed seeds.

{metrics}

## Limitations
- {target_line}
- The VAE is not the limit: its reconstructions of 48 held-out one-object clips score colour 1.00,
  shape 0.92 and motion 1.00 with the same detector (the previous, unweighted VAE: 0.81 / 0.69 /
  0.81).{motion_line}
- Closed vocabulary (`worlds/shapes/vocab.py`); other words tokenize into characters the
  encoder never learned (`worlds.moving_shapes.tokenizer.check_prompt` names them;
  `pipelines.video.generate_video` raises on them).
- 64x64 and 9 frames only (other sizes are untrained). Two-object prompts are weaker than one-object
  prompts, and some samples flicker or lose their object.
- The frame-tile attention structure is partly trained in (Training, step 4).

Files: fp32 safetensors, {size_mb:.1f} MB in total.
"""


def _metrics_section(m: dict | None) -> str:
    if not m:
        return "Not evaluated yet."
    two = m.get("two_object", {})
    rows = [
        f"Settings: {m.get('steps')} steps, guidance {m.get('guidance')}, {m.get('frames')} frames, "
        f"{m.get('size')} px, {m.get('device')}.",
        "",
        "| prompts | colour | shape | motion direction | temporal consistency |",
        "| --- | --- | --- | --- | --- |",
        f"| {m.get('prompts_one')} one-object | {m.get('colour_accuracy')} | {m.get('shape_accuracy')} "
        f"| {m.get('motion_accuracy')} | {m.get('temporal_consistency')} |",
    ]
    if two:
        rows.append(
            f"| {m.get('prompts_two')} two-object (per object) | {two.get('colour_accuracy')} "
            f"| {two.get('shape_accuracy')} | {two.get('motion_accuracy')} "
            f"| {two.get('temporal_consistency')} |"
        )
    rows += [
        "",
        f"Seconds per video: {m.get('seconds_per_video')} ({m.get('device')}, batched).",
        "",
        f"Diagonal frame-tile ratio (same-frame attention mass / uniform share 1/F, F = "
        f"{m.get('latent_frames')}), per layer: {m.get('diagonal_tile_ratio_per_layer')}; "
        f"mean {m.get('diagonal_tile_ratio')}.",
    ]
    return "\n".join(rows)


def _target_line(metrics: dict | None) -> str:
    """Issue 4's bar (one-object colour >= 0.8, motion direction >= 0.7), stated against the scores."""
    if not metrics or "colour_accuracy" not in metrics:
        return "Not yet scored: run benchmarks/video_eval.py and export with --metrics."
    colour, motion = metrics["colour_accuracy"], metrics["motion_accuracy"]
    met = colour >= 0.8 and motion >= 0.7
    return (f"One-object colour {colour} / motion direction {motion} against the bar of 0.8 / 0.7: "
            + ("met." if met else "not met by this checkpoint; the training script is "
               "resumable and `--device cuda` trains the same recipe on a GPU."))


def write_model_card(folder: Path, summary: dict, metrics: dict | None, finetune: dict | None = None) -> None:
    """MODEL_CARD.md: data, architecture, compute, metrics (from benchmarks/video_eval.py), limits."""
    from worlds.moving_shapes import models as vm

    folder = Path(folder)
    size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
    vae, cache, dit = summary.get("vae", {}), summary.get("cache", {}), summary.get("dit", {})
    hp = summary.get("args", {})
    tc, xc, vc = vm.TEXT_CONFIG, vm.TRANSFORMER_CONFIG, vm.VAE_CONFIG
    vae_row = (
        f"| AutoencoderKLWan | base_dim {vc['base_dim']}, z_dim {vm.Z_DIM}, dim_mult {vc['dim_mult']}, "
        f"1 res block; 2x time, 4x space (Wan: 4x, 8x) -> latents ({vm.Z_DIM}, 5, 16, 16) |"
    )
    dit_row = (
        f"| WanTransformer3DModel | {xc['num_layers']} blocks, {xc['num_attention_heads']} heads x "
        f"{xc['attention_head_dim']}, ffn {xc['ffn_dim']}, patch (1, 2, 2) -> 5 latent frames x 64 tokens "
        "= 320 tokens, 3D RoPE |"
    )
    text = CARD_TEMPLATE.format(
        vae_row=vae_row,
        dit_row=dit_row,
        frames=vm.NUM_FRAMES,
        size=vm.SIZE,
        vae_dim=vc["base_dim"],
        z_dim=vm.Z_DIM,
        dim_mult=vc["dim_mult"],
        layers=xc["num_layers"],
        heads=xc["num_attention_heads"],
        head_dim=xc["attention_head_dim"],
        ffn=xc["ffn_dim"],
        d_model=tc["d_model"],
        text_layers=tc["num_layers"],
        text_heads=tc["num_heads"],
        d_ff=tc["d_ff"],
        shift=vm.FLOW_SHIFT,
        vae_steps=vae.get("steps", "?"),
        vae_min=vae.get("wall_minutes", "?"),
        vae_psnr=vae.get("psnr_full", "?"),
        clips=cache.get("clips", "?"),
        cache_min=cache.get("wall_minutes", "?"),
        dit_steps=dit.get("steps", "?"),
        dit_min=dit.get("wall_minutes", "?"),
        dit_loss=dit.get("last", {}).get("loss", "?"),
        metrics=_metrics_section(metrics),
        interventions="".join(f" Intervention {n}." for n in dit.get("interventions", [])),
        object_weight=hp.get("vae_object_weight", 1.0),
        dit_lr=hp.get("dit_lr", "?"),
        dit_batch=hp.get("dit_batch", "?"),
        cross_gain=hp.get("cross_gain", 1.0),
        cross_logit=round(float(hp.get("cross_gain", 1.0)) ** 2, 2),
        target_line=_target_line(metrics),
        decay=(f", linear decay to 0.1x from step {hp['decay_from']} to {hp['decay_to']}"
               if hp.get("decay_from") is not None and hp.get("decay_to") is not None else ""),
        size_mb=size_mb,
        finetune=_finetune_section(finetune),
        finetune_compute=(f"; step 5 on one {finetune['device']} (torch CUDA build)" if finetune else ""),
        motion_line=_motion_line(metrics),
    )
    (folder / "MODEL_CARD.md").write_text(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("runs/video"))
    p.add_argument("--out", type=Path, default=Path("assets/moving-shapes-wan"))
    p.add_argument(
        "--metrics",
        type=Path,
        default=None,
        help="a file whose last line is benchmarks/video_eval.py's JSON, for the model card",
    )
    p.add_argument("--finetune-run", type=Path, default=None,
                   help="a moving_shapes.train --init-pipeline run that continued --run; described as step 5")
    p.add_argument("--card-only", action="store_true",
                   help="rewrite MODEL_CARD.md and training_meta.json of the existing --out folder "
                        "(e.g. a pipeline exported by a fine-tune run), leaving its weights alone")
    args = p.parse_args(argv)
    metrics = None
    if args.metrics is not None:
        metrics = json.loads(args.metrics.read_text().strip().splitlines()[-1])
    finetune = finetune_summary(args.finetune_run) if args.finetune_run is not None else None
    if args.card_only:
        if not (args.out / "model_index.json").exists():
            raise ValueError(f"--card-only needs an exported pipeline in --out; {args.out} has no "
                             "model_index.json")
        summary = training_summary(args.run)
        steps = summary.get("dit", {}).get("steps")
        meta = {"dit_steps": steps + finetune["steps"] if finetune and steps else steps, **summary}
        if finetune:
            meta["finetune"] = finetune
        (args.out / "training_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        write_model_card(args.out, summary, metrics, finetune)
        print(json.dumps({"out": str(args.out), "card": "rewritten", "dit_steps": meta["dit_steps"]}))
        return
    if not (args.run / "dit.pt").exists():
        raise ValueError(
            f"{args.run} has no dit.pt checkpoint; train first with worlds.moving_shapes.train"
        )
    vae, text_encoder, tokenizer, transformer, step = load_run(args.run)
    summary = training_summary(args.run)
    export_pipeline(args.out, vae, text_encoder, tokenizer, transformer, meta={"dit_steps": step, **summary})
    write_model_card(args.out, summary, metrics, finetune)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(json.dumps({"out": str(args.out), "dit_steps": step, "megabytes": round(size / 2**20, 2)}))


if __name__ == "__main__":
    main()
