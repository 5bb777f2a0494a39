"""Pure-PyTorch SageAttention simulator: the oracle every kernel is tested against.

It runs the kernel's arithmetic with simulated low precision on any device:
integer Q.K^T (exact in fp32: 127^2 * 128 < 2^24), dequantization by per-row scales, an online
(FlashAttention) softmax over key blocks of ``tiles.blk_k``, P~ rounded to FP8 E4M3 after the
static x448 scale, per-channel FP8 V, the denominator summed from unrounded fp32 P, and the
two-level accumulation (each key block's P~V is a fresh product added into an fp32 buffer).
Not emulated: the 22-bit mantissa of the FP8 MMA accumulator inside one block (the inner
product here is fp32), so the simulator slightly understates hardware error.
"""

from __future__ import annotations

import math

import torch

from .quant import (
    LOG2E,
    P_SCALE,
    delta_s,
    fp16_round,
    head_dim_scale,
    k_group_index,
    k_scale_count,
    q_group_index,
    q_scale_count,
    quant_sym,
    quant_v_per_channel,
    round_fp8_e4m3,
    smooth_k,
    smooth_q,
)
from .spec import SageSpec

_CHUNK_ELEMS = 1 << 23  # logits held at once (32 MiB fp32)


def quantize_qk(
    q: torch.Tensor, k: torch.Tensor, spec: SageSpec, log2_scale: float
) -> dict[str, torch.Tensor | None]:
    """Preprocessing shared by the simulator and the Triton path.

    q: ``[B, Hq, Nq, D]``, k: ``[B, Hkv, Nk, D]``. ``log2_scale = sm_scale * log2(e)`` is folded
    into Q before quantization, as upstream does, so logits come out in log2 units for ``exp2``.
    Returns q_int/k_int (integer-valued float32, or the plain values when ``qk_bits`` is None),
    per-row scales q_scale ``[B, Hq, Nq]`` / k_scale ``[B, Hkv, Nk]``, the K mean ``[B, Hkv, 1, D]``
    (or None), and for smooth-Q the block means ``q_mean`` ``[B, Hq, nb, D]`` with ``q_block`` ``[Nq]``.
    """
    qs = q.float() * log2_scale
    if spec.smooth_k:
        kf, km = smooth_k(k)
    else:
        kf, km = k.float(), None
    q_mean = q_block = None
    if spec.smooth_q:
        qs, q_mean, q_block = smooth_q(qs, spec.tiles.blk_q)
    nq, nk = q.shape[-2], k.shape[-2]
    if spec.qk_bits is None:
        q_scale = torch.ones(qs.shape[:-1], device=q.device)
        k_scale = torch.ones(kf.shape[:-1], device=k.device)
        return dict(q_int=qs, k_int=kf, q_scale=q_scale, k_scale=k_scale, k_mean=km, k_smoothed=kf,
                    q_mean=q_mean, q_block=q_block)
    gq = q_group_index(nq, spec.qk_gran, spec.tiles, q.device)
    gk = k_group_index(nk, spec.qk_gran, spec.tiles, k.device)
    qi, sq = quant_sym(qs, gq, q_scale_count(nq, spec.qk_gran, spec.tiles), spec.qk_bits)
    ki, sk = quant_sym(kf, gk, k_scale_count(nk, spec.qk_gran, spec.tiles), spec.qk_bits)
    return dict(q_int=qi, k_int=ki, q_scale=sq[..., gq], k_scale=sk[..., gk], k_mean=km, k_smoothed=kf,
                q_mean=q_mean, q_block=q_block, q_scale_groups=sq, k_scale_groups=sk)


def quantize_v(v: torch.Tensor, spec: SageSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """V operand of the P.V product: (rounded values ``[B, H, Nk, D]``, channel scale ``[B, H, 1, D]``)."""
    if spec.pv == "fp8":
        return quant_v_per_channel(v, spec.v_scale_max)
    ones = torch.ones(*v.shape[:-2], 1, v.shape[-1], device=v.device)
    return (fp16_round(v.float()) if spec.pv == "fp16" else v.float()), ones


def _expand_heads(x: torch.Tensor, hq: int) -> torch.Tensor:
    """GQA: repeat each kv head for its ``hq // hkv`` query heads (dim 1)."""
    return x if x.shape[1] == hq else x.repeat_interleave(hq // x.shape[1], dim=1)


def _online_softmax_pv(
    s: torch.Tensor, vq: torch.Tensor, spec: SageSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention loop over key blocks on log2-unit logits ``s`` ``[B, H, n, Nk]``.

    Returns (unnormalised output ``[B, H, n, D]``, running max m, denominator l ``[B, H, n]``).
    """
    b, h, n, nk = s.shape
    m = torch.full((b, h, n), -math.inf, device=s.device)
    l_sum = torch.zeros(b, h, n, device=s.device)
    o = torch.zeros(b, h, n, vq.shape[-1], device=s.device)
    bk = spec.tiles.blk_k
    for j0 in range(0, nk, bk):
        sj = s[..., j0:j0 + bk]
        m_new = torch.maximum(m, sj.amax(dim=-1))
        m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows masked so far
        alpha = torch.exp2(m - m_safe)
        p = torch.exp2(sj - m_safe[..., None])  # P~ in [0, 1]
        l_sum = l_sum * alpha + p.sum(dim=-1)  # denominator from unrounded fp32 P
        if spec.pv == "fp8":
            p_op = round_fp8_e4m3(p * P_SCALE)  # static scale: 448 * P~ fills the E4M3 range
        elif spec.pv == "fp16":
            p_op = fp16_round(p)
        else:
            p_op = p
        o = o * alpha[..., None] + p_op @ vq[..., j0:j0 + bk, :]  # fresh block product, fp32 outer sum
        m = m_new
    return o, m, l_sum


def simulate(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spec: SageSpec,
    *,
    sm_scale: float | None = None,
    is_causal: bool = False,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Simulated quantized attention on ``[B, H, N, D]`` (GQA allowed); returns float32.

    ``lse`` is ``[B, Hq, Nq]`` in natural log of the *unsmoothed* logits (upstream adds
    ``q . k_mean * sm_scale`` back, its ``lse_correction``).
    """
    b, hq, nq, d = q.shape
    nk = k.shape[-2]
    if is_causal and nq != nk:
        raise ValueError(f"is_causal needs equal query and key lengths, got {nq} and {nk}")
    scale = head_dim_scale(d, sm_scale)
    pre = quantize_qk(q, k, spec, scale * LOG2E)
    vq, v_scale = quantize_v(v, spec)
    ki = _expand_heads(pre["k_int"], hq)  # [B, Hq, Nk, D]
    ks = _expand_heads(pre["k_scale"], hq)  # [B, Hq, Nk]
    vq, v_scale = _expand_heads(vq, hq), _expand_heads(v_scale, hq)
    k_sm = _expand_heads(pre["k_smoothed"], hq) if spec.smooth_q else None
    chunk = max(1, min(nq, _CHUNK_ELEMS // max(1, b * hq * nk)))
    outs, lses = [], []
    for i0 in range(0, nq, chunk):
        rows = slice(i0, i0 + chunk)
        s = pre["q_int"][:, :, rows] @ ki.transpose(-1, -2)  # integer GEMM, exact in fp32
        s = s * pre["q_scale"][:, :, rows, None] * ks[:, :, None]  # dequantize: one multiply per scale
        if spec.smooth_q:
            s = s + delta_s(pre["q_mean"][:, :, pre["q_block"][rows]], k_sm)  # exact dS, full precision
        if is_causal:
            i = torch.arange(i0, min(i0 + chunk, nq), device=q.device)
            s = s.masked_fill(torch.arange(nk, device=q.device)[None, :] > i[:, None], -math.inf)
        o, m, l_sum = _online_softmax_pv(s, vq, spec)
        pv_scale = v_scale / P_SCALE if spec.pv == "fp8" else v_scale  # epilogue: one multiply per channel
        outs.append(o / l_sum[..., None] * pv_scale)
        lses.append((m + torch.log2(l_sum)) / LOG2E)
    out = torch.cat(outs, dim=2)
    if not return_lse:
        return out
    lse = torch.cat(lses, dim=2)
    if spec.smooth_k:
        lse = lse + (q.float() @ _expand_heads(pre["k_mean"], hq).transpose(-1, -2)).squeeze(-1) * scale
    return out, lse
