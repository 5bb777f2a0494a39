"""Latents to the caller's output type, shared by the pipelines that run their own loop."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor


def decode_latents(vae: AutoencoderKL, image_processor: VaeImageProcessor, z: torch.Tensor,
                   output_type: str) -> Any:
    """``output_type`` "latent" returns ``z`` untouched; otherwise VAE-decoded (``z`` / scaling_factor,
    as Diffusers' pipelines) and post-processed to "pil" | "np" | "pt"."""
    if output_type == "latent":
        return z
    image = vae.decode(z.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return image_processor.postprocess(image, output_type=output_type, do_denormalize=[True] * image.shape[0])
