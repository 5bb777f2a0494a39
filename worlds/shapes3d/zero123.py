"""The novel-view model as a folder: export from a training run, load its parts, sample with them.

    python -m worlds.shapes3d.zero123 --run runs/zero123 --out assets/shapes3d-zero123

The folder has the layout of the public Diffusers-format Zero-1-to-3 checkpoints
(``model_index.json``, ``unet/``, ``image_encoder/``, ``cc_projection/``, ``vae/``,
``scheduler/``), in safetensors, with ``feature_extractor`` recorded as absent: images are
preprocessed in torch (``models.clip_preprocess``). ``training.json`` holds the step and recipe,
including ``input_latent`` (how the source latent enters the UNet). Every part loads with its
class's plain ``from_pretrained``; ``load_parts`` does exactly that, and ``sample`` is a plain DDIM
loop with Zero-1-to-3's classifier-free guidance (the unconditional branch zeroes both the
cross-attention token and the input latent), used by ``benchmarks/novel_view_eval.py``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPVisionModelWithProjection

from .models import (
    CCProjection,
    build_cc_projection,
    build_image_encoder,
    build_zero123_unet,
    condition_tokens,
    sample_scheduler,
)

PARTS = ("unet", "image_encoder", "cc_projection", "vae", "scheduler")


@dataclass
class Zero123Parts:
    unet: UNet2DConditionModel
    image_encoder: CLIPVisionModelWithProjection
    cc_projection: CCProjection
    vae: AutoencoderKL
    scheduler: DDIMScheduler
    input_latent: str = "raw"  # "raw": posterior mean as is (Zero-1-to-3); "scaled": x scaling_factor

    def to(self, device: torch.device | str) -> Zero123Parts:
        for m in (self.unet, self.image_encoder, self.cc_projection, self.vae):
            m.to(device)
        return self


def model_index() -> dict:
    return {"_class_name": "Zero1to3StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
            "vae": ["diffusers", "AutoencoderKL"],
            "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
            "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDIMScheduler"],
            "cc_projection": ["pipeline_zero1to3", "CCProjection"],  # the public layout's name
            "feature_extractor": [None, None], "safety_checker": [None, None],
            "requires_safety_checker": False}


def export(run: Path, out: Path) -> Path:
    """``run/unet_ckpt.pt`` (EMA weights) + ``run/vae`` -> a Zero-1-to-3 folder at ``out``."""
    ckpt = run / "unet_ckpt.pt"
    if not ckpt.exists() or not (run / "vae" / "config.json").exists():
        raise ValueError(f"{run} has no vae/ and unet_ckpt.pt; train with worlds.shapes3d.train_zero123")
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    earlier = init_stage(state)  # before writing anything: a lost init is one error and no half folder
    unet, enc, cc = build_zero123_unet(), build_image_encoder(), build_cc_projection()
    params = [p for m in (unet, enc, cc) for p in m.parameters()]  # the EMA's order (train_zero123)
    with torch.no_grad():
        for p, e in zip(params, state["ema"], strict=True):
            p.copy_(e)
    out.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL.from_pretrained(run / "vae")
    for name, module in (("unet", unet), ("image_encoder", enc), ("cc_projection", cc), ("vae", vae),
                         ("scheduler", sample_scheduler())):
        module.save_pretrained(out / name)
    (out / "model_index.json").write_text(json.dumps(model_index(), indent=2) + "\n")
    record = {"step": state["step"], "input_latent": state["args"]["input_latent"], "args": state["args"]}
    if earlier is not None:
        record["init_record"] = earlier
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def init_stage(state: dict) -> dict | None:
    """The ``training.json`` of the model a run started from (``--init``), kept as the exported
    model's lineage. Why: the card must count the earlier stage's recipe and steps too. Runs saved
    before the checkpoint kept it read the init folder, which must then still hold that model."""
    if state.get("init_record") is not None:
        return state["init_record"]
    init = state["args"].get("init")
    if init is None:
        return None
    path = Path(init) / "training.json"
    if not path.is_file():
        raise ValueError(f"the run started from --init {init}, whose training.json is gone; restore that "
                         "folder before exporting, so the model card can name the earlier stage")
    record = json.loads(path.read_text())
    if record.get("args", {}).get("out") == state["args"].get("out"):
        raise ValueError(f"--init {init} now holds this run's own export, not the model it started from; "
                         "restore that model there before exporting again")
    return record


def load_parts(folder: str | Path, device: str | torch.device = "cpu") -> Zero123Parts:
    """Each part with its own ``from_pretrained``, offline; ValueError naming missing parts."""
    folder = Path(folder)
    missing = [p for p in PARTS if not any((folder / p).glob("*config.json"))]
    if missing:
        raise ValueError(f"{folder} lacks {missing}; export a run with `python -m worlds.shapes3d.zero123 "
                         "--run RUN --out FOLDER`")
    record = folder / "training.json"
    input_latent = json.loads(record.read_text()).get("input_latent", "raw") if record.exists() else "raw"
    parts = Zero123Parts(
        UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True),
        CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder", local_files_only=True),
        CCProjection.from_pretrained(folder / "cc_projection", local_files_only=True),
        AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True),
        DDIMScheduler.from_pretrained(folder / "scheduler", local_files_only=True),
        input_latent,
    )
    for m in (parts.unet, parts.image_encoder, parts.cc_projection, parts.vae):
        m.eval()
    return parts.to(device)


@torch.no_grad()
def sample(parts: Zero123Parts, images: torch.Tensor, poses: torch.Tensor, steps: int = 50, cfg: float = 3.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Source images (B, 3, H, W) in [-1, 1] and relative poses (B, 4) -> target views (B, 3, H, W)."""
    if images.ndim != 4 or poses.shape != (images.shape[0], 4):
        raise ValueError(f"need images (B, 3, H, W) and poses (B, 4), got {tuple(images.shape)} and "
                         f"{tuple(poses.shape)}")
    device = parts.unet.device
    images, poses = images.to(device), poses.to(device)
    sf = parts.vae.config.scaling_factor
    cond_latent = parts.vae.encode(images).latent_dist.mode()  # (B, 4, h, w)
    if parts.input_latent == "scaled":
        cond_latent = cond_latent * sf
    tokens = condition_tokens(parts.image_encoder, parts.cc_projection, images, poses)  # (B, 1, D)
    tokens2 = torch.cat([torch.zeros_like(tokens), tokens])  # unconditional first
    latent2 = torch.cat([torch.zeros_like(cond_latent), cond_latent])
    sched = parts.scheduler
    sched.set_timesteps(steps, device=device)
    noise_device = generator.device if generator is not None else device
    latents = torch.randn(cond_latent.shape, generator=generator, device=noise_device)
    latents = latents.to(device) * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.scale_model_input(torch.cat([latents, latents]), t)
        eps_u, eps_c = parts.unet(torch.cat([x, latent2], 1), t, tokens2).sample.chunk(2)
        latents = sched.step(eps_u + cfg * (eps_c - eps_u), t, latents).prev_sample
    return parts.vae.decode(latents / sf).sample.clamp(-1, 1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("runs/zero123"))
    p.add_argument("--out", type=Path, default=Path("assets/shapes3d-zero123"))
    args = p.parse_args(argv)
    out = export(args.run, args.out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(json.dumps({"out": str(out), "mb": round(size / 2**20, 2)}))


if __name__ == "__main__":
    main()
