"""Frame-tile statistics of Wan 3D self-attention (attn1), the structure tile-sparse attention uses.

Wan's video tokens are frame-major (t, h, w) after patchify, so the (S x S) self-attention map with
S = F*T (F latent frames, T tokens per frame) is an F x F grid of (T x T) frame tiles. The diagonal
tiles hold same-frame attention; a uniform map puts 1/F of every query's mass there, so

    diagonal_tile_ratio = mean_query(mass on the query's own frame) / (1 / F)

(1.0: no frame structure; F: purely per-frame attention). ``FrameTileProbe`` is a processor that
computes attn1 explicitly (softmax(q k^T / sqrt(d)) v, numerically the same as SDPA) and records this
mass; it changes nothing in the output, and in training its differentiable ``last_mass`` can feed
an optional regulariser.
"""

from __future__ import annotations

import torch


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs (x_2i, x_2i+1) by Wan's 3D RoPE angles. x: (B, S, H, D)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # (B, S, H, D/2) each
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)
    return out.flatten(-2).type_as(x)


def diagonal_mass(probs: torch.Tensor, frames: int) -> torch.Tensor:
    """Per (batch, head) mean over queries of the attention mass on the query's own frame.

    probs: (B, H, S, S) rows summing to 1, S = frames * T, frame-major tokens. Returns (B, H).
    """
    b, h, s, _ = probs.shape
    if s % frames:
        raise ValueError(f"sequence length {s} is not a multiple of the frame count {frames}")
    t = s // frames
    tiles = probs.reshape(b, h, frames, t, frames, t).sum(-1)  # (B, H, Fq, Tq, Fk) mass per key frame
    return tiles.diagonal(dim1=2, dim2=4).mean(dim=(-1, -2))  # diag over (Fq, Fk), mean over (Tq, Fq)


class FrameTileProbe:
    """attn1 processor: explicit attention that records same-frame mass (and optionally maps).

    ``frames`` must be set to the latent frame count before a forward. After each call,
    ``last_mass`` (B, H) keeps its autograd graph (for a training regulariser) and, when
    ``record`` is True, ``history`` collects detached per-call (B, H) masses for evaluation.
    """

    def __init__(self, frames: int | None = None, record: bool = False) -> None:
        self.frames = frames
        self.record = record
        self.last_mass: torch.Tensor | None = None
        self.history: list[torch.Tensor] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None:
            raise ValueError("FrameTileProbe measures self-attention; install it on attn1 only")
        if self.frames is None:
            raise ValueError("set FrameTileProbe.frames to the latent frame count before the forward")
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))  # (B, S, H, D)
        k = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            q, k = apply_rope(q, *rotary_emb), apply_rope(k, *rotary_emb)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, S, D)
        logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        if attention_mask is not None:
            logits = logits + attention_mask
        probs = logits.float().softmax(-1).to(q.dtype)  # (B, H, S, S)
        self.last_mass = diagonal_mass(probs, self.frames)
        if self.record:
            self.history.append(self.last_mass.detach().float().cpu())
        out = (probs @ v).transpose(1, 2).flatten(2, 3)  # (B, S, H*D)
        return attn.to_out[1](attn.to_out[0](out))


def install_probes(transformer, frames: int | None = None, record: bool = False) -> list[FrameTileProbe]:
    """One FrameTileProbe per transformer block's attn1, in block order."""
    probes = []
    for block in transformer.blocks:
        probe = FrameTileProbe(frames, record)
        block.attn1.set_processor(probe)
        probes.append(probe)
    return probes
