"""Stage 2 of IlluSign: one illustration from the start and end illustrations (our formula).

The paper names the inputs (Q1, Q2 of the start and end illustrations, K/V of the style, hand masks
m1, m2 and a dissimilarity mask m_dis) but not the formula, so the formula is a documented choice:

    m_dis = 1[cos(Q1, Q2) < tau_sim]      per token, cosine over channels, averaged over heads
    m     = clip(m_dis + m1 + m2, 0, 1)    hands always come from both frames
    "start": Q = Q1                 "end": Q = Q2              (the single-frame references)
    "query": Q = (1 - m) Q1 + m Q2, A = softmax(Q Ks^T / sqrt d)
    "mean":  A = (1 - m) A1 + m (A1 + A2) / 2
    "max" / "min": A = (1 - m) A1 + m renorm(max | min(A1, A2))
    out = A Vs,   A1 = softmax(Q1 Ks^T / sqrt d), A2 = softmax(Q2 Ks^T / sqrt d)

m = 0 gives exactly the start-only attention and, in "query" mode, m = 1 exactly the end-only one.

>>> import torch
>>> q1, q2 = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
>>> bool(torch.equal(dissimilarity(q1, q2), dissimilarity(q2, q1)))
True
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from .maths import ContrastMode, contrast

Tensor = torch.Tensor
Stage2Mode = Literal[
    "start",  # the start illustration alone (Q1): the reference for m = 0
    "end",  # the end illustration alone (Q2): the reference for m = 1 in "query" mode
    "query",  # blend the queries by m, one softmax (default: the paper's "fuses features ... Queries")
    "mean",  # blend A1 with the mean of A1 and A2 by m
    "max",  # blend A1 with the renormalised element-wise max of A1 and A2 by m
    "min",  # blend A1 with the renormalised element-wise min of A1 and A2 by m
]
PROB_MODES = ("mean", "max", "min")


def dissimilarity(q1: Tensor, q2: Tensor, tau_sim: float | None = None) -> Tensor:
    """Per-token dissimilarity of two query maps [B, H, N, D] -> [B, N] in [0, 1].

    Soft (tau_sim None): (1 - cos) / 2 with the cosine averaged over heads. Hard: 1[cos < tau_sim].
    Symmetric in (q1, q2) exactly: the cosine's product and norms are computed symmetrically.
    """
    cos = (q1 * q2).sum(-1) / (q1.norm(dim=-1) * q2.norm(dim=-1)).clamp_min(1e-8)  # [B, H, N]
    cos = cos.mean(1)
    return (1 - cos) / 2 if tau_sim is None else (cos < tau_sim).to(q1.dtype)


def resize_mask(mask: Tensor, hw: tuple[int, int]) -> Tensor:
    """A mask [B, h0, w0] (or [h0, w0]) to the layer's token grid, nearest: [B, h*w], binary stays binary."""
    m = mask if mask.dim() == 3 else mask[None]
    m = F.interpolate(m[:, None].float(), size=hw, mode="nearest")[:, 0]  # (B, h, w)
    return m.flatten(1)


def combine_masks(m_dis: Tensor | None, *hands: Tensor | None) -> Tensor:
    """m = clip(m_dis + m1 + m2, 0, 1) over the masks given (each [B, N])."""
    parts = [m for m in (m_dis, *hands) if m is not None]
    if not parts:
        raise ValueError("combine_masks needs at least one mask (m_dis or a hand mask)")
    return torch.stack(torch.broadcast_tensors(*parts)).sum(0).clamp(0, 1)


def fused_attention(q1: Tensor, q2: Tensor, k: Tensor, v: Tensor, m: Tensor, mode: Stage2Mode, *,
                    strength: float = 1.0, contrast_mode: ContrastMode = "row_wise") -> Tensor:
    """Stage-2 attention output [B, H, N, D] from Q1, Q2 [B, H, N, D], style K, V and m [B, N].

    `strength` != 1 applies the attention contrast to the fused map (as stage 1 does). fp32 maths.
    """
    mq = m[:, None, :, None].to(q1.dtype)  # (B, 1, N, 1): one weight per query token
    if mode in ("start", "end", "query"):
        q = {"start": q1, "end": q2}.get(mode)
        q = (1 - mq) * q1 + mq * q2 if q is None else q
        probs = softmax_probs(q, k)
    elif mode in PROB_MODES:
        probs = blend_probs(softmax_probs(q1, k), softmax_probs(q2, k), m, mode)
    else:
        raise ValueError(f"stage-2 mode {mode!r}; use one of start, end, query, mean, max, min")
    if strength != 1.0:
        probs = contrast(probs, strength, contrast_mode)
    return (probs @ v.float()).to(v.dtype)


def blend_probs(a1: Tensor, a2: Tensor, m: Tensor, mode: Stage2Mode) -> Tensor:
    """(1 - m) A1 + m B with B the mean, or the renormalised max / min, of A1 and A2 ([B, H, Nq, Nk],
    m [B, Nq]); m = 0 returns A1 exactly."""
    if mode == "mean":
        other = (a1 + a2) / 2
    elif mode in ("max", "min"):
        other = torch.maximum(a1, a2) if mode == "max" else torch.minimum(a1, a2)
        other = other / other.sum(-1, keepdim=True).clamp_min(1e-12)
    else:
        raise ValueError(f"blend_probs mode {mode!r}; use 'mean', 'max' or 'min'")
    mq = m[:, None, :, None].to(a1.dtype)
    return (1 - mq) * a1 + mq * other


def softmax_probs(q: Tensor, k: Tensor) -> Tensor:
    """softmax(Q K^T / sqrt d) in fp32 [B, H, Nq, Nk] (as the core's explicit path computes it)."""
    logits = q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(logits, dim=-1)
