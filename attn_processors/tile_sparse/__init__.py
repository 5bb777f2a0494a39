"""Efficient-vDiT tile-sparse video attention (arXiv 2502.06155, Sec. 3.3 "Attention Tile").

Paper -> code: mask family (Sec. 3.3, Fig. 3) -> ``geometry.tile_keep``; kept-tile count ->
``kept_tile_fraction``; the kernels exact for the mask and their dispatch -> ``kernels``; the
technique (config, processors, dense warm-up) -> ``technique``; layer-wise mask search
(Algorithm 1) -> ``calibration.calibrate`` with a recall target (our stand-in loss).

    >>> import torch
    >>> q = k = v = torch.randn(1, 2, 4 * 6, 8)
    >>> tile_sparse_attention(q, k, v, frames=4, tokens_per_frame=6, k_global=1).shape
    torch.Size([1, 2, 24, 8])
"""

from .calibration import TilePlan, TileRecallProbe, calibrate, select_k
from .geometry import (
    GlobalFrames,
    TextPosition,
    VideoGeometry,
    block_sparsity,
    call_geometry,
    global_frame_indices,
    group_keep,
    kept_tile_fraction,
    tile_keep,
    tile_mask,
    tile_recall,
)
from .kernels import (
    METHODS,
    MIN_SPARSE_SEQ_LEN,
    Method,
    attend,
    dispatch,
    tile_block_mask,
    tile_gather_plan,
    tile_sparse_attention,
)
from .technique import MIN_BLOCK_SPARSITY, TileSparseConfig, TileSparseProcessor, default_k

__all__ = [
    "METHODS", "MIN_BLOCK_SPARSITY", "MIN_SPARSE_SEQ_LEN", "GlobalFrames", "Method", "TextPosition",
    "TilePlan", "TileRecallProbe", "TileSparseConfig", "TileSparseProcessor", "VideoGeometry", "attend",
    "block_sparsity", "calibrate", "call_geometry", "default_k", "dispatch", "global_frame_indices",
    "group_keep", "kept_tile_fraction", "select_k", "tile_block_mask", "tile_gather_plan", "tile_keep",
    "tile_mask", "tile_recall", "tile_sparse_attention",
]
