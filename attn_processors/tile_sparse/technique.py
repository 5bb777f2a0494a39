"""Tile-sparse attention as a technique: ``TileSparseConfig`` + ``TileSparseProcessor``.

    with apply(pipe, TileSparseConfig(k=2)):                                  # doctest: +SKIP
        video = pipe("a red car", num_frames=33).frames

On each video self/joint attention call outside the dense warm-up (Efficient-vDiT keeps early
steps and blocks dense; here ``dense_steps`` and ``dense_blocks``, the core's warm-up rule), the
processor runs the k:(F-k) kernel (Sec. 3.3). Calls whose mask would drop less than
``min_block_sparsity`` of the attention run dense: a sparse kernel there is not faster.

``kernel=`` takes any ``core.kernels.KernelProvider`` (e.g. ``SageConfig(...)``): the tile mask
decides which keys each query group sees, the provider's kernel computes attention over them, and
on the calls that stay dense it runs on all keys. The provider's own where/when options do not
apply (it raises naming them); the host's warm-up and layers do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

from ..core import blockmask
from ..core.controller import Controller
from ..core.kernels import Attend, KernelProvider, inner_kernel
from ..core.policy import block_indices, check_choice, check_fraction, in_dense_blocks, in_warmup
from ..core.processor import CallInfo, ControlledProcessor, Need
from ..core.registry import register_technique
from ..core.sites import Select, Site
from .calibration import TilePlan
from .geometry import VideoGeometry, block_sparsity, call_geometry
from .kernels import LABEL, attend

ConfigMethod = Literal[
    "auto",  # gathered SDPA on long sequences, one masked SDPA call on short ones (kernels.dispatch)
    "flex",  # compiled flex_attention + analytic BlockMask
    "gather",  # one SDPA per distinct kept-key set
    "sdpa_masked",  # SDPA with the dense [S, S] mask (reference)
]
MIN_BLOCK_SPARSITY = 0.25  # below this gather ran at 0.93x SDPA on an H200: run dense instead


def default_k(frames: int) -> int:
    """k without a calibrated plan: round(sqrt(F)) - 1, at least 1 (2 for F = 8, 4 for F = 24)."""
    return max(1, round(math.sqrt(frames)) - 1)


@dataclass(frozen=True)
class TileSparseConfig:
    """Tile-sparse self-attention for video DiTs (Wan attn1, CogVideoX joint text-first attention).

    Constructible from a JSON dict of options: ``TileSparseConfig(**{"k": 2, "global_frames": [0, 4]})``.
    """

    k: int | str | Mapping[str, int] = "auto"  # int: every layer; {layer name: k}; "auto": default_k(F)
    plan: str | None = None  # calibrated plan JSON (calibrate(...).save(path)); wins for the layers it names
    global_frames: str | tuple[int, ...] = "first"  # "first" | "uniform" | explicit frame indices
    dense_steps: float = 0.2  # the first fraction of denoising steps runs dense (warm-up)
    dense_blocks: tuple[int, ...] = (0, 1)  # transformer block indices that stay dense
    min_block_sparsity: float = MIN_BLOCK_SPARSITY  # masks dropping less of the attention run dense
    block_size: int = blockmask.DEFAULT_BLOCK_SIZE  # flex BlockMask tile (tokens)
    method: ConfigMethod = "auto"
    kernel: KernelProvider | None = None  # e.g. SageConfig(...): runs on each query group's kept keys
    layers: Select = Select(kinds=("self", "joint"), families=("wan", "cogvideox"))

    def __post_init__(self) -> None:
        if isinstance(self.global_frames, list | tuple):
            object.__setattr__(self, "global_frames", tuple(int(i) for i in self.global_frames))
        else:
            check_choice("global_frames (or a list of frame indices)", self.global_frames,
                         ("first", "uniform"))
        if isinstance(self.k, str) and self.k != "auto":
            raise ValueError(f"k must be an int >= 0, 'auto' or a {{layer name: k}} mapping, got {self.k!r}")
        ks = self.k.values() if isinstance(self.k, Mapping) else [self.k] if isinstance(self.k, int) else []
        if any(not isinstance(k, int) or k < 0 for k in ks):
            raise ValueError(f"k values must be ints >= 0, got {self.k!r}")
        check_fraction("dense_steps", self.dense_steps)
        check_fraction("min_block_sparsity", self.min_block_sparsity)
        object.__setattr__(self, "dense_blocks", block_indices("dense_blocks", self.dense_blocks))
        if self.block_size < 16 or self.block_size % 16:
            raise ValueError(f"block_size must be a positive multiple of 16, got {self.block_size}")
        check_choice("method", self.method, get_args(ConfigMethod))
        if self.kernel is not None:
            inner_kernel(self.kernel, type(self).__name__)  # a provider, with no option it would ignore


class TileSparseProcessor(ControlledProcessor):
    """Runs the k:(F-k) kernel on self/joint attention calls outside the dense warm-up; stock otherwise
    (or the provider's kernel on all keys, with ``kernel=``)."""

    stats_key: ClassVar[str] = LABEL  # controller.stats: "tile_sparse.path.kernel" / ".path.stock"

    def __init__(self, site: Site, controller: Controller, config: TileSparseConfig, k: int | None) -> None:
        super().__init__(site, controller)
        self.config, self.k = config, k  # k None: default_k(frames) at call time
        self._dense_layer = in_dense_blocks(site, config.dense_blocks)

    def k_for(self, frames: int) -> int:
        return min(default_k(frames) if self.k is None else self.k, frames)

    def sparse(self, call: CallInfo, geometry: VideoGeometry | None) -> bool:
        """Whether this call drops tiles: outside the dense warm-up (steps, blocks), and the mask drops
        at least ``min_block_sparsity`` (and more than nothing) of the attention."""
        if geometry is None or self._dense_layer:
            return False
        if in_warmup(call.step, call.controller.num_steps, self.config.dense_steps):
            return False
        drop = block_sparsity(geometry, self.k_for(geometry.frames), self.config.global_frames)
        return drop > 0.0 and drop >= self.config.min_block_sparsity

    def needs(self) -> tuple[Need, ...]:
        """The video token grid always (it defines the tiles); the step for the dense warm-up."""
        return ("grid", "step") if self.config.dense_steps > 0 else ("grid",)

    def wants(self, call: CallInfo) -> bool:
        geometry = call_geometry(call)
        return self.sparse(call, geometry) or (self.config.kernel is not None and geometry is not None)

    def kernel(self, call: CallInfo) -> Attend:
        stats = call.controller.stats
        inner = None if self.config.kernel is None else self.config.kernel.attend_kernel(stats)
        geometry = call_geometry(call)
        if not self.sparse(call, geometry):  # only with an inner kernel (wants): it runs on all keys
            assert inner is not None
            return inner
        k_global, cfg = self.k_for(geometry.frames), self.config

        def tile_attend(q, k, v, *, mask=None, scale=None):  # mask: e.g. text key padding, kept exact
            return attend(q, k, v, geometry, k_global, cfg.global_frames, scale=scale, method=cfg.method,
                          block_size=cfg.block_size, inner=inner, attn_mask=mask, stats=stats)

        return tile_attend


def _layer_k(config: TileSparseConfig, plan: TilePlan | None, name: str) -> int | None:
    if plan is not None and name in plan.k:
        return plan.k[name]
    if isinstance(config.k, Mapping):
        return config.k.get(name)
    return config.k if isinstance(config.k, int) else None


@register_technique(TileSparseConfig)
def _install(config: TileSparseConfig, sites: Sequence[Site], controller: Controller) -> dict[str, Any]:
    plan = TilePlan.load(config.plan) if config.plan else None
    return {s.name: TileSparseProcessor(s, controller, config, _layer_k(config, plan, s.name)) for s in sites}
