"""Tiny random-weight, fully offline Diffusers models and pipelines for tests and benchmarks.

Shapes follow the real families (their layer types, token orders and norms, only smaller): an
SD1.5-, SDXL-, CogVideoX-, Wan- and Flux-shaped denoiser, each with a stock pipeline whose
tokenizers are built in memory. Every component is put in `.eval()` (T5 dropout otherwise makes
runs differ) and every builder is seeded, so two builds are bit-identical.

    >>> from attn_processors.testing.tiny import tiny_pipeline
    >>> pipe = tiny_pipeline("sd15")                                   # doctest: +SKIP
    >>> image = pipe("a red cat", num_inference_steps=2, height=64, width=64).images[0]   # doctest: +SKIP
"""

from __future__ import annotations

import string
from typing import Any

import torch

FAMILIES = ("sd15", "sdxl", "cogvideox", "wan", "flux")
WORDS = (
    "a",
    "photo",
    "of",
    "cat",
    "dog",
    "the",
    "red",
    "blue",
    "green",
    "car",
    "on",
    "in",
    "ball",
    "box",
    "square",
    "circle",
    "triangle",
    "left",
    "right",
    "and",
    "with",
    "walking",
    "video",
    "big",
    "small",
)


def eval_all(pipe: Any) -> Any:
    """Put every nn.Module component of a pipeline in eval mode (determinism: no dropout)."""
    for c in pipe.components.values():
        if isinstance(c, torch.nn.Module):
            c.eval()
    return pipe


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte map; the value order fixes token ids."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def tiny_clip_tokenizer(words: tuple[str, ...] = WORDS, max_length: int = 77) -> Any:
    """A CLIP BPE tokenizer built in memory whose `words` are single tokens (ids < 1000)."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for w in words:  # whole-word merges -> single tokens
        sym = list(w[:-1]) + [w[-1] + "</w>"]
        while len(sym) > 1:
            merges.append((sym[0], sym[1]))
            sym = [sym[0] + sym[1]] + sym[2:]
            if sym[0] not in vocab:
                vocab.append(sym[0])
    merges = list(dict.fromkeys(merges))
    return CLIPTokenizer(
        vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=max_length
    )


def tiny_t5_tokenizer(words: tuple[str, ...] = WORDS, max_length: int = 512) -> Any:
    """A T5/UMT5-style Unigram tokenizer built in memory."""
    from transformers import T5Tokenizer

    v = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [("▁" + w, -1.0) for w in words]
    v += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    v += [("▁" + c, -4.0) for c in string.ascii_letters]
    seen: set[str] = set()
    v = [p for p in v if not (p[0] in seen or seen.add(p[0]))]
    return T5Tokenizer(vocab=v, extra_ids=0, model_max_length=max_length)


def _clip_text(projection: bool = False, hidden: int = 32) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=1000,
        projection_dim=32,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _t5(umt5: bool = False) -> Any:
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kw = dict(
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        vocab_size=1000,
    )
    return UMT5EncoderModel(UMT5Config(**kw)) if umt5 else T5EncoderModel(T5Config(**kw))


def tiny_denoiser(family: str, seed: int = 0) -> torch.nn.Module:
    """The tiny denoiser of `family` (sd15, sdxl, sd3, cogvideox, wan, wan_i2v, flux), in eval mode."""
    from diffusers import (
        CogVideoXTransformer3DModel,
        FluxTransformer2DModel,
        UNet2DConditionModel,
        WanTransformer3DModel,
    )

    torch.manual_seed(seed)
    if family == "sd15":
        m = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=16,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
    elif family == "sdxl":
        m = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=16,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=80,
            cross_attention_dim=64,
        )
    elif family == "cogvideox":
        m = CogVideoXTransformer3DModel(
            num_attention_heads=4,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            time_embed_dim=2,
            text_embed_dim=32,
            num_layers=1,
            sample_width=2,
            sample_height=2,
            sample_frames=9,
            patch_size=2,
            temporal_compression_ratio=4,
            max_text_seq_length=16,
        )
    elif family in ("wan", "wan_i2v"):
        extra = dict(image_dim=32, added_kv_proj_dim=24) if family == "wan_i2v" else {}
        m = WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=12,
            in_channels=16,
            out_channels=16,
            text_dim=32,
            freq_dim=256,
            ffn_dim=32,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
            **extra,
        )
    elif family == "sd3":
        from diffusers import SD3Transformer2DModel

        m = SD3Transformer2DModel(
            sample_size=8,
            patch_size=1,
            in_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            caption_projection_dim=16,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            out_channels=4,
            qk_norm="rms_norm",
        )
    elif family == "flux":
        m = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            axes_dims_rope=[4, 4, 8],
        )
    else:
        raise ValueError(f"unknown tiny family {family!r}; choose from {FAMILIES + ('sd3', 'wan_i2v')}")
    return m.eval()


def denoiser_inputs(family: str, model: torch.nn.Module, seed: int = 1) -> dict[str, Any]:
    """Keyword inputs for one forward of `tiny_denoiser(family)`, with a text mask or RoPE where the
    family has one, so the identity tests cover those paths."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    if family in ("sd15", "sdxl"):
        ctx = 32 if family == "sd15" else 64
        mask = torch.ones(2, 8)
        mask[0, 6:] = 0  # padded text tokens in row 0: exercises prepare_attention_mask
        kw: dict[str, Any] = dict(
            sample=rnd(2, 4, 16, 12),
            timestep=torch.tensor([500, 500]),
            encoder_hidden_states=rnd(2, 8, ctx),
            encoder_attention_mask=mask,
            return_dict=False,
        )
        if family == "sdxl":
            kw["added_cond_kwargs"] = {"text_embeds": rnd(2, 32), "time_ids": rnd(2, 6)}
        return kw
    if family == "cogvideox":
        n_vid, d = 3 * 1 * 1, 8  # 3 latent frames of a 2x2 latent, patch 2 -> 1 token each
        ang = rnd(n_vid, d // 2).repeat_interleave(2, dim=-1)
        return dict(
            hidden_states=rnd(2, 3, 4, 2, 2),
            encoder_hidden_states=rnd(2, 16, 32),
            timestep=torch.tensor([500, 500]),
            image_rotary_emb=(ang.cos(), ang.sin()),
            return_dict=False,
        )
    if family in ("wan", "wan_i2v"):
        kw = dict(
            hidden_states=rnd(1, 16, 3, 8, 8),
            timestep=torch.tensor([500]),
            encoder_hidden_states=rnd(1, 512 if family == "wan_i2v" else 16, 32),
            return_dict=False,
        )
        if family == "wan_i2v":
            kw["encoder_hidden_states_image"] = rnd(1, 5, 32)
        return kw
    if family == "sd3":
        return dict(
            hidden_states=rnd(2, 4, 8, 8),
            encoder_hidden_states=rnd(2, 8, 32),
            pooled_projections=rnd(2, 32),
            timestep=torch.tensor([500, 500]),
            return_dict=False,
        )
    if family == "flux":
        h = w = 4
        img_ids = (
            torch.stack(
                torch.meshgrid(torch.zeros(1), torch.arange(float(h)), torch.arange(float(w)), indexing="ij"),
                -1,
            )
            .reshape(-1, 3)
            .float()
        )
        return dict(
            hidden_states=rnd(1, h * w, 16),
            encoder_hidden_states=rnd(1, 8, 32),
            pooled_projections=rnd(1, 32),
            timestep=torch.tensor([0.5]),
            img_ids=img_ids,
            txt_ids=torch.zeros(8, 3),
            return_dict=False,
        )
    raise ValueError(f"unknown tiny family {family!r}")


def tiny_pipeline(family: str, seed: int = 0) -> Any:
    """A stock Diffusers pipeline of `family` with tiny random weights, ready to call offline."""
    import diffusers as d

    torch.manual_seed(seed)
    if family in ("sd15", "sdxl"):
        unet = tiny_denoiser(family, seed)
        vae = d.AutoencoderKL(
            block_out_channels=[32, 64],
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
        )
        betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
        if family == "sd15":
            pipe = d.StableDiffusionPipeline(
                vae=vae,
                text_encoder=_clip_text(),
                tokenizer=tiny_clip_tokenizer(),
                unet=unet,
                scheduler=d.DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **betas),
                safety_checker=None,
                feature_extractor=None,
                image_encoder=None,
                requires_safety_checker=False,
            )
        else:
            pipe = d.StableDiffusionXLPipeline(
                vae=vae,
                text_encoder=_clip_text(),
                tokenizer=tiny_clip_tokenizer(),
                text_encoder_2=_clip_text(projection=True),
                tokenizer_2=tiny_clip_tokenizer(),
                unet=unet,
                scheduler=d.EulerDiscreteScheduler(timestep_spacing="leading", **betas),
            )
    elif family == "cogvideox":
        vae = d.AutoencoderKLCogVideoX(
            in_channels=3,
            out_channels=3,
            down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4,
            block_out_channels=(8,) * 4,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=4,
        )
        pipe = d.CogVideoXPipeline(
            tokenizer=tiny_t5_tokenizer(),
            text_encoder=_t5(),
            vae=vae,
            transformer=tiny_denoiser("cogvideox", seed),
            scheduler=d.CogVideoXDDIMScheduler(),
        )
    elif family == "wan":
        vae = d.AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
        pipe = d.WanPipeline(
            tokenizer=tiny_t5_tokenizer(),
            text_encoder=_t5(umt5=True),
            vae=vae,
            scheduler=d.FlowMatchEulerDiscreteScheduler(shift=7.0),
            transformer=tiny_denoiser("wan", seed),
        )
    elif family == "flux":
        vae = d.AutoencoderKL(
            block_out_channels=(16, 16),
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            layers_per_block=1,
            norm_num_groups=4,
            latent_channels=4,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        )
        pipe = d.FluxPipeline(
            scheduler=d.FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=_clip_text(),
            tokenizer=tiny_clip_tokenizer(),
            text_encoder_2=_t5(),
            tokenizer_2=tiny_t5_tokenizer(),
            transformer=tiny_denoiser("flux", seed),
        )
    else:
        raise ValueError(f"unknown tiny family {family!r}; choose from {FAMILIES}")
    pipe.set_progress_bar_config(disable=True)
    return eval_all(pipe)
