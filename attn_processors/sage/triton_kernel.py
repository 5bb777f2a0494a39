"""Our Triton SageAttention kernel: INT8 Q.K^T (smooth-K) + FP8 P~.V with two-level accumulation.

Preprocessing (``reference.quantize_qk`` / ``quantize_v``, plain torch ops) produces INT8 Q/K with
per-row dequantization scales (any group map expands to per-row, so one kernel serves per-thread,
per-warp and per-block groups), FP8 V with per-channel scales, or FP16 V for the variant without
FP8 tensor cores (sm80/86). The kernel is one FlashAttention loop over key blocks of ``BLOCK_N``:

    S = (Q_int8 @ K_int8^T) [int32] * q_scale[:, None] * k_scale[None, :]   # log2 units
    m' = max(m, rowmax S); alpha = exp2(m - m'); P = exp2(S - m')
    l = l * alpha + rowsum(P)                                               # fp32, unrounded P
    acc = acc * alpha + dot(fp8(448 P), V_fp8)                              # fresh block product
    O = acc / l * v_scale / 448

Two-level accumulation: each block's FP8 product starts from a zero accumulator and is added
into the fp32 ``acc`` (upstream ``compute_fp8_sv_inst_buf``). On sm90 Triton lets FP8 dots
accumulate imprecisely (22-bit mantissa) up to ``max_num_imprecise_acc`` products; we set it to
``BLOCK_N`` so promotion to fp32 happens once per key block, as in the paper's Sec. 3.4.

Under ``TRITON_INTERPRET=1`` (CPU) the interpreter's fp32 -> fp8 ``.to()`` is wrong (see
``interpreter_fp8_cast_defect``); ``EMULATE_FP8_CAST`` then rounds P to the E4M3 grid in fp32
first so the cast is exact. On GPUs the hardware ``cvt.rn.satfinite`` conversion is used.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .quant import P_SCALE

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _round_e4m3(x):
    """Round non-negative fp32 to the FP8 E4M3 grid (RTNE) with exact fp32 arithmetic.

    ulp of an E4M3 normal with exponent e is 2^(e-3); subnormals (< 2^-6) have ulp 2^-9.
    (x / ulp + 1.5 * 2^23) - 1.5 * 2^23 rounds x / ulp to an integer, ties to even.
    """
    bits = x.to(tl.int32, bitcast=True)
    ulp_bits = tl.maximum((bits & 0x7F800000) - (3 << 23), (127 - 9) << 23)
    ulp = ulp_bits.to(tl.float32, bitcast=True)
    return ((x / ulp + 12582912.0) - 12582912.0) * ulp


@triton.jit
def _sage_attn_fwd(
    Q, K, V, QS, KS, VS, Out, LSE,
    n_q, n_k, n_heads, kv_group,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr,
    PV_FP8: tl.constexpr, CAUSAL: tl.constexpr, EMULATE_FP8_CAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    hk = h // kv_group  # GQA: query head h reads kv head h // (Hq / Hkv)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_D)
    row_ok = offs_m < n_q
    q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0)  # [BLOCK_M, HEAD_D] int8
    qs = tl.load(QS + (b * n_heads + h) * n_q + offs_m, mask=row_ok, other=0.0)  # [BLOCK_M]
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    ks_base = KS + (b * (n_heads // kv_group) + hk) * n_k

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], tl.float32)
    hi = n_k
    if CAUSAL:
        hi = tl.minimum(n_k, (pid_m + 1) * BLOCK_M)  # later key blocks are fully masked
    for start in range(0, hi, BLOCK_N):
        cols = start + offs_n
        col_ok = cols < n_k
        k = tl.load(k_base + cols[:, None] * skn + offs_d[None, :], mask=col_ok[:, None], other=0)
        ks = tl.load(ks_base + cols, mask=col_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), out_dtype=tl.int32).to(tl.float32) * qs[:, None] * ks[None, :]
        keep = col_ok[None, :]
        if CAUSAL:
            keep = keep & (cols[None, :] <= offs_m[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: key 0 is always visible
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * svn + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        if PV_FP8:
            p8 = p * 448.0  # static scale: P~ in [0, 1] fills the E4M3 range
            if EMULATE_FP8_CAST:
                p8 = _round_e4m3(p8)
            blk = tl.dot(p8.to(tl.float8e4nv), v, max_num_imprecise_acc=BLOCK_N)
        else:
            blk = tl.dot(p.to(tl.float16), v)
        acc = acc * alpha[:, None] + blk  # outer accumulation in true fp32
        m_i = m_new
    vs = tl.load(VS + (b * (n_heads // kv_group) + hk) * HEAD_D + offs_d)  # per-channel V scale (/448)
    out = acc / l_i[:, None] * vs[None, :]
    tl.store(Out + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # natural log of the smoothed logits
    tl.store(LSE + (b * n_heads + h) * n_q + offs_m, lse, mask=row_ok)


def _launch(q_i8: torch.Tensor, k_i8: torch.Tensor, q_scale: torch.Tensor, k_scale: torch.Tensor,
            v_op: torch.Tensor, v_scale: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
            is_causal: bool, block_m: int, block_n: int) -> None:
    b, hq, nq, d = q_i8.shape
    hkv, nk = k_i8.shape[1], k_i8.shape[2]
    grid = (triton.cdiv(nq, block_m), b * hq)
    _sage_attn_fwd[grid](
        q_i8, k_i8, v_op, q_scale, k_scale, v_scale, out, lse,
        nq, nk, hq, hq // hkv,
        q_i8.stride(0), q_i8.stride(1), q_i8.stride(2), k_i8.stride(0), k_i8.stride(1), k_i8.stride(2),
        v_op.stride(0), v_op.stride(1), v_op.stride(2), out.stride(0), out.stride(1), out.stride(2),
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_D=d, PV_FP8=v_op.dtype == torch.float8_e4m3fn,
        CAUSAL=is_causal, EMULATE_FP8_CAST=INTERPRET,
    )


@torch.library.custom_op("attn_processors::sage_int8_attn", mutates_args=())
def sage_int8_attn(
    q_i8: torch.Tensor, k_i8: torch.Tensor, q_scale: torch.Tensor, k_scale: torch.Tensor,
    v_op: torch.Tensor, v_scale: torch.Tensor, is_causal: bool, out_dtype: torch.dtype,
    block_m: int, block_n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantized attention core on preprocessed operands (all ``[B, H, N, Dp]``, Dp a power of 2).

    q_i8/k_i8 int8; q_scale ``[B, Hq, Nq]`` / k_scale ``[B, Hkv, Nk]`` fp32 per-row scales
    (log2 units); v_op float8_e4m3fn or float16 ``[B, Hkv, Nk, Dp]``; v_scale ``[B, Hkv, Dp]`` fp32
    (already divided by 448 for FP8). Returns (out ``[B, Hq, Nq, Dp]`` in out_dtype, lse
    ``[B, Hq, Nq]`` natural log of the smoothed logits).
    """
    b, hq, nq, d = q_i8.shape
    out = torch.empty(b, hq, nq, d, device=q_i8.device, dtype=out_dtype)
    lse = torch.empty(b, hq, nq, device=q_i8.device, dtype=torch.float32)
    _launch(q_i8, k_i8, q_scale.contiguous(), k_scale.contiguous(), v_op, v_scale.contiguous(), out, lse,
            is_causal, block_m, block_n)
    return out, lse


@sage_int8_attn.register_fake
def _(q_i8, k_i8, q_scale, k_scale, v_op, v_scale, is_causal, out_dtype, block_m, block_n):
    b, hq, nq, d = q_i8.shape
    return q_i8.new_empty(b, hq, nq, d, dtype=out_dtype), q_i8.new_empty(b, hq, nq, dtype=torch.float32)


def pad_head_dim(d: int) -> int:
    """tl.dot needs power-of-two tiles >= 16: D=40 -> 64, D=64 -> 64, D=96 -> 128."""
    return max(16, 1 << (d - 1).bit_length())


def interpreter_fp8_cast_defect(x: torch.Tensor) -> torch.Tensor:
    """Predicts the Triton 3.9 interpreter's fp32 -> E4M3 ``.to()`` result (documented defect).

    ``_convert_float`` rounds by adding the first cut-off bit to the 3-bit mantissa and ORs the
    result into the exponent field. When rounding carries out of the mantissa (torch's RTNE
    result is the power of two 2^e just above x) the carry is only kept if the lower binade's
    biased exponent is even; with an odd one the OR is a no-op and the value drops to 2^(e-1),
    half of the right answer. Ties round up in magnitude instead of to even. Inputs: finite,
    |x| <= 448, normal range.
    """
    xf = x.float()
    e = torch.floor(torch.log2(xf.abs()))  # binade of x: [2^e, 2^(e+1))
    ulp = torch.exp2(e - 3)
    mag = torch.floor(xf.abs() / ulp + 0.5) * ulp  # round half up in magnitude
    carried = mag >= torch.exp2(e + 1)
    odd = ((e + 7).to(torch.int64) % 2) == 1  # biased E4M3 exponent of the lower binade
    mag = torch.where(carried & odd, torch.exp2(e), mag)
    return torch.sign(xf) * mag


def run_preprocessed(
    pre: dict, vq: torch.Tensor, v_scale: torch.Tensor, pv: str, is_causal: bool, out_dtype: torch.dtype,
    block_m: int = 64, block_n: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack simulator-style preprocessing into kernel operands and run ``sage_int8_attn``.

    pre: ``reference.quantize_qk`` output (integer-valued floats); vq/v_scale: ``quantize_v``.
    Returns (out ``[B, Hq, Nq, D]`` unpadded, lse of the smoothed logits).
    """
    d = pre["q_int"].shape[-1]
    dp = pad_head_dim(d)
    pad = (0, dp - d)
    q_i8 = torch.nn.functional.pad(pre["q_int"], pad).to(torch.int8)
    k_i8 = torch.nn.functional.pad(pre["k_int"], pad).to(torch.int8)
    if pv == "fp8":
        v_op = torch.nn.functional.pad(vq, pad).to(torch.float8_e4m3fn)  # vq already on the E4M3 grid
        vs = torch.nn.functional.pad(v_scale[..., 0, :] / P_SCALE, pad)
    else:
        v_op = torch.nn.functional.pad(vq, pad).to(torch.float16)
        vs = torch.nn.functional.pad(v_scale[..., 0, :], pad)
    out, lse = sage_int8_attn(q_i8, k_i8, pre["q_scale"].float(), pre["k_scale"].float(), v_op, vs.float(),
                              is_causal, out_dtype, block_m, block_n)
    return out[..., :d], lse
