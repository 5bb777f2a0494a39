"""The pure maths of style injection: query fusion, AdaIN, attention contrast, swap guidance.

Each function maps one line of a paper (or of the IlluSign proxy code) to a tensor operation and
never writes to its inputs.

>>> import torch
>>> a = torch.softmax(torch.randn(1, 1, 4, 4), -1)
>>> c = contrast(a, 1.67, "row_wise")
>>> bool(torch.allclose(c.mean(-1), a.mean(-1), atol=1e-6)), bool(c.min() >= 0), bool(c.max() <= 1)
(True, True, True)
>>> guidance_schedule(5, 3.5, 1.75).tolist()
[3.5, 3.0625, 2.625, 2.1875, 1.75]
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Tensor = torch.Tensor
ContrastMode = Literal[
    "row_wise",  # (A - mean_row) * s + mean_row per query row, clip, rescale to the row's sum (ours)
    "reference_quirk",  # the upstream enhance_tensor: the mean taken without keepdim, so row j's mean
    # is subtracted from column j (square maps only); bit-faithful ports of Cross-Image Attention/IlluSign
]


def fuse_queries(q_img: Tensor, q_edge: Tensor, w_img: float, w_edge: float) -> Tensor:
    """IlluSign's geometry query Q_geo = w_img * Q_img + w_edge * Q_edges ([..., N, D]).

    StyleID's query preservation q = gamma * q_content + (1 - gamma) * q_output is the same line with
    (w_img, w_edge) = (gamma, 1 - gamma) and the output's own query as the second stream.
    Weights 1 and 0 return the stream itself exactly (1 * x + 0 * y == x in floating point).
    """
    return w_img * q_img + w_edge * q_edge


def adain(x: Tensor, ref: Tensor, dim: tuple[int, ...], eps: float = 1e-5) -> Tensor:
    """Adaptive instance normalisation: x's statistics over `dim` replaced by ref's.

    Latent AdaIN (IlluSign, StyleID): x, ref [B, C, H, W], dim=(2, 3). StyleAligned's Q/K AdaIN:
    [B, H, N, D] over the tokens, dim=(2,). Std is the unbiased one of torch.std; `eps` keeps flat
    inputs finite.
    """
    mu_x, sd_x = x.mean(dim, keepdim=True), x.std(dim, keepdim=True)
    mu_r, sd_r = ref.mean(dim, keepdim=True), ref.std(dim, keepdim=True)
    return (x - mu_x) / (sd_x + eps) * sd_r + mu_r


def contrast(probs: Tensor, strength: float, mode: ContrastMode = "row_wise") -> Tensor:
    """Attention contrast of Cross-Image Attention / IlluSign: (A - mean) * s + mean, clipped to [0, 1].

    probs [..., Nq, Nk]. `row_wise` (ours) subtracts each query row's own mean, clips, then rescales
    the row to its original sum: a softmax row stays a distribution (in [0, 1], mean 1/Nk kept), where
    the clip alone would raise the mean of the many near-zero entries. `reference_quirk` reproduces
    the upstream line exactly: the mean over the last dim without keepdim has shape [..., Nq] and
    broadcasts along the *last* axis, so entry (i, j) uses row j's mean (Nq == Nk only); no rescale.
    """
    if mode == "row_wise":
        mean = probs.mean(-1, keepdim=True)
        out = ((probs - mean) * strength + mean).clamp(0.0, 1.0)
        out = out * (probs.sum(-1, keepdim=True) / out.sum(-1, keepdim=True).clamp_min(1e-12))
        return out.clamp_max(1.0)  # a row of one clipped peak: a softmax sum of 1 + 1 ulp lifts it over 1
    if mode != "reference_quirk":
        raise ValueError(f"contrast mode {mode!r}; use 'row_wise' or 'reference_quirk'")
    if probs.shape[-1] != probs.shape[-2]:
        raise ValueError(f"contrast_mode='reference_quirk' needs a square map (self-attention), got "
                         f"{tuple(probs.shape[-2:])}; use contrast_mode='row_wise'")
    mean = probs.mean(-1)  # [..., Nq], broadcast along the key axis: the upstream quirk
    return ((probs - mean) * strength + mean).clamp(0.0, 1.0)


def attention(q: Tensor, k: Tensor, v: Tensor, temperature: float = 1.0) -> Tensor:
    """Reference softmax(T * Q K^T / sqrt(d)) V on [..., N, D], in the inputs' dtype (tests, fusion)."""
    logits = q @ k.transpose(-1, -2) * (temperature / math.sqrt(q.shape[-1]))
    return torch.softmax(logits, dim=-1) @ v


def guidance_schedule(num_steps: int, start: float = 3.5, end: float = 1.75) -> Tensor:
    """Swap-guidance scale per denoising step: linear from `start` to `end` (float64, [num_steps]).

    The proxy code's end is max(start / 2, 1) = 1.75 for its start 3.5.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}; give at least one denoising step")
    return torch.linspace(start, end, num_steps, dtype=torch.float64)


def swap_guidance(eps_noswap: Tensor, eps_swap: Tensor, scale: float) -> Tensor:
    """eps = eps_noswap + s * (eps_swap - eps_noswap): classifier-free guidance towards the swap."""
    return eps_noswap + scale * (eps_swap - eps_noswap)
