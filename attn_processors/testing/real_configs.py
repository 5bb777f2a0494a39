"""Real-size denoiser configs written out by hand (no downloads), for `meta`-device layer checks.

>>> import torch
>>> with torch.device("meta"):
...     unet = real_denoiser("sd15")        # 860M parameters, no memory
>>> len(unet.attn_processors)
32
"""

from __future__ import annotations

from typing import Any

import torch

REAL = ("sd15", "sdxl", "wan2.1-1.3b", "cogvideox-2b", "flux-dev")

CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    # runwayml/stable-diffusion-v1-5 unet/config.json: constructor defaults + 768-d CLIP text
    "sd15": ("UNet2DConditionModel", dict(cross_attention_dim=768, sample_size=64)),
    # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
    "sdxl": (
        "UNet2DConditionModel",
        dict(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            cross_attention_dim=2048,
        ),
    ),
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json
    "wan2.1-1.3b": (
        "WanTransformer3DModel",
        dict(
            patch_size=(1, 2, 2),
            num_attention_heads=12,
            attention_head_dim=128,
            in_channels=16,
            out_channels=16,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=8960,
            num_layers=30,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
        ),
    ),
    # THUDM/CogVideoX-2b transformer/config.json
    "cogvideox-2b": (
        "CogVideoXTransformer3DModel",
        dict(
            num_attention_heads=30,
            attention_head_dim=64,
            in_channels=16,
            out_channels=16,
            num_layers=30,
            text_embed_dim=4096,
            time_embed_dim=512,
            sample_width=90,
            sample_height=60,
            sample_frames=49,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=226,
        ),
    ),
    # black-forest-labs/FLUX.1-dev transformer/config.json
    "flux-dev": (
        "FluxTransformer2DModel",
        dict(
            patch_size=1,
            in_channels=64,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        ),
    ),
}


def real_denoiser(name: str) -> torch.nn.Module:
    """Build the real-size denoiser `name` (construct it under `torch.device("meta")` to keep it free)."""
    import diffusers

    if name not in CONFIGS:
        raise ValueError(f"unknown real config {name!r}; choose from {REAL}")
    cls, kwargs = CONFIGS[name]
    return getattr(diffusers, cls)(**kwargs).eval()
