"""Configurations of the embedded moving-shapes Wan model, shared by training, export and tests.

Geometry (why these numbers): 9 frames of 64x64 RGB; the VAE compresses 2x in time and 4x in space
(Wan: 4x and 8x), giving latents (8, 5, 16, 16). A tiny AutoencoderKLWan at Wan's 4x temporal
compression did not keep the motion inside a 4-frame chunk after ~1,100 CPU steps (objects froze near
their first-frame position), so the second temporal down stage is off; 4x in space keeps a 14-22 px
shape at 4-5 latent pixels. The transformer patchifies (1, 2, 2), so the 3D
self-attention sees F=5 latent frames x 64 tokens = 320 tokens: enough frames for a 5x5 grid of
frame tiles and enough tokens per frame for spatial structure inside each tile.
"""

from __future__ import annotations

NUM_FRAMES = 9
SIZE = 64
Z_DIM = 8
FLOW_SHIFT = 3.0

VAE_CONFIG: dict = {
    "base_dim": 16,
    "z_dim": Z_DIM,
    "dim_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [True, False],
    "latents_mean": [0.0] * Z_DIM,  # replaced by the measured latent statistics before the cache
    "latents_std": [1.0] * Z_DIM,
    "scale_factor_spatial": 4,
    "scale_factor_temporal": 2,
}

TEXT_CONFIG: dict = {
    "d_model": 128,
    "d_kv": 32,
    "d_ff": 256,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 16,
    "relative_attention_max_distance": 32,
    "dropout_rate": 0.0,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}

TRANSFORMER_CONFIG: dict = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": Z_DIM,
    "out_channels": Z_DIM,
    "text_dim": TEXT_CONFIG["d_model"],
    "freq_dim": 64,
    "ffn_dim": 512,
    "num_layers": 4,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}


def make_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**VAE_CONFIG)


def make_text_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, **TEXT_CONFIG))


def make_transformer():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(**TRANSFORMER_CONFIG)


def make_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=FLOW_SHIFT)
