"""Synthetic Q/K/V for accuracy checks (tests and ``benchmarks/sage_bench.py``).

Real DiT activations are not i.i.d.: a few channels carry large biases shared by all tokens
(the outliers smooth-K/smooth-Q remove), V has per-channel offsets, and token norms vary.
``real_like`` reproduces those three traits; INT4 is only meaningful on such inputs.
"""

from __future__ import annotations

import torch

QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def gaussian(b: int, h: int, n: int, d: int, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> QKV:
    """i.i.d. N(0, 1) q, k, v ``[B, H, N, D]``."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g).to(dtype) for _ in range(3))  # type: ignore[return-value]


def real_like(
    b: int, h: int, n: int, d: int, *, token_scale_sigma: float = 0.0, seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> QKV:
    """Outlier-structured q, k, v ``[B, H, N, D]`` ("real-like-A" of docs/sage.md; sigma 0.7 gives "B").

    - 4 channels carry a bias of magnitude 6-15 shared by every token: K gets 1.5x it, Q 0.6x.
    - V gets a per-channel bias ~ N(0, 3^2).
    - optional log-normal per-token scale ``exp(sigma * N(0, 1))`` on q and k (independent draws).
    """
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
    bias = torch.zeros(b, h, 1, d)
    for bi in range(b):
        for hi in range(h):
            ch = torch.randperm(d, generator=g)[:4]
            sign = torch.randint(0, 2, (4,), generator=g) * 2 - 1
            bias[bi, hi, 0, ch] = (6 + 9 * torch.rand(4, generator=g)) * sign
    q = q + 0.6 * bias
    k = k + 1.5 * bias
    v = v + 3 * torch.randn(b, h, 1, d, generator=g)
    if token_scale_sigma > 0:
        q = q * torch.exp(token_scale_sigma * torch.randn(b, h, n, 1, generator=g))
        k = k * torch.exp(token_scale_sigma * torch.randn(b, h, n, 1, generator=g))
    return q.to(dtype), k.to(dtype), v.to(dtype)


def attention_fp64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, is_causal: bool = False,
                   sm_scale: float | None = None) -> torch.Tensor:
    """Exact reference: float64 SDPA on ``[B, H, N, D]`` (GQA expanded)."""
    hq = q.shape[1]
    k = k if k.shape[1] == hq else k.repeat_interleave(hq // k.shape[1], dim=1)
    v = v if v.shape[1] == hq else v.repeat_interleave(hq // v.shape[1], dim=1)
    return torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), is_causal=is_causal, scale=sm_scale)


def accuracy(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Flattened cosine similarity and relative L1 ``sum|o - r| / sum|r|`` (the paper's metrics)."""
    o, r = out.double().flatten(), ref.double().flatten()
    cos = torch.nn.functional.cosine_similarity(o, r, dim=0).item()
    return {"cos": cos, "rel_l1": ((o - r).abs().sum() / r.abs().sum()).item()}
