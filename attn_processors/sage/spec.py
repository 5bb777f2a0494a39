"""Named SageAttention variants (``recipe``) resolved against a GPU-architecture preset.

``SageSpec`` is the complete numeric recipe the simulator and the kernels follow; the public API
takes a ``recipe`` name plus an ``arch`` and builds it with ``spec_for`` (overrides allowed, e.g. to
switch quantization off in exactness checks or to compare granularities).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

from .quant import ARCH_PRESETS, FP8_E4M3_MAX, GRANULARITIES, Tiles

Recipe = Literal[
    "release",  # SageAttn2-8b, what the public package runs: INT8 per-thread QK, smooth-K, FP8 P~V
    "paper4bit",  # SageAttn2-4b (ICML'25 paper): INT4 per-thread QK, smooth-Q (+dS) and smooth-K, FP8 P~V
    "sage1",  # SageAttention 1: INT8 per-block QK, smooth-K, FP16 P.V
]
RECIPES: tuple[str, ...] = get_args(Recipe)
PV = Literal["fp8", "fp16", "fp32"]  # fp32 = no P/V rounding (exactness checks only)

SAGE1_TILES = Tiles(128, 128, 64, 64)  # SageAttention 1.0.6 Triton: BLKQ 128, BLKK 64, per-block scales
DEFAULT_ARCH = "sm90"  # the project's GPU is an H200; also the CPU simulator's default tiles


@dataclass(frozen=True)
class SageSpec:
    """Full recipe of one quantized attention variant."""

    qk_bits: int | None  # 8, 4, or None (no Q/K quantization)
    qk_gran: str  # one of quant.GRANULARITIES
    tiles: Tiles
    smooth_k: bool
    smooth_q: bool  # with the dS compensation; upstream only uses it for 4 bit
    pv: PV
    v_scale_max: float = FP8_E4M3_MAX  # FP8 V range; 2.25 for the fp32+fp16 accumulator (sm89)

    def __post_init__(self) -> None:
        if self.qk_bits not in (None, 4, 8):
            raise ValueError(f"qk_bits must be 8, 4 or None, got {self.qk_bits}")
        if self.qk_gran not in GRANULARITIES:
            raise ValueError(f"qk_gran must be one of {GRANULARITIES}, got {self.qk_gran!r}")
        if self.pv not in ("fp8", "fp16", "fp32"):
            raise ValueError(f"pv must be 'fp8', 'fp16' or 'fp32', got {self.pv!r}")
        if not 0 < self.v_scale_max <= FP8_E4M3_MAX:
            raise ValueError(f"v_scale_max must be in (0, 448], got {self.v_scale_max}")


def spec_for(recipe: str = "release", arch: str = DEFAULT_ARCH, **overrides: object) -> SageSpec:
    """Build ``recipe`` on ``arch`` (``"sm80" | "sm86" | "sm89" | "sm90" | "sm120"``).

    >>> spec_for("release", "sm90").tiles
    Tiles(blk_q=64, warp_q=16, blk_k=128, warp_k=128)
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {RECIPES}")
    if arch not in ARCH_PRESETS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {tuple(ARCH_PRESETS)}")
    a = ARCH_PRESETS[arch]
    if recipe == "release":
        spec = SageSpec(8, a.qk_gran, a.tiles, smooth_k=True, smooth_q=False, pv=a.pv,
                        v_scale_max=a.v_scale_max)
    elif recipe == "paper4bit":
        # INT4 per-thread exists only as the sm89 mma.m16n8k64 layout (Hopper has no INT4 MMA)
        spec = SageSpec(4, "per_thread", ARCH_PRESETS["sm89"].tiles, smooth_k=True, smooth_q=True, pv="fp8")
    else:
        spec = SageSpec(8, "per_block", SAGE1_TILES, smooth_k=True, smooth_q=False, pv="fp16")
    return replace(spec, **overrides) if overrides else spec
