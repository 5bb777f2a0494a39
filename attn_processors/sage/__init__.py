"""SageAttention2 quantized attention (arXiv 2411.10958): simulator, Triton kernel, dispatch, processors.

``sageattn(q, k, v, ...)`` has the upstream package's call shape. ``simulate`` is the pure-PyTorch
oracle; the Triton kernel (``triton_kernel``) imports lazily. ``SageConfig`` (the technique for
``apply(pipe, SageConfig(...))``), ``SageProcessor``, ``calibrate`` and ``write_policy`` load the
Diffusers-facing modules on first access, so the maths stays importable without them.
"""

from importlib import import_module
from typing import Any

from .dispatch import (
    BACKENDS,
    FALLBACKS,
    KERNEL_CALLS,
    MAX_HEAD_DIM,
    MIN_KV_LEN,
    choose_kernel,
    detect_arch,
    reset_counters,
    sage_kernel,
    sageattn,
    sdpa_attention,
)
from .quant import ARCH_PRESETS, GRANULARITIES, Tiles
from .reference import simulate
from .spec import RECIPES, SageSpec, spec_for

_LAZY = {"SageConfig": "technique", "SageProcessor": "technique", "sage_report": "technique",
         "load_policy": "technique", "calibrate": "calibration", "write_policy": "calibration",
         "SageCalibration": "calibration"}

__all__ = [
    "ARCH_PRESETS", "BACKENDS", "FALLBACKS", "GRANULARITIES", "KERNEL_CALLS", "MAX_HEAD_DIM", "MIN_KV_LEN",
    "RECIPES", "SageSpec", "Tiles", "choose_kernel", "detect_arch", "reset_counters", "sage_kernel",
    "sageattn", "sdpa_attention", "simulate", "spec_for", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
