"""Efficient-vDiT tile-sparse video attention (arXiv 2502.06155, §3.3 "Attention Tile").

A video DiT's 3D attention map is an F x F grid of frame-to-frame tiles (F latent frames, each tile
tokens_per_frame^2). The k:(F-k) mask keeps tile (query frame a, key frame b) iff

    a == b  or  a in G  or  b in G          (G: the k global reference frames)

so kept tiles = 2kF - k^2 + F - k (paper §3.3), linear in F for fixed k. Text tokens stay dense
(their rows and columns are kept). The kernel is compiled FlexAttention with a BlockMask built
analytically from frame spans (``attn_processors.core.blockmask``); an exact gathered-SDPA path and
masked SDPA are the fallback and the reference.

Example::

    >>> import torch
    >>> q = k = v = torch.randn(1, 2, 4 * 6, 8)
    >>> out = tile_sparse_attention(q, k, v, frames=4, tokens_per_frame=6, k_global=1)
    >>> out.shape
    torch.Size([1, 2, 24, 8])
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from attn_processors.core import blockmask

logger = logging.getLogger(__name__)

TextPosition = Literal[
    "first",  # [text, video] (CogVideoX joint attention)
    "last",  # [video, text] (HunyuanVideo)
    "none",  # video only (Wan / LTX self-attention)
]
GlobalFrames = Literal["first", "uniform"] | Sequence[int]  # "first": 0..k-1; "uniform": evenly spaced
Method = Literal[
    "auto",  # choose by dispatch(): dense / flex / masked SDPA / gather
    "flex",  # compiled flex_attention + analytic BlockMask
    "gather",  # exact: one SDPA per distinct kept-key set, keys gathered (no compiler, no S^2 mask)
    "sdpa_masked",  # reference: SDPA with the dense [S, S] bool mask
]

MIN_FLEX_SEQ_LEN = 2048  # below this a first compile (seconds) never pays back; masked SDPA is cheap
MAX_MASKED_SDPA_SEQ_LEN = 8192  # the dense bool mask is S^2 bytes (64 MiB here); gather beyond


@dataclass(frozen=True)
class VideoGeometry:
    """Token layout of one attention call: ``frames`` x ``tokens_per_frame`` video tokens (frame-major)
    plus ``text_tokens`` dense tokens before ("first") or after ("last") them."""

    frames: int
    tokens_per_frame: int
    text_tokens: int = 0
    text_position: TextPosition = "first"

    def __post_init__(self) -> None:
        if self.frames < 1 or self.tokens_per_frame < 1:
            raise ValueError(
                f"frames and tokens_per_frame must be >= 1, got {self.frames} and {self.tokens_per_frame}"
            )
        if self.text_position not in ("first", "last", "none"):
            raise ValueError(f"text_position must be 'first', 'last' or 'none', got {self.text_position!r}")
        if self.text_tokens < 0 or (self.text_position == "none" and self.text_tokens):
            raise ValueError(
                f"text_tokens={self.text_tokens} needs text_position 'first' or 'last' "
                "(use text_tokens=0 with text_position='none')"
            )

    @classmethod
    def from_latent(
        cls, latent_frames: int, height: int, width: int, patch_size: tuple[int, int, int] = (1, 2, 2),
        *, text_tokens: int = 0, text_position: TextPosition = "first",
    ) -> VideoGeometry:
        """Geometry after patchify: frames = latent_frames / p_t, tokens per frame = (H / p_h)(W / p_w)."""
        p_t, p_h, p_w = patch_size
        if latent_frames % p_t or height % p_h or width % p_w:
            raise ValueError(
                f"latent shape (frames={latent_frames}, h={height}, w={width}) must be divisible by "
                f"patch_size {patch_size}"
            )
        return cls(latent_frames // p_t, (height // p_h) * (width // p_w), text_tokens, text_position)

    @property
    def video_tokens(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def seq_len(self) -> int:
        return self.video_tokens + self.text_tokens

    def check_seq_len(self, seq_len: int) -> None:
        if seq_len != self.seq_len:
            raise ValueError(
                f"sequence length {seq_len} does not match frames x tokens_per_frame + text_tokens = "
                f"{self.frames} x {self.tokens_per_frame} + {self.text_tokens} = {self.seq_len}"
            )

    def groups(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Group label per token, LongTensor [S]: frame index for video, ``frames`` for text."""
        video = torch.arange(self.frames, device=device).repeat_interleave(self.tokens_per_frame)
        text = torch.full((self.text_tokens,), self.frames, dtype=torch.long, device=device)
        return torch.cat([text, video] if self.text_position == "first" else [video, text])


def global_frame_indices(frames: int, k_global: int, global_frames: GlobalFrames = "first") -> tuple[int, ...]:
    """The k global reference frames G. "first": 0..k-1; "uniform": floor(i F / k); or an explicit list."""
    if not 0 <= k_global <= frames:
        raise ValueError(f"k_global must be in [0, frames={frames}], got {k_global}")
    if isinstance(global_frames, str):
        if global_frames == "first":
            return tuple(range(k_global))
        if global_frames == "uniform":
            return tuple(i * frames // k_global for i in range(k_global))
        raise ValueError(f"global_frames must be 'first', 'uniform' or a list of frame indices, got {global_frames!r}")
    chosen = tuple(int(i) for i in global_frames)
    if len(chosen) != k_global or len(set(chosen)) != k_global or not all(0 <= i < frames for i in chosen):
        raise ValueError(
            f"global_frames list must hold k_global={k_global} distinct frame indices in [0, {frames}), "
            f"got {list(global_frames)}"
        )
    return tuple(sorted(chosen))


def tile_keep(frames: int, k_global: int, global_frames: GlobalFrames = "first") -> torch.Tensor:
    """Frame-tile mask [F, F] (query frame a, key frame b): a == b or a in G or b in G (paper §3.3)."""
    is_global = torch.zeros(frames, dtype=torch.bool)
    is_global[list(global_frame_indices(frames, k_global, global_frames))] = True
    return torch.eye(frames, dtype=torch.bool) | is_global[:, None] | is_global[None, :]


def kept_tile_fraction(frames: int, k_global: int) -> float:
    """Analytic density of the k:(F-k) mask: (2kF - k^2 + F - k) / F^2 (sparsity is 1 minus this)."""
    f, k = frames, k_global
    return (2 * k * f - k * k + f - k) / (f * f)


def _group_keep(geometry: VideoGeometry, k_global: int, global_frames: GlobalFrames) -> torch.Tensor:
    """[F+1, F+1] keep matrix over groups; the last group is text and is kept in both directions."""
    keep = torch.ones(geometry.frames + 1, geometry.frames + 1, dtype=torch.bool)
    keep[: geometry.frames, : geometry.frames] = tile_keep(geometry.frames, k_global, global_frames)
    return keep


def tile_mask(
    frames: int, tokens_per_frame: int, k_global: int, *, global_frames: GlobalFrames = "first",
    text_tokens: int = 0, text_position: TextPosition = "first",
) -> torch.BoolTensor:
    """Dense reference mask [S, S], True = attend. S = frames * tokens_per_frame + text_tokens."""
    geometry = VideoGeometry(frames, tokens_per_frame, text_tokens, text_position)
    return blockmask.dense_group_mask(geometry.groups(), _group_keep(geometry, k_global, global_frames))


def _frames_key(global_frames: GlobalFrames) -> str | tuple[int, ...]:
    return global_frames if isinstance(global_frames, str) else tuple(int(i) for i in global_frames)


@functools.lru_cache(maxsize=64)
def _cached_block_mask(geometry: VideoGeometry, k_global: int, frames_key, block_size: int, device: str):
    groups = geometry.groups(device)
    return blockmask.group_block_mask(groups, _group_keep(geometry, k_global, frames_key).to(device), block_size)


def tile_block_mask(
    geometry: VideoGeometry, k_global: int, global_frames: GlobalFrames = "first",
    *, block_size: int = blockmask.DEFAULT_BLOCK_SIZE, device: torch.device | str = "cpu",
):
    """The flex BlockMask of the k:(F-k) mask, built from frame spans and cached per geometry and device."""
    global_frame_indices(geometry.frames, k_global, global_frames)  # validate before caching
    return _cached_block_mask(geometry, k_global, _frames_key(global_frames), block_size, str(torch.device(device)))


_flex_failed: set[str] = set()


def dispatch(
    geometry: VideoGeometry, k_global: int, global_frames: GlobalFrames = "first", *,
    device: torch.device | str = "cpu", block_size: int = blockmask.DEFAULT_BLOCK_SIZE,
    min_block_sparsity: float = 0.25,
) -> tuple[str, str]:
    """(method, reason) for method="auto". Never eager flex: flex means the compiled kernel."""
    if bool(tile_keep(geometry.frames, k_global, global_frames).all()):
        return "dense", "the mask keeps every tile"
    fallback = "sdpa_masked" if geometry.seq_len <= MAX_MASKED_SDPA_SEQ_LEN else "gather"
    if geometry.seq_len < MIN_FLEX_SEQ_LEN:
        return "sdpa_masked", f"S={geometry.seq_len} < {MIN_FLEX_SEQ_LEN}: a flex compile would not pay back"
    if str(torch.device(device)) in _flex_failed or blockmask.compiled_flex() is None:
        return fallback, "compiled flex attention is unavailable"
    density = blockmask.block_density(tile_block_mask(geometry, k_global, global_frames,
                                                      block_size=block_size, device=device))
    if 1.0 - density < min_block_sparsity:
        return fallback, f"block sparsity {1 - density:.2f} < min_block_sparsity {min_block_sparsity}"
    return "flex", f"block sparsity {1 - density:.2f}"


def tile_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, frames: int, tokens_per_frame: int, k_global: int,
    global_frames: GlobalFrames = "first", text_tokens: int = 0, text_position: TextPosition = "first",
    scale: float | None = None, method: Method = "auto", block_size: int = blockmask.DEFAULT_BLOCK_SIZE,
    min_block_sparsity: float = 0.25,
) -> torch.Tensor:
    """k:(F-k) tile-sparse attention on q, k, v [B, H, S, D] -> [B, H, S, D]; exact for the mask."""
    geometry = VideoGeometry(frames, tokens_per_frame, text_tokens, text_position)
    return attend(q, k, v, geometry, k_global, global_frames, scale=scale, method=method,
                  block_size=block_size, min_block_sparsity=min_block_sparsity)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: VideoGeometry, k_global: int,
    global_frames: GlobalFrames = "first", *, scale: float | None = None, method: Method = "auto",
    block_size: int = blockmask.DEFAULT_BLOCK_SIZE, min_block_sparsity: float = 0.25,
) -> torch.Tensor:
    """``tile_sparse_attention`` with a prepared geometry (what the processors call)."""
    if q.dim() != 4 or k.shape != q.shape[:3] + k.shape[3:] or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"q, k, v must be [B, H, S, D] with equal B, H, S; got {q.shape}, {k.shape}, {v.shape}")
    geometry.check_seq_len(q.shape[2])
    if method == "auto":
        method, _ = dispatch(geometry, k_global, global_frames, device=q.device, block_size=block_size,
                             min_block_sparsity=min_block_sparsity)
    if method == "dense":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if method == "flex":
        bm = tile_block_mask(geometry, k_global, global_frames, block_size=block_size, device=q.device)
        try:
            return blockmask.flex_attend(q, k, v, bm, scale=scale)
        except Exception as exc:  # compile or codegen failure: remember it and take the exact fallback
            if q.shape[2] <= MIN_FLEX_SEQ_LEN:
                raise
            _flex_failed.add(str(q.device))
            logger.warning("compiled flex attention failed on %s (%s); using gathered SDPA", q.device, exc)
            method = "gather"
    groups = geometry.groups(q.device)
    keep = _group_keep(geometry, k_global, global_frames).to(q.device)
    if method == "gather":
        return blockmask.gather_attend(q, k, v, groups, keep, scale=scale)
    if method == "sdpa_masked":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=blockmask.dense_group_mask(groups, keep), scale=scale)
    raise ValueError(f"method must be one of 'auto', 'flex', 'gather', 'sdpa_masked', 'dense'; got {method!r}")


def tile_recall(
    q: torch.Tensor, k: torch.Tensor, geometry: VideoGeometry, k_global: int,
    global_frames: GlobalFrames = "first", *, scale: float | None = None,
) -> torch.Tensor:
    """Recall per query row, [B, H, S]: the dense softmax mass that falls on the row's kept keys,

        recall_i = sum_{j : mask[i, j]} softmax_j(q_i . k_j * scale).

    It bounds the error: o_dense = r A + (1 - r) B with A = o_sparse (renormalised over kept keys) and
    B the mean of the dropped values, so |o_sparse - o_dense| = (1 - r)|A - B| <= 2 (1 - r) max|V|.
    """
    geometry.check_seq_len(q.shape[2])
    groups = geometry.groups(q.device)
    mass = blockmask.group_mass(q, k, groups, geometry.frames + 1, scale=scale)  # [B, H, S, F+1]
    keep_rows = _group_keep(geometry, k_global, global_frames).to(q.device)[groups]  # [S, F+1]
    return (mass * keep_rows).sum(-1)
