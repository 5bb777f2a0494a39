"""Exact kernels for the k:(F-k) mask and the dispatch that picks one (through the core's table).

All are exact for the mask (``attn_processors.core.blockmask``): gathered SDPA over each query
group's kept keys (the default on CPU and CUDA: as fast as the tuned CPU flex and faster than
compiled flex on an H200, no compile), compiled FlexAttention with a BlockMask built analytically
from frame spans (on request), and masked SDPA (reference, short sequences).

    >>> import torch
    >>> q = k = v = torch.randn(1, 2, 4 * 6, 8)
    >>> tile_sparse_attention(q, k, v, frames=4, tokens_per_frame=6, k_global=1).shape
    torch.Size([1, 2, 24, 8])
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Literal

import torch
import torch.nn.functional as F

from ..core import blockmask
from ..core.kernels import Attend, KernelSpec, Unsupported, first_unsupported, warn_once
from ..core.kernels import dispatch as core_dispatch
from .geometry import (
    GlobalFrames,
    TextPosition,
    VideoGeometry,
    block_sparsity,
    global_frame_indices,
    group_keep,
)

Method = Literal[
    "auto",  # choose by dispatch(): dense / masked SDPA / gather
    "flex",  # compiled flex_attention + analytic BlockMask
    "gather",  # exact: one SDPA per distinct kept-key set, keys gathered (no compiler, no S^2 mask)
    "sdpa_masked",  # reference: SDPA with the dense [S, S] bool mask
    "dense",  # plain SDPA, no mask (what auto picks when every tile is kept)
]
METHODS: tuple[str, ...] = ("auto", "flex", "gather", "sdpa_masked", "dense")
LABEL = "tile_sparse"  # stats keys "tile_sparse.kernel.<method>", "tile_sparse.fallback.<category>"
MIN_SPARSE_SEQ_LEN = 2048  # below this one masked SDPA call is cheapest (and no flex compile)


def _frames_key(global_frames: GlobalFrames) -> str | tuple[int, ...]:
    return global_frames if isinstance(global_frames, str) else tuple(int(i) for i in global_frames)


@functools.lru_cache(maxsize=64)
def _cached_block_mask(geometry: VideoGeometry, k_global: int, frames_key, block_size: int, device: str):
    keep = group_keep(geometry, k_global, frames_key).to(device)
    return blockmask.group_block_mask(geometry.groups(device), keep, block_size)


def tile_block_mask(
    geometry: VideoGeometry, k_global: int, global_frames: GlobalFrames = "first",
    *, block_size: int = blockmask.DEFAULT_BLOCK_SIZE, device: torch.device | str = "cpu",
):
    """The flex BlockMask of the k:(F-k) mask, built from frame spans and cached per geometry and device."""
    global_frame_indices(geometry.frames, k_global, global_frames)  # validate before caching
    device = str(torch.device(device))
    return _cached_block_mask(geometry, k_global, _frames_key(global_frames), block_size, device)


@functools.lru_cache(maxsize=64)
def _cached_gather_plan(geometry: VideoGeometry, k_global: int, frames_key, device: str):
    keep = group_keep(geometry, k_global, frames_key).to(device)
    return blockmask.gather_plan(geometry.groups(device), keep)


def tile_gather_plan(
    geometry: VideoGeometry, k_global: int, global_frames: GlobalFrames = "first",
    *, device: torch.device | str = "cpu",
) -> blockmask.GatherPlan:
    """The (query rows, kept key columns) plan of the gathered path, cached per geometry and device."""
    global_frame_indices(geometry.frames, k_global, global_frames)
    return _cached_gather_plan(geometry, k_global, _frames_key(global_frames), str(torch.device(device)))


def dispatch(
    geometry: VideoGeometry, k_global: int, global_frames: GlobalFrames = "first", *,
    device: torch.device | str = "cpu", min_block_sparsity: float = 0.0, stats: Counter[str] | None = None,
) -> tuple[str, str]:
    """(method, reason) for method="auto", through the core's dispatch table: gathered SDPA for long
    sequences, one masked SDPA call for short ones, plain SDPA ("dense") when the mask keeps every
    tile or drops less than ``min_block_sparsity`` of the attention (each fallback logged once).
    Never flex: it is measured slower than gather on both kinds of machine we have, so it runs only
    when asked for (``method="flex"``).

    CPU (fp32, S = 6144, 1 thread): flex with the rewritten template ties with gather when frame spans
    align to the block size (3.4x vs 3.1x over SDPA at 72.9 % sparsity) and loses when they do not
    (partial blocks run mask_mod); it also compiles per geometry. H200 (bf16, D 128, H 24, torch 2.11,
    benchmarks/results/tile_sparse_gpu_h200.json): gather beat compiled flex at all nine masks of the
    paper, e.g. 2.85x vs 2.25x over SDPA at S = 86 400, 72.9 %, and 1.27x vs 0.97x at S = 28 800, 46.9 %;
    at low sparsity gather ran at 0.93x SDPA, hence the ``min_block_sparsity`` fallback.
    """
    del device  # the choice is the same on CPU and CUDA (measured on both)
    sparsity = block_sparsity(geometry, k_global, global_frames)

    def worth_it(*_: object) -> Unsupported | None:
        if sparsity <= 0.0:
            return Unsupported("full_mask", "the mask keeps every tile")
        if sparsity < min_block_sparsity:
            return Unsupported("low_sparsity", f"the mask drops {sparsity:.1%} of the attention, below "
                               f"min_block_sparsity={min_block_sparsity:g}: dense SDPA is as fast")
        return None

    def long_enough(*_: object) -> str | None:
        if geometry.seq_len < MIN_SPARSE_SEQ_LEN:
            return f"S={geometry.seq_len} < {MIN_SPARSE_SEQ_LEN}: one masked SDPA call is cheapest"
        return None

    table = [KernelSpec("gather", None, first_unsupported(worth_it, long_enough)),
             KernelSpec("sdpa_masked", None, worth_it)]
    choice = core_dispatch(table, geometry, label=LABEL, stats=stats)
    return ("dense" if choice.name == "sdpa" else choice.name), choice.reason


def tile_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, frames: int, tokens_per_frame: int, k_global: int,
    global_frames: GlobalFrames = "first", text_tokens: int = 0, text_position: TextPosition = "first",
    scale: float | None = None, method: Method = "auto", block_size: int = blockmask.DEFAULT_BLOCK_SIZE,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """k:(F-k) tile-sparse attention on q, k, v [B, H, S, D] -> [B, H, S, D]; exact for the mask.

    ``attn_mask`` (optional, bool or additive, broadcastable to [B, H, S, S]; e.g. a text key-padding
    mask [B, 1, 1, S]) is intersected with the tile mask.
    """
    geometry = VideoGeometry(frames, tokens_per_frame, text_tokens, text_position)
    return attend(q, k, v, geometry, k_global, global_frames, scale=scale, method=method,
                  block_size=block_size, attn_mask=attn_mask)


_flex_failed: set[str] = set()


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: VideoGeometry, k_global: int,
    global_frames: GlobalFrames = "first", *, scale: float | None = None, method: Method = "auto",
    block_size: int = blockmask.DEFAULT_BLOCK_SIZE, inner: Attend | None = None,
    attn_mask: torch.Tensor | None = None, stats: Counter[str] | None = None,
) -> torch.Tensor:
    """``tile_sparse_attention`` with a prepared geometry (what the processors call).

    ``inner``: a kernel ``attend(q, k, v, *, mask=None, scale=None)`` (e.g. a quantized one from a
    ``KernelProvider``) run on each query group's kept keys instead of SDPA. ``attn_mask``: an extra
    mask (bool or additive, broadcastable to [B, H, S, S], e.g. text key padding) intersected with the
    tile mask. Either forces the gathered path. ``stats``: a run's counters (the method chosen).
    """
    if q.dim() != 4 or k.shape != q.shape[:3] + k.shape[3:] or v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"q, k, v must be [B, H, S, D] with equal B, H, S; got {q.shape}, {k.shape}, {v.shape}"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    geometry.check_seq_len(q.shape[2])
    if inner is not None or attn_mask is not None:
        plan = tile_gather_plan(geometry, k_global, global_frames, device=q.device)  # full mask: 1 entry
        return blockmask.gather_attend(q, k, v, plan, scale=scale, mask=attn_mask, attend=inner)
    if method == "auto":
        method, _ = dispatch(geometry, k_global, global_frames, device=q.device, stats=stats)
    if method == "dense":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if method == "flex" and str(q.device) in _flex_failed:
        method = "gather"  # flex failed to compile here before: do not pay for the attempt again
    if method == "flex":
        bm = tile_block_mask(geometry, k_global, global_frames, block_size=block_size, device=q.device)
        try:
            return blockmask.flex_attend(q, k, v, bm, scale=scale)
        except Exception as exc:  # compile or codegen failure: remember it and take the exact fallback
            _flex_failed.add(str(q.device))
            warn_once(f"tile_sparse:flex:{q.device}", f"compiled flex attention failed on {q.device} "
                      f"({exc}); tile-sparse attention uses gathered SDPA instead")
            method = "gather"
    if method == "gather":
        plan = tile_gather_plan(geometry, k_global, global_frames, device=q.device)
        return blockmask.gather_attend(q, k, v, plan, scale=scale)
    groups = geometry.groups(q.device)  # "sdpa_masked"
    mask = blockmask.dense_group_mask(groups, group_keep(geometry, k_global, global_frames).to(q.device))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
