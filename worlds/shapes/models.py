"""Configs of the shapes model: the exact Stable Diffusion 1.x component classes, scaled down.

Cross-attention (``attn2``) sits at three UNet resolutions of the 16x16 latent: 16x16 (down 0,
up 2), 8x8 (down 1, up 1) and 4x4 (mid), so resolution-based layer selection has something real
to act on. Sizes are the smallest that learned the world in our measurements (UNet 3.2 M, VAE 0.95 M, text
encoder 0.7 M parameters; assets/shapes-sd/MODEL_CARD.md).
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

IMAGE_SIZE = 64
LATENT_SIZE = 16  # VAE downsamples x4
TEXT_DIM = 128
# DDPM training schedule of SD 1.x (scaled_linear 0.00085-0.012, 1000 steps, epsilon).
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def build_text_encoder(tok: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=TEXT_DIM,
        intermediate_size=4 * TEXT_DIM,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=tok.model_max_length,
        hidden_act="quick_gelu",
        projection_dim=TEXT_DIM,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=IMAGE_SIZE,
    )


def build_unet(
    block_out_channels: tuple[int, ...] = (32, 64, 128), *, in_channels: int = 4,
    cross_attention_dim: int = TEXT_DIM,
) -> UNet2DConditionModel:
    """Cross-attention at 16x16, 8x8 and 4x4 of the 16x16 latent; `in_channels` 8 for Zero-1-to-3."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=block_out_channels,
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,  # Diffusers' legacy name: 4 heads per attention layer
        norm_num_groups=32,
    )


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE, prediction_type="epsilon", clip_sample=False)


def sample_scheduler() -> DDIMScheduler:
    """The scheduler shipped for sampling (DDIM, 20 steps in the evaluation)."""
    return DDIMScheduler(
        **SCHEDULE, prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
