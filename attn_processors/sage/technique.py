"""SageAttention as a technique: ``SageConfig`` + ``SageProcessor`` filling the core's kernel slot.

    with apply(pipe, SageConfig(mode="release", dense_steps=0.2)):      # doctest: +SKIP
        video = pipe("a red car", num_inference_steps=30).frames

The processor works for every family the core adapts (UNet, SD3, CogVideoX legacy processors;
Wan and Flux dispatch processors): the core projects q/k/v (norms, RoPE, joint text tokens) and
calls ``kernel(call)`` with ``[B, H, N, D]`` tensors. ``apply`` installs on the denoiser only;
VAEs and text encoders are never touched unless ``apply(..., models=("vae",))`` asks for them.

"Adaptive quantization" (SageAttention2 tech report v1, Sec. 4.5) is a per-(layer, step) policy:
``dense_steps`` (first fraction of the steps), ``dense_blocks``, ``dense_layers`` and the
calibrated ``dense_calls`` / ``policy`` file keep those calls in full precision (the stock path).
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..core.controller import Controller
from ..core.processor import CallInfo, ControlledProcessor
from ..core.registry import register_technique
from ..core.sites import Select, Site
from .dispatch import BACKENDS, FALLBACKS, LONG_SEQ_FP16_PV, MIN_KV_LEN, sageattn
from .quant import ARCH_PRESETS
from .spec import MODES

STORE = "sage"  # controller.stores key: Counter of sage / dense calls per layer


@dataclass(frozen=True)
class SageConfig:
    """Quantized attention (SageAttention2) on the selected denoiser layers.

    Defaults follow the public package (``mode="release"``: INT8 per-thread Q/K with smooth-K,
    FP8 P~V); ``backend="auto"`` uses upstream ``sageattention`` on CUDA and exact SDPA otherwise
    (our Triton kernel measured slower than cuDNN SDPA on an H200: ``backend="triton"`` asks for it);
    ``backend="simulate"`` runs the CPU reference (tests, calibration).
    """

    mode: str = "release"  # "release" | "paper4bit" | "sage1" (see spec.MODES)
    backend: str = "auto"  # "auto" | "simulate" | "triton" | "upstream" | "sdpa"
    arch: str | None = None  # tile preset "sm80" | "sm86" | "sm89" | "sm90" | "sm120"; None: the device's
    min_kv_len: int = MIN_KV_LEN  # shorter key sequences run SDPA (no gain; set 0 for tiny test models)
    nan_guard: bool = True  # recompute a call with SDPA when the quantized output is not finite
    long_seq_fp16_pv: int | None = LONG_SEQ_FP16_PV  # more keys than this: FP16 instead of FP8 P.V
    dense_steps: float = 0.0  # the first fraction of denoising steps runs in full precision
    dense_blocks: tuple[int, ...] = ()  # transformer/UNet block indices kept in full precision
    dense_layers: tuple[str, ...] = ()  # fnmatch globs on layer names kept in full precision
    dense_calls: tuple[tuple[str, int], ...] = ()  # (layer name, step) pairs kept in full precision
    policy: str | None = None  # calibration JSON (see calibration.py); its dense calls join dense_calls
    layers: Select = Select()  # where to install (default: every attention layer of the denoiser)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.arch is not None and self.arch not in ARCH_PRESETS:
            raise ValueError(f"arch must be None or one of {tuple(ARCH_PRESETS)}, got {self.arch!r}")
        if self.min_kv_len < 0 or not 0.0 <= self.dense_steps <= 1.0:
            raise ValueError(f"need min_kv_len >= 0 and dense_steps in [0, 1], got {self.min_kv_len}, "
                             f"{self.dense_steps}")
        object.__setattr__(self, "dense_blocks", tuple(int(b) for b in self.dense_blocks))
        object.__setattr__(self, "dense_layers", tuple(self.dense_layers))
        object.__setattr__(self, "dense_calls", tuple((str(n), int(s)) for n, s in self.dense_calls))

    def resolved_dense_calls(self) -> frozenset[tuple[str, int]]:
        """``dense_calls`` plus those of the ``policy`` file."""
        calls = set(self.dense_calls)
        if self.policy is not None:
            calls |= {(n, int(s)) for n, s in load_policy(self.policy)["dense_calls"]}
        return frozenset(calls)

    @classmethod
    def from_policy(cls, policy: str | Path | Mapping[str, Any], **overrides: Any) -> SageConfig:
        """A config whose ``dense_calls`` come from a calibration policy (file path or dict)."""
        data = load_policy(policy)
        calls = tuple((n, int(s)) for n, s in data["dense_calls"]) + tuple(overrides.pop("dense_calls", ()))
        overrides.setdefault("mode", data.get("mode", "release"))
        return cls(dense_calls=calls, **overrides)


def load_policy(policy: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Read a calibration policy (``{"dense_calls": [[layer, step], ...], ...}``) from JSON or a dict."""
    data = dict(policy) if isinstance(policy, Mapping) else json.loads(Path(policy).read_text())
    if "dense_calls" not in data:
        raise ValueError("a Sage policy needs a 'dense_calls' list of [layer name, step] pairs; "
                         "write one with attn_processors.sage.calibrate(...)")
    return data


class SageProcessor(ControlledProcessor):
    """Runs ``sageattn`` in the kernel slot on the calls the policy does not keep dense."""

    def __init__(self, site: Site, controller: Controller, config: SageConfig) -> None:
        super().__init__(site, controller)
        self.config = config
        self._dense_calls = config.resolved_dense_calls()
        self._dense_layer = site.block in config.dense_blocks and site.place != "other" or any(
            fnmatch.fnmatchcase(site.name, g) for g in config.dense_layers)

    def dense(self, call: CallInfo) -> bool:
        """Whether this call stays in full precision (the per-layer / per-step policy)."""
        if self._dense_layer:
            return True
        step = call.step
        if step is None:
            return False
        n = call.controller.num_steps
        warm = 0 if n is None else math.floor(self.config.dense_steps * n + 1e-6)
        return step < warm or (self.site.name, step) in self._dense_calls

    def wants(self, call: CallInfo) -> bool:
        use = not self.dense(call)
        stats = call.controller.stores.setdefault(STORE, Counter())
        stats["sage_calls" if use else "dense_calls"] += 1
        return use

    def kernel(self, call: CallInfo):
        cfg = self.config

        def sage_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                        mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
            return sageattn(q, k, v, sm_scale=scale, attn_mask=mask, mode=cfg.mode, backend=cfg.backend,
                            arch=cfg.arch, min_kv_len=cfg.min_kv_len, nan_guard=cfg.nan_guard,
                            long_seq_fp16_pv=cfg.long_seq_fp16_pv)

        return sage_attend


@register_technique(SageConfig)
def _install(config: SageConfig, sites: Sequence[Site], controller: Controller) -> dict[str, SageProcessor]:
    return {s.name: SageProcessor(s, controller, config) for s in sites}


def sage_report(controller: Controller) -> dict[str, Any]:
    """Counts of one run: quantized vs full-precision (policy) calls and SDPA fallbacks by reason."""
    stats = controller.stores.get(STORE, Counter())
    return {"sage_calls": stats["sage_calls"], "dense_calls": stats["dense_calls"],
            "fallbacks": dict(FALLBACKS)}


def with_dense_calls(config: SageConfig, calls: Sequence[tuple[str, int]]) -> SageConfig:
    """``config`` with more (layer, step) pairs kept dense."""
    return replace(config, dense_calls=tuple(config.dense_calls) + tuple((n, int(s)) for n, s in calls))
