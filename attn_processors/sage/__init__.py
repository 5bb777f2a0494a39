"""SageAttention2 quantized attention (arXiv 2411.10958): simulator, Triton kernel, dispatch.

``sageattn(q, k, v, ...)`` has the upstream package's call shape. ``simulate`` is the
pure-PyTorch oracle; the Triton kernel lives in ``triton_kernel`` and imports lazily.
"""

from .dispatch import (
    BACKENDS,
    FALLBACKS,
    KERNEL_CALLS,
    MAX_HEAD_DIM,
    MIN_KV_LEN,
    choose_kernel,
    detect_arch,
    reset_counters,
    sageattn,
    sdpa_attention,
)
from .quant import ARCH_PRESETS, GRANULARITIES, Tiles
from .reference import simulate
from .spec import MODES, SageSpec, spec_for

__all__ = [
    "ARCH_PRESETS", "BACKENDS", "FALLBACKS", "GRANULARITIES", "KERNEL_CALLS", "MAX_HEAD_DIM", "MIN_KV_LEN",
    "MODES", "SageSpec", "Tiles", "choose_kernel", "detect_arch", "reset_counters", "sageattn",
    "sdpa_attention", "simulate", "spec_for",
]
