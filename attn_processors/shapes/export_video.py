"""Export a moving-shapes training run as a standard, offline-loadable ``WanPipeline`` folder.

    python -m attn_processors.shapes.export_video --run runs/video --out assets/moving-shapes-wan

Weights are saved in fp32 safetensors (the whole model is a few MB, and fp32 keeps CPU inference
exact); ``_name_or_path`` is stripped from the configs so nothing points at the training machine.
"""

from __future__ import annotations

import argparse
import json
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

    from attn_processors.shapes import video_model as vm

    folder = Path(folder)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder.to("cpu"),
                       vae=vae.to("cpu"), scheduler=vm.make_scheduler(),
                       transformer=transformer.to("cpu"))
    pipe.save_pretrained(folder, safe_serialization=True)
    _strip_name_or_path(folder)
    if meta is not None:
        (folder / "training_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return pipe


def load_run(run: Path, device: str = "cpu"):
    """(vae, text_encoder, tokenizer, transformer) from a run folder, using the EMA weights."""
    from attn_processors.shapes import video_model as vm
    from attn_processors.shapes.video_tokenizer import build_video_tokenizer

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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("runs/video"))
    p.add_argument("--out", type=Path, default=Path("assets/moving-shapes-wan"))
    args = p.parse_args(argv)
    if not (args.run / "dit.pt").exists():
        raise ValueError(f"{args.run} has no dit.pt checkpoint; train first with attn_processors.shapes.train_video")
    vae, text_encoder, tokenizer, transformer, step = load_run(args.run)
    export_pipeline(args.out, vae, text_encoder, tokenizer, transformer, meta={"dit_steps": step})
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(json.dumps({"out": str(args.out), "dit_steps": step, "megabytes": round(size / 2**20, 2)}))


if __name__ == "__main__":
    main()
