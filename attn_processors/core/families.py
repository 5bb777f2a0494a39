"""One adapter per Diffusers attention family: project -> (q, k, v) in [B, H, N, D], then finish.

Each adapter reproduces, step for step, what the stock processor of diffusers 0.42.1 does before and
after its kernel call (norms, RoPE, masks, token order, output projection, residual), so that a
technique only ever sees `q, k, v` and returns `out`. The identity tests in
tests/test_core_identity.py prove each adapter equal to its stock processor.

| family     | module / stock processor                      | token order     | RoPE                      |
|------------|-----------------------------------------------|-----------------|---------------------------|
| unet       | Attention / AttnProcessor2_0                  | image (+ text KV) | none                    |
| sd3        | Attention / JointAttnProcessor2_0             | [image, text]   | none                      |
| cogvideox  | Attention / CogVideoXAttnProcessor2_0         | [text, video]   | video part, after norm    |
| wan        | WanAttention / WanAttnProcessor               | video (+ text KV) | interleaved, attn1 only |
| flux       | FluxAttention / FluxAttnProcessor             | [text, image]   | after concat and norms    |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    CogVideoXAttnProcessor2_0,
    JointAttnProcessor2_0,
)
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers import transformer_flux, transformer_wan

Tensor = torch.Tensor

# (attention module class, stock processor class) -> family. Anything else raises: no silent fallback.
_STOCK: dict[tuple[type, type], str] = {
    (Attention, AttnProcessor2_0): "unet",
    (Attention, AttnProcessor): "unet",  # same maths as AttnProcessor2_0, older kernel
    (Attention, JointAttnProcessor2_0): "sd3",
    (Attention, CogVideoXAttnProcessor2_0): "cogvideox",
    (transformer_wan.WanAttention, transformer_wan.WanAttnProcessor): "wan",
    (transformer_flux.FluxAttention, transformer_flux.FluxAttnProcessor): "flux",
}
FAMILIES = ("unet", "sd3", "cogvideox", "wan", "flux")
# The processor Diffusers installs by default for each family (what `stock_processors` restores).
STOCK_PROCESSORS: dict[str, type] = {
    "unet": AttnProcessor2_0,
    "sd3": JointAttnProcessor2_0,
    "cogvideox": CogVideoXAttnProcessor2_0,
    "wan": transformer_wan.WanAttnProcessor,
    "flux": transformer_flux.FluxAttnProcessor,
}
# Families whose stock kernel is `dispatch_attention_fn` (attention backends, context parallelism).
DISPATCH_FAMILIES = ("wan", "flux")


def family_of(module: torch.nn.Module, processor: Any) -> str:
    """Family name of an attention module given its current processor; raises naming unknown classes."""
    site = getattr(processor, "site", None)
    if getattr(processor, "_controlled", False) and site is not None:
        return site.family  # one of ours: its site already knows
    family = _STOCK.get((type(module), type(processor)))
    if family is None:
        known = ", ".join(sorted({f"{m.__name__}+{p.__name__}" for m, p in _STOCK}))
        raise ValueError(
            f"unsupported attention layer: module class {type(module).__name__} with processor class "
            f"{type(processor).__name__}. attn_processors knows {known}; reset the model to its default "
            "processors (model.set_default_attn_processor() or a fresh load) or add an adapter in "
            "attn_processors/core/families.py."
        )
    return family


@dataclass
class Projected:
    """What an adapter hands the processor: q, k, v [B, H, N, D] and how to finish the call."""

    q: Tensor  # [B, H, Nq, D], after the family's norms and RoPE
    k: Tensor  # [B, H, Nk, D]
    v: Tensor  # [B, H, Nk, D]
    mask: Tensor | None  # broadcastable to [B, H, Nq, Nk]: additive float or bool (True = keep)
    finish: Callable[[Tensor], Any]  # out [B, H, Nq, D] -> the stock processor's return value
    text_len: int = 0  # text tokens inside the joint sequence (0 for self/cross layers)
    text_pos: str | None = None  # "first" | "last" | None: where those text tokens sit
    added_kv: tuple[Tensor, Tensor] | None = None  # Wan I2V image K/V: a second attention, added
    hw: tuple[int, int] | None = None  # (h, w) when the input was a 4-D feature map


def _heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, H*D) -> (B, H, N, D)."""
    return x.view(x.shape[0], -1, heads, x.shape[-1] // heads).transpose(1, 2)


def _merge(out: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, H, N, D) -> (B, N, H*D) in the given dtype."""
    return out.transpose(1, 2).flatten(2, 3).to(dtype)


def project_unet(
    attn: Attention, hs: Tensor, ehs: Tensor | None, mask: Tensor | None, rope: Any, temb: Tensor | None
) -> Projected:
    """Legacy `Attention` as AttnProcessor2_0 runs it (SD1.5/SDXL UNets, VAE mid-blocks)."""
    residual = hs
    if attn.spatial_norm is not None:
        hs = attn.spatial_norm(hs, temb)
    hw = None
    if hs.ndim == 4:  # (B, C, H, W) -> (B, H*W, C)
        b, c, h, w = hs.shape
        hw = (h, w)
        hs = hs.view(b, c, h * w).transpose(1, 2)
    b, n_kv = (hs if ehs is None else ehs).shape[:2]
    if mask is not None:
        mask = attn.prepare_attention_mask(mask, n_kv, b)
        mask = mask.view(b, attn.heads, -1, mask.shape[-1])  # (B, H, 1|Nq, Nk)
    if attn.group_norm is not None:
        hs = attn.group_norm(hs.transpose(1, 2)).transpose(1, 2)
    q = attn.to_q(hs)
    if ehs is None:
        ehs = hs
    elif attn.norm_cross:
        ehs = attn.norm_encoder_hidden_states(ehs)
    k, v = attn.to_k(ehs), attn.to_v(ehs)
    q, k, v = _heads(q, attn.heads), _heads(k, attn.heads), _heads(v, attn.heads)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)

    def finish(out: Tensor) -> Tensor:
        out = attn.to_out[1](attn.to_out[0](_merge(out, q.dtype)))
        if hw is not None:
            out = out.transpose(-1, -2).reshape(b, -1, *hw)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    return Projected(q, k, v, mask, finish, hw=hw)


def project_sd3(
    attn: Attention, hs: Tensor, ehs: Tensor | None, mask: Tensor | None, rope: Any, temb: Tensor | None
) -> Projected:
    """SD3 joint attention: [image, text] after per-head norms; returns (image, text)."""
    n_img = hs.shape[1]
    q, k, v = (_heads(f(hs), attn.heads) for f in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    n_txt = 0
    if ehs is not None:
        n_txt = ehs.shape[1]
        cq, ck, cv = (_heads(f(ehs), attn.heads) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        if attn.norm_added_q is not None:
            cq = attn.norm_added_q(cq)
        if attn.norm_added_k is not None:
            ck = attn.norm_added_k(ck)
        q, k, v = torch.cat([q, cq], 2), torch.cat([k, ck], 2), torch.cat([v, cv], 2)  # (B, H, Ni+Nt, D)

    def finish(out: Tensor) -> Any:
        # the stock order (text projection first): gradient checkpointing recomputes with the
        # stock processor and checks that the same tensors are saved in the same order
        out = _merge(out, q.dtype)
        img, txt = out[:, :n_img], out[:, n_img:]
        if ehs is not None and not attn.context_pre_only:
            txt = attn.to_add_out(txt)
        img = attn.to_out[1](attn.to_out[0](img))
        return img if ehs is None else (img, txt)

    return Projected(q, k, v, None, finish, text_len=n_txt, text_pos="last" if n_txt else None)


def project_cogvideox(
    attn: Attention, hs: Tensor, ehs: Tensor, mask: Tensor | None, rope: Any, temb: Tensor | None
) -> Projected:
    """CogVideoX: concat [text, video] before the shared projection, RoPE on the video part only."""
    n_txt = ehs.shape[1]
    hs = torch.cat([ehs, hs], dim=1)
    b, n = hs.shape[:2]
    if mask is not None:
        mask = attn.prepare_attention_mask(mask, n, b)
        mask = mask.view(b, attn.heads, -1, mask.shape[-1])
    q, k, v = (_heads(f(hs), attn.heads) for f in (attn.to_q, attn.to_k, attn.to_v))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    if rope is not None:  # (B, H, Nt+Nv, D): rotate the video tokens only
        q = torch.cat([q[:, :, :n_txt], apply_rotary_emb(q[:, :, n_txt:], rope)], dim=2)
        if not attn.is_cross_attention:
            k = torch.cat([k[:, :, :n_txt], apply_rotary_emb(k[:, :, n_txt:], rope)], dim=2)

    def finish(out: Tensor) -> tuple[Tensor, Tensor]:
        out = attn.to_out[1](attn.to_out[0](_merge(out, out.dtype)))
        txt, vid = out.split([n_txt, out.shape[1] - n_txt], dim=1)
        return vid, txt

    return Projected(q, k, v, mask, finish, text_len=n_txt, text_pos="first")


def _wan_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Interleaved-pair RoPE on (B, N, H, D) with real cos/sin (1, N, 1, D):
    out[2i] = x[2i] cos[2i] - x[2i+1] sin[2i+1],  out[2i+1] = x[2i] sin[2i+1] + x[2i+1] cos[2i]."""
    x_even, x_odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.stack([x_even * c - x_odd * s, x_even * s + x_odd * c], dim=-1).flatten(-2)
    return out.type_as(x)


def project_wan(
    attn: Any, hs: Tensor, ehs: Tensor | None, mask: Tensor | None, rope: Any, temb: Tensor | None
) -> Projected:
    """Wan: RMSNorm across all heads before the head split, interleaved RoPE, optional I2V image K/V."""
    ehs_img = None
    if attn.add_k_proj is not None:  # I2V: the leading (S_ctx - 512) context tokens are image tokens
        n_img = ehs.shape[1] - 512
        ehs_img, ehs = ehs[:, :n_img], ehs[:, n_img:]
    q, k, v = transformer_wan._get_qkv_projections(attn, hs, ehs)  # (B, N, H*D)
    q, k = attn.norm_q(q), attn.norm_k(k)
    q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))  # (B, N, H, D)
    if rope is not None:
        q, k = _wan_rope(q, *rope), _wan_rope(k, *rope)
    added = None
    if ehs_img is not None:
        k_img, v_img = transformer_wan._get_added_kv_projections(attn, ehs_img)
        k_img = attn.norm_added_k(k_img)
        added = (
            k_img.unflatten(2, (attn.heads, -1)).transpose(1, 2),
            v_img.unflatten(2, (attn.heads, -1)).transpose(1, 2),
        )
    dtype = q.dtype

    def finish(out: Tensor) -> Tensor:
        return attn.to_out[1](attn.to_out[0](_merge(out, dtype)))

    return Projected(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, finish, added_kv=added)


def project_flux(
    attn: Any, hs: Tensor, ehs: Tensor | None, mask: Tensor | None, rope: Any, temb: Tensor | None
) -> Projected:
    """Flux: per-head RMSNorm, [text, image] concat, RoPE after concat; single-stream blocks get the
    already-concatenated sequence and no `encoder_hidden_states`."""
    q, k, v, cq, ck, cv = transformer_flux._get_qkv_projections(attn, hs, ehs)
    q, k, v = (t.unflatten(-1, (-1, attn.head_dim)) for t in (q, k, v))  # (B, N, H, D)
    q, k = attn.norm_q(q), attn.norm_k(k)
    n_txt = 0
    if attn.added_kv_proj_dim is not None:
        cq, ck, cv = (t.unflatten(-1, (-1, attn.head_dim)) for t in (cq, ck, cv))
        cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        q, k, v = torch.cat([cq, q], 1), torch.cat([ck, k], 1), torch.cat([cv, v], 1)  # (B, Nt+Ni, H, D)
        n_txt = ehs.shape[1]
    if rope is not None:
        q = apply_rotary_emb(q, rope, sequence_dim=1)
        k = apply_rotary_emb(k, rope, sequence_dim=1)
    dtype = q.dtype

    def finish(out: Tensor) -> Any:
        out = _merge(out, dtype)
        if ehs is None:
            return out
        txt, img = out.split_with_sizes([ehs.shape[1], out.shape[1] - ehs.shape[1]], dim=1)
        img = attn.to_out[1](attn.to_out[0](img.contiguous()))
        return img, attn.to_add_out(txt.contiguous())

    return Projected(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        mask,
        finish,
        text_len=n_txt,
        text_pos="first" if n_txt else None,
    )


ADAPTERS: dict[str, Callable[..., Projected]] = {
    "unet": project_unet,
    "sd3": project_sd3,
    "cogvideox": project_cogvideox,
    "wan": project_wan,
    "flux": project_flux,
}


def input_geometry(model: torch.nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Latent size and token grid of one denoiser call, from its inputs and config.

    Returns {"latent_hw": (h, w) or None, "grid": (frames, h, w) in tokens or None}. Used by the
    forward pre-hook `apply` installs, so processors know the video geometry (frames, tokens per
    frame) that tile-sparse attention needs, and UNets know their latent size for resolutions.
    """
    x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
    cfg = model.config
    name = type(model).__name__
    if not isinstance(x, Tensor):
        return {"latent_hw": None, "grid": None}
    if name.startswith("UNet"):
        return {"latent_hw": tuple(x.shape[-2:]), "grid": None}
    if name.startswith("Wan"):  # (B, C, F, H, W)
        pt, ph, pw = cfg.patch_size
        f, h, w = x.shape[2:]
        return {"latent_hw": (h, w), "grid": (f // pt, h // ph, w // pw)}
    if name.startswith("CogVideoX"):  # (B, F, C, H, W)
        p, pt = cfg.patch_size, cfg.patch_size_t or 1
        f, h, w = x.shape[1], x.shape[3], x.shape[4]
        return {"latent_hw": (h, w), "grid": ((f + pt - 1) // pt, h // p, w // p)}
    if name.startswith("SD3"):  # (B, C, H, W)
        p = cfg.patch_size
        return {"latent_hw": tuple(x.shape[-2:]), "grid": (1, x.shape[-2] // p, x.shape[-1] // p)}
    ids = kwargs.get("img_ids")
    if name.startswith("Flux") and isinstance(ids, Tensor) and ids.device.type != "meta":
        ids = ids[0] if ids.ndim == 3 else ids  # (N, 3) rows of (0, row, col)
        h, w = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
        return {"latent_hw": (2 * h, 2 * w), "grid": (1, h, w)}  # Flux packs 2x2 latent patches
    return {"latent_hw": None, "grid": None}
