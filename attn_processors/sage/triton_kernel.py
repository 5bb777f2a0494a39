"""Our Triton SageAttention kernel: INT8 Q.K^T (smooth-K) + FP8 P~.V with two-level accumulation.

Preprocessing (``quantize_qk_fused``: one Triton pass each for Q and K, bit-identical to the
simulator's ``reference.quantize_qk``) produces INT8 Q/K with per-row dequantization scales (any
group map expands to per-row, so one kernel serves per-thread, per-warp and per-block groups);
``quantize_v_operand`` gives FP8 V with per-channel scales, or FP16 V for the variant without FP8
tensor cores (sm80/86). The kernel is one FlashAttention loop over key blocks of ``BLOCK_N``:

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

from .quant import FP8_E4M3_MAX, P_SCALE, k_scale_count, q_scale_count
from .spec import SageSpec

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
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svd, sob, soh, son,
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
        # V is stored transposed [D, N] (as upstream): the MMA's B operand is then K-major
        v = tl.trans(tl.load(v_base + offs_d[:, None] * svd + cols[None, :], mask=col_ok[None, :], other=0.0))
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


@triton.jit
def _quant_rows(
    X, MEAN, XI, S, G, n, n_heads, n_groups, sxb, sxh, sxn, mul,
    D: tl.constexpr, DP: tl.constexpr, T: tl.constexpr, GROUP: tl.constexpr, NG: tl.constexpr,
    QMAX: tl.constexpr, HAS_MEAN: tl.constexpr,
):
    """One pass over a tile of T rows: (x - mean) * mul, group amax, INT8 values and per-row scales.

    GROUP 0: Q per-thread (row i of the warp tile -> group i % 8); 1: K per-thread ((i % 8) // 2);
    2: one group per tile (per-warp / per-block). Same arithmetic as ``quant.quant_sym``.
    """
    t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    rows = t * T + tl.arange(0, T)
    cols = tl.arange(0, DP)
    ok = (rows[:, None] < n) & (cols[None, :] < D)
    x = tl.load(X + b * sxb + h * sxh + rows[:, None] * sxn + cols[None, :], mask=ok, other=0.0)
    x = x.to(tl.float32)  # [T, DP]
    if HAS_MEAN:  # smooth-K: subtract the token mean (exact for softmax)
        mu = tl.load(MEAN + bh * D + cols, mask=cols < D, other=0.0)
        x = tl.where(ok, x - mu[None, :], 0.0)
    x = x * mul  # sm_scale * log2(e) folded into Q (1.0 for K)
    r = tl.max(tl.abs(x), 1)  # [T] row amax
    i = tl.arange(0, T)
    if GROUP == 0:
        gid = i % 8
    elif GROUP == 1:
        gid = (i % 8) // 2
    else:
        gid = i * 0
    scale = tl.zeros([T], tl.float32)
    for g in tl.static_range(NG):
        s_g = tl.max(tl.where(gid == g, r, 0.0), 0) / QMAX + 1e-7
        scale = tl.where(gid == g, s_g, scale)
        tl.store(G + bh * n_groups + t * NG + g, s_g)
    xs = x / scale[:, None]
    xr = tl.where(xs >= 0, tl.floor(xs + 0.5), -tl.floor(-xs + 0.5))  # round half away from zero
    xr = tl.minimum(tl.maximum(xr, -QMAX), QMAX)
    row_ok = rows < n
    tl.store(XI + bh * n * DP + rows[:, None] * DP + cols[None, :], xr.to(tl.int8), mask=row_ok[:, None])
    tl.store(S + bh * n + rows, scale, mask=row_ok)


_GROUP_LAYOUT = {  # (operand, granularity) -> (Tiles attribute = rows per tile, GROUP code, groups per tile)
    ("q", "per_thread"): ("warp_q", 0, 8),
    ("q", "per_warp"): ("warp_q", 2, 1),
    ("q", "per_block"): ("blk_q", 2, 1),
    ("k", "per_thread"): ("warp_k", 1, 4),
    ("k", "per_warp"): ("blk_k", 2, 1),
    ("k", "per_block"): ("blk_k", 2, 1),
}
FUSED_GRANULARITIES = ("per_thread", "per_warp", "per_block")


@torch.library.custom_op("attn_processors::sage_quant_rows", mutates_args=())
def sage_quant_rows(
    x: torch.Tensor, mean: torch.Tensor | None, mul: float, operand: str, gran: str, tile_rows: int,
    n_groups: int, d_pad: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused INT8 quantization of q or k ``[B, H, N, D]`` (last dim contiguous).

    Returns (int8 ``[B, H, N, d_pad]`` zero-padded, per-row scales ``[B, H, N]``, group scales
    ``[B, H, n_groups]``), equal to ``quantize_qk`` followed by padding and an int8 cast.
    """
    b, h, n, d = x.shape
    _, group, ng = _GROUP_LAYOUT[(operand, gran)]
    xi = torch.empty(b, h, n, d_pad, device=x.device, dtype=torch.int8)
    s = torch.empty(b, h, n, device=x.device, dtype=torch.float32)
    g = torch.full((b, h, n_groups), 1e-7, device=x.device, dtype=torch.float32)  # empty groups: 0/qmax + eps
    m = mean.reshape(b * h, d).contiguous().float() if mean is not None else s
    grid = (triton.cdiv(n, tile_rows), b * h)
    _quant_rows[grid](x, m, xi, s, g, n, h, n_groups, x.stride(0), x.stride(1), x.stride(2), mul,
                      D=d, DP=d_pad, T=tile_rows, GROUP=group, NG=ng, QMAX=127, HAS_MEAN=mean is not None)
    return xi, s, g


@sage_quant_rows.register_fake
def _(x, mean, mul, operand, gran, tile_rows, n_groups, d_pad):
    b, h, n, _ = x.shape
    return (x.new_empty(b, h, n, d_pad, dtype=torch.int8), x.new_empty(b, h, n, dtype=torch.float32),
            x.new_empty(b, h, n_groups, dtype=torch.float32))


def _launch(q_i8: torch.Tensor, k_i8: torch.Tensor, q_scale: torch.Tensor, k_scale: torch.Tensor,
            v_op: torch.Tensor, v_scale: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
            is_causal: bool, block_m: int, block_n: int) -> None:
    b, hq, nq, d = q_i8.shape
    hkv, nk = k_i8.shape[1], k_i8.shape[2]
    grid = (triton.cdiv(nq, block_m), b * hq)
    # 8 warps, 2 stages: no register spills on sm90 for D <= 128 with 64-key blocks (ptxas -v, sm_90a)
    launch = {} if INTERPRET else {"num_warps": 8 if block_m >= 128 else 4, "num_stages": 2}
    _sage_attn_fwd[grid](
        q_i8, k_i8, v_op, q_scale, k_scale, v_scale, out, lse,
        nq, nk, hq, hq // hkv,
        q_i8.stride(0), q_i8.stride(1), q_i8.stride(2), k_i8.stride(0), k_i8.stride(1), k_i8.stride(2),
        v_op.stride(0), v_op.stride(1), v_op.stride(2), out.stride(0), out.stride(1), out.stride(2),
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_D=d, PV_FP8=v_op.dtype == torch.float8_e4m3fn,
        CAUSAL=is_causal, EMULATE_FP8_CAST=INTERPRET, **launch,
    )


@torch.library.custom_op("attn_processors::sage_int8_attn", mutates_args=())
def sage_int8_attn(
    q_i8: torch.Tensor, k_i8: torch.Tensor, q_scale: torch.Tensor, k_scale: torch.Tensor,
    v_op: torch.Tensor, v_scale: torch.Tensor, is_causal: bool, out_dtype: torch.dtype,
    block_m: int, block_n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantized attention core on preprocessed operands (Dp a power of 2 >= 32).

    q_i8 ``[B, Hq, Nq, Dp]`` / k_i8 ``[B, Hkv, Nk, Dp]`` int8; q_scale ``[B, Hq, Nq]`` / k_scale
    ``[B, Hkv, Nk]`` fp32 per-row scales (log2 units); v_op float8_e4m3fn or float16, transposed
    ``[B, Hkv, Dp, Nk]`` with unit stride along Nk; v_scale ``[B, Hkv, Dp]`` fp32
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
    """tl.dot needs power-of-two tiles, >= 32 for INT8 MMA (k32): D=16 -> 32, D=40 -> 64, D=96 -> 128."""
    return max(32, 1 << (d - 1).bit_length())


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
    v_dtype = torch.float8_e4m3fn if pv == "fp8" else torch.float16  # vq is already on that grid
    v_op = torch.nn.functional.pad(vq, pad).to(v_dtype).transpose(-1, -2).contiguous()  # [B, Hkv, Dp, Nk]
    vs = torch.nn.functional.pad(v_scale[..., 0, :] / (P_SCALE if pv == "fp8" else 1.0), pad)
    out, lse = sage_int8_attn(q_i8, k_i8, pre["q_scale"].float(), pre["k_scale"].float(), v_op, vs.float(),
                              is_causal, out_dtype, block_m, block_n)
    return out[..., :d], lse


def quantize_qk_fused(q: torch.Tensor, k: torch.Tensor, spec: SageSpec, log2_scale: float) -> dict:
    """Kernel operands from the fused quantizer (same values as ``reference.quantize_qk``).

    Returns q_i8/k_i8 (int8, head dim zero-padded to a power of two), per-row scales, group scales
    (upstream's scale tensors) and the K mean ``[B, Hkv, 1, D]`` (None without smooth-K).
    """
    if spec.qk_gran not in FUSED_GRANULARITIES or spec.qk_bits != 8 or spec.smooth_q:
        raise ValueError(f"the fused quantizer does INT8 {FUSED_GRANULARITIES} without smooth-Q, got {spec}")
    dp = pad_head_dim(q.shape[-1])
    km = k.mean(dim=-2, keepdim=True, dtype=torch.float32) if spec.smooth_k else None  # no fp32 copy of K
    res: dict = {"k_mean": km}
    for name, x, mean, mul, count in (
        ("q", q, None, log2_scale, q_scale_count(q.shape[-2], spec.qk_gran, spec.tiles)),
        ("k", k, km, 1.0, k_scale_count(k.shape[-2], spec.qk_gran, spec.tiles)),
    ):
        x = x if x.stride(-1) == 1 else x.contiguous()
        rows = getattr(spec.tiles, _GROUP_LAYOUT[(name, spec.qk_gran)][0])
        xi, s, g = sage_quant_rows(x, mean, float(mul), name, spec.qk_gran, rows, count, dp)
        res.update({f"{name}_i8": xi, f"{name}_scale": s, f"{name}_scale_groups": g})
    return res


def quantize_v_operand(
    v: torch.Tensor, pv: str, v_scale_max: float, d_pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """V as the kernel reads it: FP8 (per-channel scale, /448 folded in) or FP16, as ``[B, H, Dp, N]``.

    Same values as ``reference.quantize_v``; zero-padded channels stay exactly zero.
    """
    vf = torch.nn.functional.pad(v.float(), (0, d_pad - v.shape[-1]))
    if pv == "fp8":
        amax = vf.abs().amax(dim=-2, keepdim=True)  # [B, H, 1, Dp]
        scale = torch.where(amax > 0, amax / v_scale_max, torch.ones_like(amax))
        v_op = (vf / scale).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
        vs = scale[..., 0, :] / P_SCALE
    else:
        v_op = vf.clamp_(-65504.0, 65504.0).half()
        vs = torch.ones(vf.shape[:-2] + (d_pad,), device=v.device)
    return v_op.transpose(-1, -2).contiguous(), vs


def run_fused(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: SageSpec, log2_scale: float, is_causal: bool,
    out_dtype: torch.dtype, block_m: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Fused quantization + attention kernel: (out ``[B, Hq, Nq, D]``, smoothed lse, K mean or None)."""
    pre = quantize_qk_fused(q, k, spec, log2_scale)
    dp = pre["q_i8"].shape[-1]
    v_op, vs = quantize_v_operand(v, spec.pv, spec.v_scale_max, dp)
    out, lse = sage_int8_attn(pre["q_i8"], pre["k_i8"], pre["q_scale"], pre["k_scale"], v_op, vs.float(),
                              is_causal, out_dtype, block_m, spec.tiles.blk_k)
    return out[..., : q.shape[-1]], lse, pre["k_mean"]
