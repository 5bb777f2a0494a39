"""SageAttention2 release recipe as a tuned Triton kernel pair (issue 20): preprocessing + attention.

Why a second kernel: ``triton_kernel`` (the first, kept as the reference implementation of the same
recipe) matched the simulator on an H200 but ran at 0.56-0.62x of cuDNN SDPA, with 7-13 % of the
time in preprocessing. This one changes what costs time, not the maths:

- **one fused quantization launch** (``_sage2_quant``) for Q, K and V: INT8 Q (sm_scale * log2 e
  folded in) and smoothed INT8 K with per-thread / per-warp / per-block group scales expanded per
  row, and per-channel FP8 V written transposed ``[D, N]`` (the K-major B operand FP8 WGMMA needs);
  only the K mean and the V channel range come from two torch reductions before it;
- K, its scales and V^T are zero-padded to a multiple of 128 keys, so the key loop loads without
  masks; the loop is split into an unmasked body and a masked tail (sequence end, causal diagonal,
  per-sample kv length of a padded batch);
- Q is loaded once per program and stays in registers (no re-reads across key blocks);
- exp2 with log2(e) already in Q's scale, and the FP8 P scale folded into the exponent
  (``exp2(s - m + log2 448)`` = 448 * P, upstream's ``S_FP8_OFFSET``) instead of a multiply;
- tile sizes, warps and software-pipelining depth (``num_stages``) autotuned over a per-architecture
  config space (``CONFIGS``: sm90 / sm89 / sm80); under ``TRITON_INTERPRET=1`` one fixed config.

Two-level accumulation as in the spec: each key block's FP8 P~V starts from a zero accumulator
(promoted to fp32 once per block with ``max_num_imprecise_acc=BLOCK_N`` on sm90) and is added into
the fp32 output accumulator. The denominator is summed from unrounded fp32 448 * P.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .quant import FP8_E4M3_MAX, Tiles

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
KEY_PAD = 128  # K / K scales / V^T are padded to this many keys: unmasked loads for every BLOCK_N <= 128
QUANT_ROWS = 128  # rows per program of the quantization kernel (a multiple of every group size)
QUANT_WARPS = 8  # sm_90a, D=128: 208 B of spills with 8 warps vs 1.6 KB with 4 (sage_ptx_check)
P_OFFSET = math.log2(448.0)  # exp2(s - m + P_OFFSET) = 448 * P~: the static FP8 scale of P~

# Config space per architecture: (BLOCK_M, BLOCK_N, num_warps, num_stages). BLOCK_N is also the
# two-level accumulation block (fresh FP8 accumulator per BLOCK_N keys), so it changes rounding
# slightly; gpu_sage_check.py's parity step (not yet run on a GPU) gates the autotuned choice at relL1 0.01.
CONFIGS: dict[str, list[tuple[int, int, int, int]]] = {
    # Hopper: WGMMA wants 64-row warpgroup tiles; 2 warpgroups x 64 rows; deeper K/V pipelines (TMA-less
    # cp.async) hide HBM latency; 128-key blocks halve the loop overhead when registers allow.
    # (128, 64, 4, 3) was dropped: ptxas spills 1 KB at D=128 (benchmarks/results/sage_ptx_sm90a.json).
    "sm90": [(128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 128, 8, 3)],
    # Ada: mma.sync FP8 (m16n8k32), 101 KB shared memory: smaller stage counts.
    "sm89": [(128, 64, 8, 2), (128, 64, 4, 2), (64, 64, 4, 3), (128, 32, 4, 3)],
    # Ampere: FP16 P.V (no FP8 tensor cores), INT8 mma.sync for Q.K.
    "sm80": [(128, 64, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 4, 4)],
}
INTERPRET_CONFIG = (64, 64, 4, 1)


def arch_configs(arch: str) -> list[tuple[int, int, int, int]]:
    """The autotuning space of ``arch`` (sm86 tunes like sm80, sm120 like sm89)."""
    key = {"sm86": "sm80", "sm120": "sm89"}.get(arch, arch)
    if key not in CONFIGS:
        raise ValueError(f"no Triton config space for arch {arch!r}; "
                         f"choose one of {tuple(CONFIGS)}, sm86 or sm120")
    return CONFIGS[key]


# ---------------------------------------------------------------------------------------------- quantization


@triton.jit
def _round_e4m3_signed(x):
    """RTNE onto the E4M3 grid in exact fp32 (the interpreter's own fp8 cast is defective)."""
    a = tl.abs(x)
    bits = a.to(tl.int32, bitcast=True)
    ulp = tl.maximum((bits & 0x7F800000) - (3 << 23), (127 - 9) << 23).to(tl.float32, bitcast=True)
    r = ((a / ulp + 12582912.0) - 12582912.0) * ulp
    return tl.where(x < 0, -r, r)


@triton.jit
def _group_scales(r, R: tl.constexpr, W: tl.constexpr, KIND: tl.constexpr, QMAX: tl.constexpr):
    """Per-row scales from row amax ``r`` [R]: ``amax(group) / QMAX + 1e-7`` broadcast to the group's rows.

    KIND 0: Q per-thread (in each W-row warp tile, rows i % 8 share a scale); 1: K per-thread (in each
    W-row block, rows with equal (i % 8) // 2 share one); 2: every W consecutive rows share one.
    """
    if KIND == 0:
        g = tl.max(tl.reshape(r, (R // W, W // 8, 8)), axis=1)
        s = tl.reshape(tl.broadcast_to(g[:, None, :], (R // W, W // 8, 8)), (R,))
    elif KIND == 1:
        g = tl.max(tl.max(tl.reshape(r, (R // W, W // 8, 4, 2)), axis=3), axis=1)
        s = tl.reshape(tl.broadcast_to(g[:, None, :, None], (R // W, W // 8, 4, 2)), (R,))
    else:
        g = tl.max(tl.reshape(r, (R // W, W)), axis=1)
        s = tl.reshape(tl.broadcast_to(g[:, None], (R // W, W)), (R,))
    return s / QMAX + 1e-7


@triton.jit
def _quant_int8(x, R: tl.constexpr, W: tl.constexpr, KIND: tl.constexpr):
    """(int8 values, per-row scales) of fp32 rows ``x`` [R, DP]; round half away from zero as upstream."""
    scale = _group_scales(tl.max(tl.abs(x), 1), R, W, KIND, 127.0)
    xs = x / scale[:, None]
    xr = tl.where(xs >= 0, tl.floor(xs + 0.5), -tl.floor(-xs + 0.5))
    return tl.minimum(tl.maximum(xr, -127.0), 127.0).to(tl.int8), scale


@triton.jit
def _sage2_quant(
    Q, K, V, KMEAN, VAMAX, QLEN, KLEN, QI, QS, KI, KS, VT,
    n_q, n_k, n_kp, hq, hkv, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, mul, v_max,
    D: tl.constexpr, DP: tl.constexpr, R: tl.constexpr, WQ: tl.constexpr, KIND_Q: tl.constexpr,
    WK: tl.constexpr, KIND_K: tl.constexpr, SMOOTH_K: tl.constexpr, PV_FP8: tl.constexpr,
    VARLEN: tl.constexpr, EMULATE_FP8_CAST: tl.constexpr,
):
    """One launch for all three operands: grid (row tiles, B * Hq, 3); axis 2 = 0: Q, 1: K, 2: V.

    Rows past the (per-sample) length are written as zeros up to the padded key count ``n_kp``.
    """
    t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // hq
    h = bh % hq
    rows = t * R + tl.arange(0, R)
    cols = tl.arange(0, DP)
    col_ok = cols < D
    if tl.program_id(2) == 0:
        nq_b = n_q
        if VARLEN:
            nq_b = tl.load(QLEN + b)
        if t * R < n_q:
            ok = (rows < nq_b)[:, None] & col_ok[None, :]
            x = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqn + cols[None, :], mask=ok, other=0.0)
            xi, s = _quant_int8(x.to(tl.float32) * mul, R, WQ, KIND_Q)
            dst = rows < n_q
            tl.store(QI + (bh * n_q + rows[:, None]) * DP + cols[None, :], xi, mask=dst[:, None])
            tl.store(QS + bh * n_q + rows, s, mask=dst)
    elif (h < hkv) & (t * R < n_kp):
        nk_b = n_k
        if VARLEN:
            nk_b = tl.load(KLEN + b)
        kvh = b * hkv + h
        valid = rows < nk_b
        ok = valid[:, None] & col_ok[None, :]
        dst = rows < n_kp
        if tl.program_id(2) == 1:
            _quant_k(K, KMEAN, KI, KS, b, h, kvh, rows, cols, col_ok, valid, ok, dst, skb, skh, skn, n_kp,
                     D, DP, R, WK, KIND_K, SMOOTH_K)
        else:
            _quant_v(V, VAMAX, VT, b, h, kvh, rows, cols, col_ok, ok, dst, svb, svh, svn, n_kp, v_max, D, DP,
                     PV_FP8, EMULATE_FP8_CAST)


@triton.jit
def _quant_k(K, KMEAN, KI, KS, b, h, kvh, rows, cols, col_ok, valid, ok, dst, skb, skh, skn, n_kp,
             D: tl.constexpr, DP: tl.constexpr, R: tl.constexpr, WK: tl.constexpr, KIND_K: tl.constexpr,
             SMOOTH_K: tl.constexpr):
    """One tile of smoothed INT8 K and its per-row scales (zero rows past the sample's keys)."""
    x = tl.load(K + b * skb + h * skh + rows[:, None] * skn + cols[None, :], mask=ok, other=0.0)
    x = x.to(tl.float32)
    if SMOOTH_K:  # exact for softmax: every logit of a row shifts by the same q . mean(K)
        mu = tl.load(KMEAN + kvh * D + cols, mask=col_ok, other=0.0)
        x = tl.where(ok, x - mu[None, :], 0.0)
    xi, s = _quant_int8(x, R, WK, KIND_K)
    tl.store(KI + (kvh * n_kp + rows[:, None]) * DP + cols[None, :], xi, mask=dst[:, None])
    tl.store(KS + kvh * n_kp + rows, tl.where(valid, s, 0.0), mask=dst)


@triton.jit
def _quant_v(V, VAMAX, VT, b, h, kvh, rows, cols, col_ok, ok, dst, svb, svh, svn, n_kp, v_max,
             D: tl.constexpr, DP: tl.constexpr, PV_FP8: tl.constexpr, EMULATE_FP8_CAST: tl.constexpr):
    """One tile of V, per-channel FP8 (or FP16), stored transposed [DP, n_kp]."""
    v = tl.load(V + b * svb + h * svh + rows[:, None] * svn + cols[None, :], mask=ok, other=0.0)
    v = v.to(tl.float32)
    vt_ptr = VT + (kvh * DP + cols[None, :]) * n_kp + rows[:, None]  # transposed [DP, n_kp]
    if PV_FP8:  # per-channel scale = amax / v_max (1 for an all-zero channel), as the simulator
        amax = tl.load(VAMAX + kvh * D + cols, mask=col_ok, other=0.0)
        vs = tl.where(amax > 0, amax / v_max, 1.0)
        v = tl.minimum(tl.maximum(v / vs[None, :], -448.0), 448.0)
        if EMULATE_FP8_CAST:
            v = _round_e4m3_signed(v)
        tl.store(vt_ptr, v.to(tl.float8e4nv), mask=dst[:, None])
    else:
        v = tl.minimum(tl.maximum(v, -65504.0), 65504.0)
        tl.store(vt_ptr, v.to(tl.float16), mask=dst[:, None])


# ---------------------------------------------------------------------------------------------- attention


@triton.jit
def _round_e4m3(x):
    bits = x.to(tl.int32, bitcast=True)
    ulp = tl.maximum((bits & 0x7F800000) - (3 << 23), (127 - 9) << 23).to(tl.float32, bitcast=True)
    return ((x / ulp + 12582912.0) - 12582912.0) * ulp


@triton.jit
def _key_blocks(
    acc, l_i, m_i, q, qs, k_ptr, ks_ptr, vt_ptr, lo, hi, nk_b, offs_m, offs_n, offs_d, n_kp,
    DP: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr, PV_FP8: tl.constexpr,
    EMULATE_FP8_CAST: tl.constexpr, P_OFF: tl.constexpr,
):
    """Online softmax over key blocks [lo, hi); the unmasked body skips every mask instruction."""
    for start in range(lo, hi, BLOCK_N):
        cols = start + offs_n
        k = tl.load(k_ptr + cols[:, None] * DP + offs_d[None, :])  # padded: in bounds
        ks = tl.load(ks_ptr + cols)
        s = tl.dot(q, tl.trans(k), out_dtype=tl.int32).to(tl.float32) * qs[:, None] * ks[None, :]
        if MASKED:
            keep = cols[None, :] < nk_b
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None])
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - (m_new - P_OFF)[:, None])  # 448 * P~ for FP8, P~ for FP16 (P_OFF = 0)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.trans(tl.load(vt_ptr + offs_d[:, None] * n_kp + cols[None, :]))  # [BLOCK_N, DP]
        if PV_FP8:
            if EMULATE_FP8_CAST:
                p = _round_e4m3(p)
            blk = tl.dot(p.to(tl.float8e4nv), v, max_num_imprecise_acc=BLOCK_N)  # fresh accumulator
        else:
            blk = tl.dot(p.to(tl.float16), v)
        acc = acc * alpha[:, None] + blk  # outer accumulation in true fp32
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _sage2_fwd(
    QI, QS, KI, KS, VT, VS, Out, LSE, QLEN, KLEN,
    n_q, n_k, n_kp, n_heads, kv_group, sob, soh, son,
    D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PV_FP8: tl.constexpr, CAUSAL: tl.constexpr, VARLEN: tl.constexpr, EMULATE_FP8_CAST: tl.constexpr,
    P_OFF: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // n_heads
    h = bh % n_heads
    kvh = b * (n_heads // kv_group) + h // kv_group  # GQA
    nq_b = n_q
    nk_b = n_k
    if VARLEN:  # padded batch: sample b has nq_b queries and nk_b keys
        nq_b = tl.load(QLEN + b)
        nk_b = tl.load(KLEN + b)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, DP)
    row_ok = offs_m < n_q
    q = tl.load(QI + (bh * n_q + offs_m[:, None]) * DP + offs_d[None, :], mask=row_ok[:, None], other=0)
    qs = tl.load(QS + bh * n_q + offs_m, mask=row_ok, other=0.0)
    k_ptr = KI + kvh * n_kp * DP
    ks_ptr = KS + kvh * n_kp
    vt_ptr = VT + kvh * DP * n_kp

    hi = nk_b
    if CAUSAL:
        hi = tl.minimum(hi, (pid_m + 1) * BLOCK_M)
    hi = tl.where(pid_m * BLOCK_M < nq_b, hi, 0)  # programs past a sample's queries do no work
    lo = (hi // BLOCK_N) * BLOCK_N  # full blocks: no masks
    if CAUSAL:
        lo = tl.minimum(lo, (pid_m * BLOCK_M // BLOCK_N) * BLOCK_N)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DP], tl.float32)
    acc, l_i, m_i = _key_blocks(acc, l_i, m_i, q, qs, k_ptr, ks_ptr, vt_ptr, 0, lo, nk_b, offs_m, offs_n,
                                offs_d, n_kp, DP, False, CAUSAL, BLOCK_N, PV_FP8, EMULATE_FP8_CAST, P_OFF)
    acc, l_i, m_i = _key_blocks(acc, l_i, m_i, q, qs, k_ptr, ks_ptr, vt_ptr, lo, hi, nk_b, offs_m, offs_n,
                                offs_d, n_kp, DP, True, CAUSAL, BLOCK_N, PV_FP8, EMULATE_FP8_CAST, P_OFF)
    vs = tl.load(VS + kvh * DP + offs_d)  # per-channel V scale (1 for FP16 P.V)
    live = offs_m < nq_b
    out = tl.where(live[:, None], acc / l_i[:, None] * vs[None, :], 0.0)
    tl.store(Out + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d < D)[None, :])
    lse = tl.where(live, (m_i + tl.math.log2(l_i) - P_OFF) * 0.6931471805599453, 0.0)
    tl.store(LSE + bh * n_q + offs_m, lse, mask=row_ok)


# ---------------------------------------------------------------------------------------------- host side

_Q_LAYOUT = {"per_thread": ("warp_q", 0), "per_warp": ("warp_q", 2), "per_block": ("blk_q", 2)}
_K_LAYOUT = {"per_thread": ("warp_k", 1), "per_warp": ("blk_k", 2), "per_block": ("blk_k", 2)}
GRANULARITIES = tuple(_Q_LAYOUT)


def pad_head_dim(d: int) -> int:
    """INT8 MMA needs k >= 32 and tl.dot power-of-two tiles: D=40 -> 64, D=96 -> 128."""
    return max(32, 1 << (d - 1).bit_length())


def padded_keys(n_k: int) -> int:
    """Key count of the padded K / V^T buffers (a multiple of KEY_PAD)."""
    return -(-n_k // KEY_PAD) * KEY_PAD


def _lengths(
    lens: torch.Tensor | None, b: int, n: int, name: str, device: torch.device
) -> torch.Tensor | None:
    """Validated per-sample lengths as int32 on ``device`` (None passes through)."""
    if lens is None:
        return None
    if lens.shape != (b,) or lens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be an integer tensor of shape ({b},), "
                         f"got {lens.dtype} {tuple(lens.shape)}")
    lo, hi = int(lens.min()), int(lens.max())
    if lo < 1 or hi > n:
        raise ValueError(f"{name} must lie in [1, {n}] (the padded length), got min {lo}, max {hi}")
    return lens.to(device=device, dtype=torch.int32).contiguous()


def _kv_stats(
    k: torch.Tensor, v: torch.Tensor, k_lens: torch.Tensor | None, smooth_k: bool
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """K token mean (smooth-K) and V channel |max| over each sample's valid keys, fp32 [B, Hkv, D]."""
    if k_lens is None:
        km = k.mean(dim=-2, dtype=torch.float32) if smooth_k else None
        lo, hi = torch.aminmax(v, dim=-2)  # one pass, no |v| temporary
        return km, torch.maximum(-lo.float(), hi.float())
    valid = (torch.arange(k.shape[-2], device=k.device)[None, :] < k_lens[:, None].long())[:, None, :, None]
    km = None
    if smooth_k:
        km = torch.where(valid, k.float(), 0.0).sum(dim=-2) / k_lens.float()[:, None, None]
    vamax = torch.where(valid, v.float().abs(), 0.0).amax(dim=-2)
    return km, vamax


def quantize(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, tiles: Tiles, gran: str, smooth_k: bool, pv: str,
    log2_scale: float, q_lens: torch.Tensor | None = None, k_lens: torch.Tensor | None = None,
    v_scale_max: float = FP8_E4M3_MAX,
) -> dict[str, torch.Tensor | None]:
    """All kernel operands from one fused Triton launch (after the K-mean / V-range reductions).

    q ``[B, Hq, Nq, D]``, k/v ``[B, Hkv, Nk, D]`` (any strides with a unit last one). Returns q_i8
    ``[B, Hq, Nq, Dp]``, q_scale ``[B, Hq, Nq]``, k_i8 ``[B, Hkv, Nkp, Dp]``, k_scale ``[B, Hkv, Nkp]``,
    v_t ``[B, Hkv, Dp, Nkp]`` (FP8 or FP16), v_scale ``[B, Hkv, Dp]`` and the K mean ``[B, Hkv, 1, D]``;
    values equal ``reference.quantize_qk`` / ``quantize_v`` on each sample's valid rows.
    """
    if gran not in GRANULARITIES:
        raise ValueError(f"qk_gran must be one of {GRANULARITIES} for the fused kernel, got {gran!r}")
    if pv not in ("fp8", "fp16"):
        raise ValueError(f"pv must be 'fp8' or 'fp16' for the fused kernel, got {pv!r}")
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    dp, nkp = pad_head_dim(d), padded_keys(nk)
    dev = q.device
    q_lens = _lengths(q_lens, b, nq, "q_lens", dev)
    k_lens = _lengths(k_lens, b, nk, "k_lens", dev)
    if k_lens is not None and q_lens is None:  # the varlen kernels read both
        q_lens = torch.full((b,), nq, device=dev, dtype=torch.int32)
    km, vamax = _kv_stats(k, v, k_lens, smooth_k)
    out = {
        "q_i8": torch.empty(b, hq, nq, dp, device=dev, dtype=torch.int8),
        "q_scale": torch.empty(b, hq, nq, device=dev, dtype=torch.float32),
        "k_i8": torch.empty(b, hkv, nkp, dp, device=dev, dtype=torch.int8),
        "k_scale": torch.empty(b, hkv, nkp, device=dev, dtype=torch.float32),
        "v_t": torch.empty(b, hkv, dp, nkp, device=dev,
                           dtype=torch.float8_e4m3fn if pv == "fp8" else torch.float16),
    }
    if dp > d:  # padded V channels: the kernel multiplies them by their scale, keep them zero
        out["v_t"][:, :, d:].zero_()
    dummy = out["q_scale"]
    wq, kind_q = _Q_LAYOUT[gran]
    wk, kind_k = _K_LAYOUT[gran]
    grid = (triton.cdiv(max(nq, nkp), QUANT_ROWS), b * hq, 3)
    _sage2_quant[grid](
        q, k, v, km.contiguous() if km is not None else dummy, vamax.contiguous(),
        q_lens if q_lens is not None else dummy, k_lens if k_lens is not None else dummy,
        out["q_i8"], out["q_scale"], out["k_i8"], out["k_scale"], out["v_t"],
        nq, nk, nkp, hq, hkv, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), float(log2_scale), float(v_scale_max),
        D=d, DP=dp, R=QUANT_ROWS, WQ=getattr(tiles, wq), KIND_Q=kind_q, WK=getattr(tiles, wk), KIND_K=kind_k,
        SMOOTH_K=smooth_k, PV_FP8=pv == "fp8", VARLEN=k_lens is not None, EMULATE_FP8_CAST=INTERPRET,
        **({} if INTERPRET else {"num_warps": QUANT_WARPS}),
    )
    vs = torch.ones(b, hkv, dp, device=dev)
    if pv == "fp8":
        vs[..., :d] = torch.where(vamax > 0, vamax / v_scale_max, 1.0)
    out["v_scale"] = vs
    out["k_mean"] = km[:, :, None] if km is not None else None
    return out


_TUNED: dict[str, object] = {}


def _autotuned(arch: str):
    """``_sage2_fwd`` wrapped in ``triton.autotune`` over ``arch``'s config space (built once per arch)."""
    if arch not in _TUNED:
        configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
                   for m, n, w, s in arch_configs(arch)]
        _TUNED[arch] = triton.autotune(configs, key=["n_q", "n_kp", "D", "PV_FP8", "CAUSAL", "VARLEN"])(
            _sage2_fwd)
    return _TUNED[arch]


def best_config(arch: str) -> dict | None:
    """The autotuner's choice for the last shape it tuned on ``arch`` (benchmarks record it)."""
    tuned = _TUNED.get(arch)
    cfg = getattr(tuned, "best_config", None)
    if cfg is None:
        return None
    return {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def attention(
    ops: dict, *, n_q: int, n_k: int, d: int, is_causal: bool, out_dtype: torch.dtype, arch: str | None,
    config: tuple[int, int, int, int] | None = None, q_lens: torch.Tensor | None = None,
    k_lens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the attention kernel on ``quantize`` output: (out ``[B, Hq, Nq, D]``, lse ``[B, Hq, Nq]``).

    ``config`` (BLOCK_M, BLOCK_N, warps, stages) pins one config; None autotunes over ``arch``'s space
    (the interpreter always runs ``INTERPRET_CONFIG``). The LSE is of the smoothed logits, natural log.
    """
    qi = ops["q_i8"]
    b, hq, _, dp = qi.shape
    hkv, nkp = ops["k_i8"].shape[1], ops["k_i8"].shape[2]
    out = torch.empty(b, hq, n_q, d, device=qi.device, dtype=out_dtype)
    lse = torch.empty(b, hq, n_q, device=qi.device, dtype=torch.float32)
    pv_fp8 = ops["v_t"].dtype == torch.float8_e4m3fn
    varlen = k_lens is not None
    if varlen and q_lens is None:
        q_lens = torch.full((b,), n_q, device=qi.device, dtype=torch.int32)
    lens = (q_lens if varlen else ops["q_scale"], k_lens if varlen else ops["q_scale"])
    args = (qi, ops["q_scale"], ops["k_i8"], ops["k_scale"], ops["v_t"], ops["v_scale"], out, lse, *lens,
            n_q, n_k, nkp, hq, hq // hkv, out.stride(0), out.stride(1), out.stride(2))
    const = dict(D=d, DP=dp, PV_FP8=pv_fp8, CAUSAL=is_causal, VARLEN=varlen, EMULATE_FP8_CAST=INTERPRET,
                 P_OFF=P_OFFSET if pv_fp8 else 0.0)
    if INTERPRET or config is not None:
        m, n, w, s = config or INTERPRET_CONFIG
        launch = {} if INTERPRET else {"num_warps": w, "num_stages": s}
        _sage2_fwd[(triton.cdiv(n_q, m), b * hq)](*args, BLOCK_M=m, BLOCK_N=n, **const, **launch)
    else:
        if arch is None:
            raise ValueError("attention() needs arch (e.g. 'sm90') to autotune, or an explicit config")
        _autotuned(arch)[lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]), b * hq)](*args, **const)
    return out, lse


@torch.library.custom_op("attn_processors::sage2_fused", mutates_args=())
def sage2_fused(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gran: str, tile_q: int, warp_q: int, tile_k: int,
    warp_k: int, smooth_k: bool, pv: str, log2_scale: float, is_causal: bool, out_dtype: torch.dtype,
    arch: str, block_n: int, q_lens: torch.Tensor | None = None, k_lens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Preprocessing + attention as one graph-safe op (``torch.compile`` sees a fake, not Triton).

    ``block_n`` 0 autotunes (CUDA); > 0 pins BLOCK_N (the interpreter's parity tests, GPU parity).
    ``k_lens`` ``[B]`` int32: keys past ``k_lens[b]`` of sample b are padding (varlen batch).
    Returns (out ``[B, Hq, Nq, D]``, lse of the smoothed logits ``[B, Hq, Nq]``, K mean ``[B, Hkv, D]``
    that smooth-K subtracted, zeros without smooth-K: the caller's LSE correction).
    """
    tiles = Tiles(tile_q, warp_q, tile_k, warp_k)
    ops = quantize(q, k, v, tiles=tiles, gran=gran, smooth_k=smooth_k, pv=pv, log2_scale=log2_scale,
                   q_lens=q_lens, k_lens=k_lens)
    config = None
    if block_n:
        config = (INTERPRET_CONFIG[0], block_n, *INTERPRET_CONFIG[2:]) if INTERPRET else (128, block_n, 8, 2)
    k_lens = _lengths(k_lens, q.shape[0], k.shape[-2], "k_lens", q.device)
    q_lens = _lengths(q_lens, q.shape[0], q.shape[-2], "q_lens", q.device)
    out, lse = attention(ops, n_q=q.shape[-2], n_k=k.shape[-2], d=q.shape[-1], is_causal=is_causal,
                         out_dtype=out_dtype, arch=arch, config=config, q_lens=q_lens, k_lens=k_lens)
    km = ops["k_mean"]
    if km is None:
        return out, lse, q.new_zeros(k.shape[0], k.shape[1], k.shape[-1], dtype=torch.float32)
    km = km[:, :, 0]
    return out, lse, km


@sage2_fused.register_fake
def _(q, k, v, gran, tile_q, warp_q, tile_k, warp_k, smooth_k, pv, log2_scale, is_causal, out_dtype, arch,
      block_n, q_lens=None, k_lens=None):
    b, hq, nq, d = q.shape
    return (q.new_empty(b, hq, nq, d, dtype=out_dtype), q.new_empty(b, hq, nq, dtype=torch.float32),
            q.new_empty(k.shape[0], k.shape[1], k.shape[-1], dtype=torch.float32))
