"""Export a training run's EMA weights as a loadable Stable Diffusion pipeline folder.

    python -m worlds.shapes.export --run runs/shapes --out assets/shapes-sd
    python -m worlds.shapes.export --run runs/style --out assets/shapes-style-sd --card \
        --metrics shapes_eval.json --metrics style_eval.json

Writes the standard Diffusers layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
scheduler/) in safetensors, fp32 by default (fp16 with --fp16), with no safety checker and no
``_name_or_path``, so
``StableDiffusionPipeline.from_pretrained(out)`` works offline. The tokenizer carries the run's
words (``tokenizer/shapes_words.json``: the 2D words, plus the style words for a ``--styles`` run).
``training.json`` records the step and recipe; a hand-written MODEL_CARD.md in ``--out`` is left
untouched unless ``--card`` asks for one filled from the run's ``train.log`` (recipe, compute, VAE
PSNR per style) and from benchmark outputs (``--metrics``: files whose last line is a benchmark's
JSON), together with ``attn_processors.json`` (the sampling settings). ``--card-only`` rewrites
those two files of an existing export, e.g. after measuring it.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline

from .models import build_text_encoder, build_unet, sample_scheduler
from .tokenizer import build_tokenizer, save_vocab_files, style_words

CFG_SCALE, NUM_STEPS = 4.0, 20  # the sampling the shapes models are evaluated with (pipeline.py)


def run_styles(args: dict) -> tuple[str, ...]:
    """The drawing styles a run trained on (runs before ``--styles`` existed: flat)."""
    return tuple(args.get("styles") or ("flat",))


def load_run(run: Path, use_ema: bool = True) -> StableDiffusionPipeline:
    """Pipeline (fp32, CPU) from ``run/unet_ckpt.pt`` and ``run/vae``."""
    ckpt = run / "unet_ckpt.pt"
    if not ckpt.exists() or not (run / "vae" / "config.json").exists():
        raise ValueError(
            f"{run} has no finished VAE and UNet checkpoint; train with worlds.shapes.train"
        )
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    tok = build_tokenizer(style_words(run_styles(state.get("args", {}))))
    unet, te = build_unet(), build_text_encoder(tok)
    unet.load_state_dict(state["unet"])
    te.load_state_dict(state["text_encoder"])
    if use_ema:  # EMA tensors follow the order of unet.parameters() then text_encoder.parameters()
        params = list(unet.parameters()) + list(te.parameters())
        with torch.no_grad():
            for p, e in zip(params, state["ema"], strict=True):
                p.copy_(e.to(p.device))
    # the decoder may have been trained further with the encoder (the latent space) frozen
    vae_dir = run / "vae_decoder" if (run / "vae_decoder" / "config.json").exists() else run / "vae"
    vae = AutoencoderKL.from_pretrained(vae_dir)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sample_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.training_step = state["step"]  # type: ignore[attr-defined]
    pipe.training_args = state.get("args", {})  # type: ignore[attr-defined]
    return pipe


def strip_name_or_path(folder: Path) -> None:
    """Saved configs must not point at the training machine's paths."""
    for cfg in folder.rglob("*.json"):
        data = json.loads(cfg.read_text())
        if isinstance(data, dict) and "_name_or_path" in data:
            del data["_name_or_path"]
            cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def export(run: Path, out: Path, fp16: bool = False) -> Path:
    pipe = load_run(run)
    if fp16:
        pipe.to(torch.float16)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # casting before save_pretrained warns harmlessly
        warnings.simplefilter("ignore")
        pipe.save_pretrained(out, safe_serialization=True)
    # also the classic vocab.json + merges.txt pair, and the word list the prompt check reads
    save_vocab_files(out / "tokenizer", style_words(run_styles(pipe.training_args)))
    strip_name_or_path(out)
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in pipe.training_args.items()}
    record = {"step": pipe.training_step, "args": args}
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------ the card
def run_summary(run: Path) -> dict:
    """What the run's ``train.log`` says: machine, VAE phase (before / after PSNR), UNet phase."""
    path = Path(run) / "train.log"
    if not path.exists():
        raise ValueError(f"{run} has no train.log; give the --out folder of a worlds.shapes.train run")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    vae = [r for r in records if r.get("phase") == "vae"]
    unet = [r for r in records if r.get("phase") == "unet"]
    losses = [r for r in unet if "loss" in r]
    return {
        "machine": next((r for r in reversed(records) if "machine" in r), {}),
        "vae_init": next((r for r in vae if "init_pipeline" in r), None),
        "vae_done": next((r for r in reversed(vae) if r.get("done")), None),
        "unet_init": next((r for r in unet if "init_pipeline" in r), None),
        "unet_done": next((r for r in reversed(unet) if r.get("done")), None),
        "first_loss": losses[0]["loss"] if losses else None,
        "last_loss": losses[-1]["loss"] if losses else None,
    }


def read_metrics(paths: list[Path]) -> dict[str, dict]:
    """{file stem: the JSON object on the file's last line} (benchmarks print their result last)."""
    metrics = {}
    for path in paths:
        lines = Path(path).read_text().strip().splitlines()
        try:
            metrics[Path(path).stem] = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            metrics[Path(path).stem] = None
        if not isinstance(metrics[Path(path).stem], dict):
            raise ValueError(f"--metrics {path}: its last line must be a benchmark's JSON object")
    return metrics


def _numbers(obj: dict, prefix: str = "", depth: int = 2) -> list[tuple[str, float]]:
    """Flattened numeric entries of a benchmark's JSON, ``depth`` levels deep (overall, per method, per
    group of a method)."""
    rows = []
    for k, v in obj.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            rows.append((prefix + k, v))
        elif isinstance(v, dict) and depth > 1:
            rows += _numbers(v, f"{prefix}{k}.", depth - 1)
    return rows


def _figures(metrics: dict[str, dict]) -> str:
    if not metrics:
        return ("Not measured yet. Measure the export, then rewrite this card:\n\n"
                "```bash\npython benchmarks/shapes_eval.py --model DIR > shapes_eval.json\n"
                "python benchmarks/style_eval.py --model DIR > style_eval.json   # once it exists\n"
                "python -m worlds.shapes.export --run RUN --out DIR --card-only "
                "--metrics shapes_eval.json --metrics style_eval.json\n```\n")
    parts = []
    for name, obj in metrics.items():
        rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in _numbers(obj, depth=3))
        head = f"`{name}` (last line of the benchmark's output):\n\n| figure | value |\n| --- | --- |"
        parts.append(f"{head}\n{rows}\n")
    return "\n".join(parts)


def _vae_lines(s: dict, styles: tuple[str, ...]) -> str:
    done, init = s["vae_done"], s["vae_init"]
    if done is None:
        copied = "copied unchanged from the init pipeline (`--init-vae copy`)"
        return copied if s["unet_init"] else "not logged"
    per = ", ".join(f"{st} {done[f'psnr_{st}_db']} dB" for st in styles if f"psnr_{st}_db" in done)
    before = ", ".join(f"{st} {init[f'psnr_{st}_db']} dB" for st in styles
                       if init and f"psnr_{st}_db" in init)
    start = f"fine-tuned from `{init['init_pipeline']}/vae`" if init else "trained from scratch"
    return (f"{start} for {done['steps']} steps ({done.get('seconds', '?')} s, stopped by "
            f"{done.get('stopped', 'steps')}); held-out PSNR {done['psnr_db']} dB"
            + (f" (per style: {per}" + (f"; before: {before})" if before else ")") if per else "")
            + f", scaling_factor {done['scaling_factor']}; AdamW {done.get('lr', '?')} with "
            f"{done.get('warmup', '?')} warm-up steps, batch {done.get('batch', '?')}")


def card_text(pipe: StableDiffusionPipeline, summary: dict, metrics: dict[str, dict], name: str) -> str:
    """MODEL_CARD.md of an export, every figure taken from the run or the benchmarks."""
    hp, styles = pipe.training_args, run_styles(pipe.training_args)
    words = style_words(styles)
    done, uinit, machine = summary["unet_done"] or {}, summary["unet_init"], summary["machine"]
    mparams = {k: sum(p.numel() for p in m.parameters()) / 1e6
               for k, m in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder), ("vae", pipe.vae))}
    drawn = next((st for st in styles if st != "flat"), None)
    example = "a red circle and a blue square" + (f", {drawn} style" if drawn else "")
    start = (f"fine-tuned from `{uinit['init_pipeline']}` (trained {uinit.get('init_step')} steps)"
             if uinit else "trained from scratch")
    new_words = f"; the new words {uinit['new_words']} start from fresh embeddings" if uinit and \
        uinit.get("new_words") else ""
    losses = (f" Logged loss {summary['first_loss']} at the start, {summary['last_loss']} at the end."
              if summary["first_loss"] is not None else "")
    budget = (f", decay to 0.1x over the last {hp.get('decay_tail')} of a {hp['time_limit']:.0f} s budget"
              if hp.get("time_limit") else "")
    return f"""# {name}: a small Stable Diffusion of the shapes world{' in drawing styles' if drawn else ''}

**Purpose.** A verifiable stand-in for real checkpoints, not an art model: the exact Stable Diffusion
1.x component classes, 64x64 scenes of 1-3 coloured circles, squares and triangles that
`worlds.shapes.detector` (objects) and `worlds.shapes.style_classifier` (drawing style) score.
Styles: {', '.join(styles)} (`worlds/shapes/styles.py`); the caption names the style
("{example}"; no style words = flat).

```python
from worlds.shapes.pipeline import load_pipeline   # or StableDiffusionPipeline.from_pretrained
pipe = load_pipeline("assets/{name}")   # refuses words outside this model's vocabulary
image = pipe("{example}", num_inference_steps={NUM_STEPS}, guidance_scale={CFG_SCALE}).images[0]
```

## Data
`worlds/shapes/data.py`, seed {hp.get('seed')}: the flat scene stream of `assets/shapes-sd`; each
scene's style drawn uniformly from ({', '.join(styles)}) by a generator of its own (so the objects are
those of the flat stream). Illustration styles are drawn on white paper. Latent cache:
{hp.get('scenes')} scenes. Vocabulary ({len(words)} words, one token each; `tokenizer/shapes_words.json`):
{', '.join(words)}.

## Architecture (fp32 safetensors)
Same classes and configs as `assets/shapes-sd`: CLIPTextModel ({mparams['text_encoder']:.2f} M),
AutoencoderKL ({mparams['vae']:.2f} M, scaling_factor {pipe.vae.config.scaling_factor:.4f}),
UNet2DConditionModel ({mparams['unet']:.2f} M, attn2 at 16x16, 8x8, 4x4), DDIM scheduler; sample
with {NUM_STEPS} steps and CFG {CFG_SCALE} (`attn_processors.json`).

## Training (`python -m worlds.shapes.train`, reproduced from `training.json`)
Machine: {machine.get('machine', '?')} (torch {machine.get('torch', '?')}), {machine.get('time', '?')}.
1. **VAE**: {_vae_lines(summary, styles)}; L1 + MSE + 1e-7 KL, 32x32 crops for the first 75 % of
   the phase.
2. **UNet + text encoder**: {start}{new_words}; {done.get('steps', '?')} steps at batch
   {hp.get('batch')} ({done.get('seconds', '?')} s, {done.get('steps_per_s', '?')} steps/s, stopped by
   {done.get('stopped', '?')}), AdamW {hp.get('lr')} (warm-up {hp.get('warmup')}{budget}), min-SNR-5
   epsilon loss + {hp.get('grounding_weight')} x token grounding, {hp.get('empty_prob')} empty
   captions, EMA {hp.get('ema')} (shipped).{losses}

## Figures
{_figures(metrics)}
## Limits
Trained briefly (compute above), on synthetic scenes only; it knows exactly the words above.
`assets/shapes-sd` and its figures are unchanged by this model.
"""


def write_card(run: Path, out: Path, metrics: dict[str, dict]) -> None:
    """MODEL_CARD.md and attn_processors.json (sampling settings) of the export ``out`` of ``run``."""
    pipe = load_run(run)
    (out / "MODEL_CARD.md").write_text(card_text(pipe, run_summary(run), metrics, out.name))
    settings = {"description": "Sampling settings the shapes models are evaluated with (MODEL_CARD.md); "
                "no technique was tuned on this model yet.",
                "sampling": {"num_inference_steps": NUM_STEPS, "guidance_scale": CFG_SCALE}}
    (out / "attn_processors.json").write_text(json.dumps(settings, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("runs/shapes"))
    p.add_argument("--out", type=Path, default=Path("assets/shapes-sd"))
    p.add_argument("--fp16", action="store_true",
                   help="halve the weights (default fp32, so a plain from_pretrained runs on CPU)")
    p.add_argument("--card", action="store_true",
                   help="also write MODEL_CARD.md and attn_processors.json filled from the run")
    p.add_argument("--card-only", action="store_true",
                   help="rewrite MODEL_CARD.md and attn_processors.json of the existing export --out")
    p.add_argument("--metrics", type=Path, action="append", default=[], metavar="FILE",
                   help="a benchmark's output (JSON on its last line) for the card's figures; repeatable")
    args = p.parse_args(argv)
    metrics = read_metrics(args.metrics)
    if args.card_only:
        if not (args.out / "model_index.json").exists():
            raise ValueError(f"--card-only needs an exported pipeline in --out; {args.out} has no "
                             "model_index.json (export first, without --card-only)")
        out = args.out
    else:
        out = export(args.run, args.out, fp16=args.fp16)
    if args.card or args.card_only:
        write_card(args.run, out, metrics)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(json.dumps({"out": str(out), "mb": round(size / 2**20, 2)}))


if __name__ == "__main__":
    main()
