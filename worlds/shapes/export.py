"""Export a training run's EMA weights as a loadable Stable Diffusion pipeline folder.

    python -m worlds.shapes.export --run runs/shapes --out assets/shapes-sd

Writes the standard Diffusers layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
scheduler/) in safetensors, fp32 by default (fp16 with --fp16), with no safety checker and no
``_name_or_path``, so
``StableDiffusionPipeline.from_pretrained(out)`` works offline. ``training.json`` records the step
and recipe; a hand-written MODEL_CARD.md in ``--out`` is left untouched.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline

from .models import build_text_encoder, build_unet, sample_scheduler
from .tokenizer import build_tokenizer, save_vocab_files


def load_run(run: Path, use_ema: bool = True) -> StableDiffusionPipeline:
    """Pipeline (fp32, CPU) from ``run/unet_ckpt.pt`` and ``run/vae``."""
    ckpt = run / "unet_ckpt.pt"
    if not ckpt.exists() or not (run / "vae" / "config.json").exists():
        raise ValueError(
            f"{run} has no finished VAE and UNet checkpoint; train with worlds.shapes.train"
        )
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    tok = build_tokenizer()
    unet, te = build_unet(), build_text_encoder(tok)
    unet.load_state_dict(state["unet"])
    te.load_state_dict(state["text_encoder"])
    if use_ema:  # EMA tensors follow the order of unet.parameters() then text_encoder.parameters()
        params = list(unet.parameters()) + list(te.parameters())
        with torch.no_grad():
            for p, e in zip(params, state["ema"], strict=True):
                p.copy_(e)
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
    save_vocab_files(out / "tokenizer")  # also the classic vocab.json + merges.txt pair
    strip_name_or_path(out)
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in pipe.training_args.items()}
    record = {"step": pipe.training_step, "args": args}
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("runs/shapes"))
    p.add_argument("--out", type=Path, default=Path("assets/shapes-sd"))
    p.add_argument("--fp16", action="store_true",
                   help="halve the weights (default fp32, so a plain from_pretrained runs on CPU)")
    args = p.parse_args(argv)
    out = export(args.run, args.out, fp16=args.fp16)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(json.dumps({"out": str(out), "mb": round(size / 2**20, 2)}))


if __name__ == "__main__":
    main()
