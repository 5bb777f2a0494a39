"""SageAttention as a technique: ``SageConfig`` + ``SageProcessor`` filling the core's kernel slot.

    with apply(pipe, SageConfig(recipe="release", dense_steps=0.2)):    # doctest: +SKIP
        video = pipe("a red car", num_inference_steps=30).frames

The processor works for every family the core adapts (UNet, SD3, CogVideoX legacy processors;
Wan and Flux dispatch processors): the core projects q/k/v (norms, RoPE, joint text tokens) and
calls ``kernel(call)`` with ``[B, H, N, D]`` tensors. ``apply`` installs on the denoiser only;
VAEs and text encoders are never touched unless ``apply(..., models=("vae",))`` asks for them.

"Adaptive quantization" (SageAttention2 tech report v1, Sec. 4.5) is a per-(layer, step) policy:
``dense_steps`` (first fraction of the steps), ``dense_blocks``, ``dense_layers`` and the
calibrated ``dense_calls`` / ``policy`` file keep those calls in full precision (the stock path).

``SageConfig`` is also a ``core.kernels.KernelProvider``: another technique runs its kernel inside
its own computation (``TileSparseConfig(kernel=SageConfig(...))``) through ``attend_kernel(stats)``.
"""

from __future__ import annotations

import fnmatch
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from ..core.controller import Controller
from ..core.kernels import Attend, fallbacks
from ..core.policy import block_indices, check_choice, check_fraction, in_dense_blocks, in_warmup
from ..core.processor import CallInfo, ControlledProcessor, Need
from ..core.registry import register_technique
from ..core.sites import Select, Site
from .dispatch import BACKENDS, LABEL, LONG_SEQ_FP16_PV, MIN_KV_LEN, Backend, sage_kernel
from .quant import ARCH_PRESETS, Arch
from .spec import RECIPES, Recipe

# The options that say how one call is computed; they apply wherever the kernel runs. The others
# (dense_*, policy, layers) say where and when Sage runs: a host technique decides those itself.
KERNEL_OPTIONS = ("recipe", "backend", "arch", "min_kv_len", "nan_guard", "long_seq_fp16_pv")


@dataclass(frozen=True)
class SageConfig:
    """Quantized attention (SageAttention2) on the selected denoiser layers.

    Defaults follow the public package (``recipe="release"``: INT8 per-thread Q/K with smooth-K,
    FP8 P~V); ``backend="auto"`` uses upstream ``sageattention`` on CUDA and exact SDPA otherwise
    (our Triton kernel is not measured faster than cuDNN SDPA yet: ``backend="triton"`` asks for it);
    ``backend="simulate"`` runs the CPU reference (tests, calibration).
    """

    recipe: Recipe = "release"  # the quantization recipe (spec.Recipe names each member)
    backend: Backend = "auto"  # which kernel computes it (dispatch.Backend names each member)
    arch: Arch | None = None  # tile preset (quant.Arch names each); None: the device's
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
        check_choice("recipe", self.recipe, RECIPES)
        check_choice("backend", self.backend, BACKENDS)
        check_choice("arch", self.arch, (None, *ARCH_PRESETS))
        if isinstance(self.min_kv_len, bool) or not isinstance(self.min_kv_len, int) or self.min_kv_len < 0:
            raise ValueError(f"min_kv_len must be an int >= 0, got {self.min_kv_len!r}")
        if self.long_seq_fp16_pv is not None and self.long_seq_fp16_pv < 0:
            raise ValueError(f"long_seq_fp16_pv must be None or a key count >= 0, got "
                             f"{self.long_seq_fp16_pv}")
        check_fraction("dense_steps", self.dense_steps)
        object.__setattr__(self, "dense_blocks", block_indices("dense_blocks", self.dense_blocks))
        object.__setattr__(self, "dense_layers", tuple(self.dense_layers))
        object.__setattr__(self, "dense_calls", tuple((str(n), int(s)) for n, s in self.dense_calls))
        if self.policy is not None:
            load_policy(self.policy)  # a missing or malformed file fails here, naming the path

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
        overrides.setdefault("recipe", data.get("recipe", "release"))
        return cls(dense_calls=calls, **overrides)

    # -- core.kernels.KernelProvider -----------------------------------------------------------
    def attend_kernel(self, stats: Counter[str] | None = None) -> Attend:
        """The quantized kernel with this config's kernel options, counting into ``stats``."""
        return sage_kernel(recipe=self.recipe, backend=self.backend, arch=self.arch,
                           min_kv_len=self.min_kv_len, nan_guard=self.nan_guard,
                           long_seq_fp16_pv=self.long_seq_fp16_pv, stats=stats)

    def check_inner(self, host: str) -> None:
        """Raise naming the options that say where/when Sage runs: as an inner kernel, `host` decides."""
        default = SageConfig()
        changed = [f.name for f in fields(self)
                   if f.name not in KERNEL_OPTIONS and getattr(self, f.name) != getattr(default, f.name)]
        if changed:
            raise ValueError(
                f"SageConfig fields {changed} do not apply as the inner kernel of {host}: they say where "
                f"and when Sage runs, which {host} decides; set its own warm-up (dense_steps, dense_blocks) "
                f"and layers instead. Kernel options that apply: {list(KERNEL_OPTIONS)}."
            )


def load_policy(policy: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Read a calibration policy (``{"dense_calls": [[layer, step], ...], ...}``) from JSON or a dict."""
    if isinstance(policy, Mapping):
        data = dict(policy)
    else:
        path = Path(policy)
        if not path.is_file():
            raise ValueError(f"Sage policy file {str(path)!r} not found; write one with "
                             "attn_processors.sage.write_policy(calibrate(...), path)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"Sage policy file {str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or "dense_calls" not in data:
        raise ValueError(f"Sage policy {policy!r} needs a 'dense_calls' list of [layer name, step] pairs; "
                         "write one with attn_processors.sage.calibrate(...)")
    return data


class SageProcessor(ControlledProcessor):
    """Runs the Sage kernel in the kernel slot on the calls the policy does not keep dense."""

    stats_key: ClassVar[str] = LABEL  # controller.stats: "sage.path.kernel" / ".path.stock" / ...

    def __init__(self, site: Site, controller: Controller, config: SageConfig) -> None:
        super().__init__(site, controller)
        self.config = config
        self._dense_calls = config.resolved_dense_calls()
        self._dense_layer = in_dense_blocks(site, config.dense_blocks) or any(
            fnmatch.fnmatchcase(site.name, g) for g in config.dense_layers)

    def dense(self, call: CallInfo) -> bool:
        """Whether this call stays in full precision (the per-layer / per-step policy)."""
        if self._dense_layer or in_warmup(call.step, call.controller.num_steps, self.config.dense_steps):
            return True
        return call.step is not None and (self.site.name, call.step) in self._dense_calls

    def needs(self) -> tuple[Need, ...]:
        """The step, when a per-step policy (warm-up, calibrated calls) decides which calls stay dense."""
        return ("step",) if self.config.dense_steps > 0 or self._dense_calls else ()

    def wants(self, call: CallInfo) -> bool:
        return not self.dense(call)

    def kernel(self, call: CallInfo) -> Attend:
        return self.config.attend_kernel(call.controller.stats)


@register_technique(SageConfig)
def _install(config: SageConfig, sites: Sequence[Site], controller: Controller) -> dict[str, SageProcessor]:
    return {s.name: SageProcessor(s, controller, config) for s in sites}


def sage_report(controller: Controller) -> dict[str, Any]:
    """Counts of the controller's current run only (cleared at begin_run): calls run quantized, kept
    dense by the policy, taken by a logits/probs editor composed on the layer, and SDPA fallbacks."""
    stats = controller.stats
    return {"sage_calls": stats[f"{LABEL}.path.kernel"], "dense_calls": stats[f"{LABEL}.path.stock"],
            "explicit_calls": stats[f"{LABEL}.path.explicit"], "fallbacks": fallbacks(stats, LABEL),
            "long_seq_fp16_pv": stats[f"{LABEL}.long_seq_fp16_pv"]}


def with_dense_calls(config: SageConfig, calls: Sequence[tuple[str, int]]) -> SageConfig:
    """``config`` with more (layer, step) pairs kept dense."""
    return replace(config, dense_calls=tuple(config.dense_calls) + tuple((n, int(s)) for n, s in calls))
