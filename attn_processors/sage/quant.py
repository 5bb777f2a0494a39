"""SageAttention2 quantization maths: group maps, smoothing, INT8/INT4 and FP8 rounding.

Everything here is a pure function on ``[B, H, N, D]`` tensors that returns new tensors; the
caller's q/k/v are never written (SageAttention 1.0.6 subtracted the K mean in place).

Paper map (arXiv 2411.10958 v3, "SageAttention2"):
- Sec. 3.1 smooth K (exact, softmax is shift-invariant per row)  -> ``smooth_k``
- Sec. 3.1 smooth Q with ``dS = mean(Q_i) gamma(K)^T``            -> ``smooth_q``
- Sec. 3.2 per-thread INT4/INT8 groups (mma fragment ownership)    -> ``q_group_index`` / ``k_group_index``
- Sec. 3.3 P~ -> FP8 E4M3 with the static scale 448                -> ``round_fp8_e4m3`` (``P_SCALE``)
- Sec. 3.3 per-channel FP8 V                                        -> ``quant_v_per_channel``
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

Granularity = Literal[
    "per_thread",  # mma-fragment groups: 8 Q scales per warp, 4 K scales per WARPK rows (SageAttn2)
    "per_warp",  # one Q scale per WARPQ rows, one K scale per BLKK rows (sm120 upstream)
    "per_block",  # one scale per BLKQ / BLKK rows (SageAttn1, sm86 Triton)
    "per_token",  # one scale per row (paper's comparison point, not a kernel layout)
]
GRANULARITIES: tuple[str, ...] = ("per_thread", "per_warp", "per_block", "per_token")

P_SCALE = 448.0  # FP8 E4M3 max: P~ in [0, 1] is stored as 448 * P~ (upstream S_FP8_OFFSET = log2 448)
FP8_E4M3_MAX = 448.0
QUANT_EPS = 1e-7  # upstream adds 1e-7 to amax / qmax so an all-zero group gets a finite scale
LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class Tiles:
    """Kernel tile sizes that fix the quantization groups (rows of Q / K per scale)."""

    blk_q: int  # BLKQ: query rows per CTA
    warp_q: int  # WARPQ: query rows per warp (per-thread/per-warp groups live inside it)
    blk_k: int  # BLKK: key rows per pipeline stage; also the two-level P.V accumulation block
    warp_k: int  # WARPK: key rows whose per-thread groups repeat

    def __post_init__(self) -> None:
        for name in ("blk_q", "warp_q", "blk_k", "warp_k"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Tiles.{name} must be positive, got {getattr(self, name)}")
        if self.blk_q % self.warp_q or self.warp_q % 8:
            raise ValueError(f"need warp_q % 8 == 0 and blk_q % warp_q == 0, got {self}")
        if self.blk_k % self.warp_k or self.warp_k % 8:
            raise ValueError(f"need warp_k % 8 == 0 and blk_k % warp_k == 0, got {self}")


@dataclass(frozen=True)
class ArchPreset:
    """What upstream ``sageattn()`` runs on one GPU architecture (its per-architecture kernel switch)."""

    name: str
    tiles: Tiles
    qk_gran: str
    pv: Literal["fp8", "fp16"]  # dtype of the P.V MMA
    pv_accum: str  # upstream pv_accum_dtype of that kernel
    v_scale_max: float  # 448, or 2.25 when the inner accumulator is FP16 ("fp32+fp16", SageAttn2++)


Arch = Literal[
    "sm80",  # A100
    "sm86",  # A6000 / RTX 3090
    "sm89",  # L40 / RTX 4090
    "sm90",  # H100 / H20 / H200
    "sm120",  # RTX 50xx
]
ARCH_PRESETS: dict[str, ArchPreset] = {
    # A100: sageattn_qk_int8_pv_fp16_cuda, fp32 accumulation
    "sm80": ArchPreset("sm80", Tiles(128, 32, 64, 64), "per_thread", "fp16", "fp32", FP8_E4M3_MAX),
    # A6000/3090: sageattn_qk_int8_pv_fp16_triton, per-block groups (WARPQ unused, set = BLKQ)
    "sm86": ArchPreset("sm86", Tiles(128, 128, 64, 64), "per_block", "fp16", "fp16+fp32", FP8_E4M3_MAX),
    # L40/4090: sageattn_qk_int8_pv_fp8_cuda with fp32+fp16 (SageAttn2++): V range 2.25
    "sm89": ArchPreset("sm89", Tiles(128, 32, 64, 64), "per_thread", "fp8", "fp32+fp16", 2.25),
    # H100/H20/H200: sageattn_qk_int8_pv_fp8_cuda_sm90 (WGMMA), two-level fp32+fp32
    "sm90": ArchPreset("sm90", Tiles(64, 16, 128, 128), "per_thread", "fp8", "fp32+fp32", FP8_E4M3_MAX),
    # RTX 50xx: same fp8 kernel as sm89 but per-warp groups
    "sm120": ArchPreset("sm120", Tiles(128, 32, 64, 64), "per_warp", "fp8", "fp32+fp16", 2.25),
}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def q_group_index(n: int, gran: str, tiles: Tiles, device: torch.device | None = None) -> torch.Tensor:
    """Scale-group index of each query row, ``[n]`` int64.

    per_thread: ``(i // WARPQ) * 8 + i % 8`` -- rows r, r+8, r+16, ... of a warp share a scale
    because one thread of ``mma.m16n8k32`` holds exactly those accumulator rows.
    """
    i = torch.arange(n, device=device)
    if gran == "per_thread":
        return (i // tiles.warp_q) * 8 + i % 8
    if gran == "per_warp":
        return i // tiles.warp_q
    if gran == "per_block":
        return i // tiles.blk_q
    if gran == "per_token":
        return i
    raise ValueError(f"unknown granularity {gran!r}; choose one of {GRANULARITIES}")


def k_group_index(n: int, gran: str, tiles: Tiles, device: torch.device | None = None) -> torch.Tensor:
    """Scale-group index of each key row, ``[n]`` int64.

    per_thread: ``(j // WARPK) * 4 + (j % 8) // 2`` -- the row pairs {8m+2t, 8m+2t+1} are the
    B-fragment columns one thread owns, so 4 scales repeat every 8 rows of a WARPK block.
    per_warp keeps one K scale per BLKK block (upstream ``per_warp_int8``).
    """
    j = torch.arange(n, device=device)
    if gran == "per_thread":
        return (j // tiles.warp_k) * 4 + (j % 8) // 2
    if gran in ("per_warp", "per_block"):
        return j // tiles.blk_k
    if gran == "per_token":
        return j
    raise ValueError(f"unknown granularity {gran!r}; choose one of {GRANULARITIES}")


def q_scale_count(n: int, gran: str, tiles: Tiles) -> int:
    """Length of upstream's Q scale tensor: ``ceil(N/BLKQ) * (BLKQ/WARPQ) * 8`` for per_thread."""
    blocks = _ceil_div(n, tiles.blk_q)
    per_block = {"per_thread": (tiles.blk_q // tiles.warp_q) * 8, "per_warp": tiles.blk_q // tiles.warp_q,
                 "per_block": 1}
    if gran == "per_token":
        return n
    if gran not in per_block:
        raise ValueError(f"unknown granularity {gran!r}; choose one of {GRANULARITIES}")
    return blocks * per_block[gran]


def k_scale_count(n: int, gran: str, tiles: Tiles) -> int:
    """Length of upstream's K scale tensor: ``ceil(N/BLKK) * (BLKK/WARPK) * 4`` for per_thread."""
    blocks = _ceil_div(n, tiles.blk_k)
    if gran == "per_thread":
        return blocks * (tiles.blk_k // tiles.warp_k) * 4
    if gran in ("per_warp", "per_block"):
        return blocks
    if gran == "per_token":
        return n
    raise ValueError(f"unknown granularity {gran!r}; choose one of {GRANULARITIES}")


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round half away from zero, as upstream's ``x + 0.5 * sign(x)`` then truncation to int."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def quant_sym(
    x: torch.Tensor, group: torch.Tensor, n_groups: int, bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric integer quantization with one scale per row group.

    x: ``[B, H, N, D]`` float; group: ``[N]`` group index of each row.
    Returns (integer values as float32 ``[B, H, N, D]``, scales ``[B, H, n_groups]``) with
    ``scale = amax(|x_group|) / qmax + 1e-7`` and ``x ~= xi * scale[group]``. INT4 values are kept
    in float/int8 containers; their products are exact in the int32 (or fp32) GEMM either way.
    """
    if bits not in (4, 8):
        raise ValueError(f"qk bits must be 4 or 8, got {bits}")
    qmax = 2 ** (bits - 1) - 1  # 127 or 7
    xf = x.float()
    row_amax = xf.abs().amax(dim=-1)  # [B, H, N]
    idx = group.to(x.device).expand_as(row_amax)
    amax = torch.zeros(*row_amax.shape[:-1], n_groups, device=x.device).scatter_reduce(
        -1, idx, row_amax, reduce="amax", include_self=True
    )  # [B, H, G]
    scale = amax / qmax + QUANT_EPS
    xi = round_half_away(xf / scale.gather(-1, idx).unsqueeze(-1)).clamp_(-qmax, qmax)
    return xi, scale


def smooth_k(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``gamma(K) = K - mean_tokens(K)`` per (batch, head); returns (new K, mean ``[B, H, 1, D]``).

    Exact: every row of ``Q K^T`` shifts by the constant ``q . k_mean`` which softmax cancels.
    """
    km = k.float().mean(dim=-2, keepdim=True)
    return k.float() - km, km


def smooth_q(q: torch.Tensor, blk_q: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-Q-block mean removal (paper Sec. 3.1): returns (``gamma(Q)``, block means, row block).

    ``S_ij = gamma(Q_i) gamma(K_j)^T + dS_ij`` with ``dS_ij = mean(Q_blk(i)) gamma(K_j)^T``, a GEMV
    per query block kept in full precision (``delta_s``). q: ``[B, H, N, D]``; means
    ``[B, H, ceil(N/BLKQ), D]``; row block ``[N]``.
    """
    b, h, n, d = q.shape
    nb = _ceil_div(n, blk_q)
    qf = q.float()
    pad = nb * blk_q - n
    qp = torch.nn.functional.pad(qf, (0, 0, 0, pad))  # zero rows, excluded from the mean below
    counts = torch.full((nb,), float(blk_q), device=q.device)
    counts[-1] = blk_q - pad
    qm = qp.view(b, h, nb, blk_q, d).sum(dim=3) / counts[:, None]  # [B, H, nb, D]
    block = torch.arange(n, device=q.device) // blk_q
    return qf - qm[:, :, block], qm, block


def delta_s(q_mean_rows: torch.Tensor, k_smoothed: torch.Tensor) -> torch.Tensor:
    """``dS = mean(Q_blk) gamma(K)^T`` for chosen rows: ``[B, H, n, D] x [B, H, Nk, D] -> [B, H, n, Nk]``."""
    return q_mean_rows @ k_smoothed.float().transpose(-1, -2)


def round_fp8_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to the nearest FP8 E4M3 value (RTNE, as ``cvt.rn.satfinite.e4m3x2.f32``)."""
    return x.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn).float()


def quant_v_per_channel(v: torch.Tensor, v_scale_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel FP8 V: ``scale[d] = max_t |V[t, d]| / v_scale_max``; ``V ~= v8 * scale``.

    v: ``[B, H, N, D]``. Returns (FP8-rounded values as float32, scale ``[B, H, 1, D]``). An
    all-zero channel gets scale 1 so it stays exactly zero instead of 0/0.
    """
    vf = v.float()
    amax = vf.abs().amax(dim=-2, keepdim=True)
    scale = torch.where(amax > 0, amax / v_scale_max, torch.ones_like(amax))
    return round_fp8_e4m3(vf / scale), scale


def fp16_round(x: torch.Tensor) -> torch.Tensor:
    """FP16 round trip (the P and V operands of the FP16 P.V MMA), saturating at the FP16 max."""
    return x.clamp(-65504.0, 65504.0).half().float()


def head_dim_scale(d: int, sm_scale: float | None) -> float:
    """Softmax scale: ``1/sqrt(D)`` of the caller's (unpadded) head dim unless given."""
    return 1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale)
