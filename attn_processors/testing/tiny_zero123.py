"""Tiny random-weight Zero-1-to-3 components, built from configs offline, and the public folder layout.

The structure is Zero-1-to-3's (Liu et al. 2023) at a toy width: an 8-channel ``UNet2DConditionModel``
with SD 1.x's block layout (so decoder self-attention sits at ``up_blocks.2`` / ``up_blocks.3``), a
``CLIPVisionModelWithProjection``, a ``cc_projection`` linear on [image embedding, d polar,
sin d azimuth, cos d azimuth, d radius], an ``AutoencoderKL`` and DDIM scaled-linear 0.00085-0.012.

:func:`save_tiny_zero123` writes the folder layout of the public Diffusers-format checkpoints
(``kxic/zero123-165000`` and kin): ``model_index.json`` naming the community pipeline classes,
``unet/``, ``vae/``, ``image_encoder/``, ``cc_projection/`` (``projection.weight``/``.bias``),
``feature_extractor/`` and a ``scheduler/`` with the wrong betas ``convert_zero123_to_diffusers.py``
writes (0.02 / 0.085), which a correct loader must ignore.

>>> parts = tiny_zero123_parts()
>>> parts["unet"].config.in_channels, parts["cc_projection"].in_features
(8, 36)
>>> import torch
>>> with torch.device("meta"):
...     unet = zero123_unet("sd")                   # the real Zero-1-to-3 UNet, no memory
>>> unet.config.block_out_channels
(320, 640, 1280, 1280)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

EMBED = 32  # tiny CLIP embedding = cross-attention width (Zero-1-to-3: 768)
POSE_DIM = 4  # [d polar (rad), sin d azimuth, cos d azimuth, d radius]
IMAGE = 16  # tiny image side in pixels (Zero-1-to-3: 256)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
WRONG_BETAS = {"beta_start": 0.02, "beta_end": 0.085}  # what the conversion script falls back to

# cvlab-columbia/zero123 configs/sd-objaverse-finetune-c_concat-256.yaml as a Diffusers UNet config
SD_UNET = dict(sample_size=32, in_channels=8, out_channels=4, cross_attention_dim=768, attention_head_dim=8,
               block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
TINY_UNET = dict(sample_size=IMAGE // 2, in_channels=8, out_channels=4, cross_attention_dim=EMBED,
                 attention_head_dim=2, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                 norm_num_groups=8)


def zero123_unet(size: str = "tiny") -> UNet2DConditionModel:
    """Zero-1-to-3's UNet: ``"sd"`` real size (build it under ``torch.device("meta")``) or ``"tiny"``."""
    if size not in ("sd", "tiny"):
        raise ValueError(f"size={size!r}; use 'sd' (real size, on meta) or 'tiny'")
    return UNet2DConditionModel(**(SD_UNET if size == "sd" else TINY_UNET))  # SD 1.x block types


def tiny_zero123_parts(seed: int = 0) -> dict[str, Any]:
    """{"unet", "vae", "image_encoder", "cc_projection"} with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    unet = zero123_unet("tiny")
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                        norm_num_groups=8, sample_size=IMAGE)
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=EMBED, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
        patch_size=8, projection_dim=EMBED))
    cc = torch.nn.Linear(EMBED + POSE_DIM, EMBED)
    parts = {"unet": unet, "vae": vae, "image_encoder": enc, "cc_projection": cc}
    for m in parts.values():
        m.eval()
    return parts


def model_index() -> dict[str, Any]:
    """The public checkpoints' model_index.json (community pipeline class names)."""
    return {"_class_name": "Zero1to3StableDiffusionPipeline", "_diffusers_version": "0.19.0.dev0",
            "cc_projection": ["pipeline_zero1to3", "CCProjection"],
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
            "requires_safety_checker": True,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}


def save_tiny_zero123(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny model in the public Diffusers-format Zero-1-to-3 layout; returns the folder."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    parts = tiny_zero123_parts(seed)
    for name in ("unet", "vae", "image_encoder"):
        parts[name].save_pretrained(out / name)
    cc: torch.nn.Linear = parts["cc_projection"]
    (out / "cc_projection").mkdir(exist_ok=True)
    save_file({"projection.weight": cc.weight.detach().contiguous(), "projection.bias": cc.bias.detach()},
              out / "cc_projection" / "diffusion_pytorch_model.safetensors")
    _json(out / "cc_projection" / "config.json", {"_class_name": "CCProjection", "_diffusers_version":
                                                  "0.19.0.dev0", "in_channel": cc.in_features,
                                                  "out_channel": cc.out_features})
    _json(out / "feature_extractor" / "preprocessor_config.json", {
        "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_normalize": True,
        "do_resize": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "image_processor_type": "CLIPImageProcessor", "resample": 3, "size": {"shortest_edge": 224}})
    _json(out / "scheduler" / "scheduler_config.json", {
        "_class_name": "DDIMScheduler", "_diffusers_version": "0.19.0.dev0", **WRONG_BETAS,
        "beta_schedule": "scaled_linear", "clip_sample": False, "num_train_timesteps": 1000,
        "prediction_type": "epsilon", "set_alpha_to_one": False, "steps_offset": 1, "trained_betas": None})
    _json(out / "model_index.json", model_index())
    return out


def _json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
