"""The k:(F-k) attention-tile mask of Efficient-vDiT (arXiv 2502.06155, Sec. 3.3 "Attention Tile").

A video DiT's 3D attention map is an F x F grid of frame-to-frame tiles (F latent frames, each tile
tokens_per_frame^2). The mask keeps tile (query frame a, key frame b) iff

    a == b  or  a in G  or  b in G          (G: the k global reference frames)

so kept tiles = 2kF - k^2 + F - k (Sec. 3.3), linear in F for fixed k. Text tokens stay dense (their
rows and columns are kept). Everything here is pure tensor maths on the token layout.

    >>> kept_tile_fraction(8, 2), round(block_sparsity(VideoGeometry(8, 16), 2), 4)
    (0.53125, 0.4688)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from ..core import blockmask
from ..core.kernels import warn_once

if TYPE_CHECKING:
    from ..core.processor import CallInfo

TextPosition = Literal[
    "first",  # [text, video] (CogVideoX joint attention)
    "last",  # [video, text] (HunyuanVideo)
    "none",  # video only (Wan / LTX self-attention)
]
GlobalFrames = Literal["first", "uniform"] | Sequence[int]  # "first": 0..k-1; "uniform": evenly spaced


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
        if self.text_tokens == 0:  # one canonical form per layout (equality, mask cache keys)
            object.__setattr__(self, "text_position", "none")

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


def global_frame_indices(
    frames: int, k_global: int, global_frames: GlobalFrames = "first"
) -> tuple[int, ...]:
    """The k global reference frames G. "first": 0..k-1; "uniform": floor(i F / k); or an explicit list."""
    if not 0 <= k_global <= frames:
        raise ValueError(f"k_global must be in [0, frames={frames}], got {k_global}")
    if isinstance(global_frames, str):
        if global_frames == "first":
            return tuple(range(k_global))
        if global_frames == "uniform":
            return tuple(i * frames // k_global for i in range(k_global))
        raise ValueError(
            f"global_frames must be 'first', 'uniform' or a list of frame indices, got {global_frames!r}"
        )
    chosen = tuple(int(i) for i in global_frames)
    if len(chosen) != k_global or len(set(chosen)) != k_global or not all(0 <= i < frames for i in chosen):
        raise ValueError(
            f"global_frames list must hold k_global={k_global} distinct frame indices in [0, {frames}), "
            f"got {list(global_frames)}"
        )
    return tuple(sorted(chosen))


def tile_keep(frames: int, k_global: int, global_frames: GlobalFrames = "first") -> torch.Tensor:
    """Frame-tile mask [F, F] (query frame a, key frame b): a == b or a in G or b in G (Sec. 3.3)."""
    is_global = torch.zeros(frames, dtype=torch.bool)
    is_global[list(global_frame_indices(frames, k_global, global_frames))] = True
    return torch.eye(frames, dtype=torch.bool) | is_global[:, None] | is_global[None, :]


def kept_tile_fraction(frames: int, k_global: int) -> float:
    """Analytic density of the k:(F-k) mask: (2kF - k^2 + F - k) / F^2 (sparsity is 1 minus this)."""
    f, k = frames, k_global
    return (2 * k * f - k * k + f - k) / (f * f)


def group_keep(geometry: VideoGeometry, k_global: int, global_frames: GlobalFrames) -> torch.Tensor:
    """[F+1, F+1] keep matrix over groups; the last group is text and is kept in both directions."""
    keep = torch.ones(geometry.frames + 1, geometry.frames + 1, dtype=torch.bool)
    keep[: geometry.frames, : geometry.frames] = tile_keep(geometry.frames, k_global, global_frames)
    return keep


def block_sparsity(geometry: VideoGeometry, k_global: int, global_frames: GlobalFrames = "first") -> float:
    """Fraction of the [S, S] attention the mask drops, text rows and columns included (they are kept).

    Without text it is 1 - kept_tile_fraction(F, k). This is what a sparse kernel saves, and what
    ``TileSparseConfig.min_block_sparsity`` compares: below it the layer runs dense.
    """
    frames_key = global_frames if isinstance(global_frames, str) else tuple(int(i) for i in global_frames)
    return _block_sparsity(geometry, k_global, frames_key)


@functools.lru_cache(maxsize=256)  # asked on every attention call the processors see
def _block_sparsity(geometry: VideoGeometry, k_global: int, global_frames: GlobalFrames) -> float:
    sizes = torch.full((geometry.frames + 1,), geometry.tokens_per_frame, dtype=torch.float64)
    sizes[-1] = geometry.text_tokens
    keep = group_keep(geometry, k_global, global_frames).double()
    kept = float(sizes @ keep @ sizes)
    return 1.0 - kept / geometry.seq_len**2


def tile_mask(
    frames: int, tokens_per_frame: int, k_global: int, *, global_frames: GlobalFrames = "first",
    text_tokens: int = 0, text_position: TextPosition = "first",
) -> torch.BoolTensor:
    """Dense reference mask [S, S], True = attend. S = frames * tokens_per_frame + text_tokens."""
    geometry = VideoGeometry(frames, tokens_per_frame, text_tokens, text_position)
    return blockmask.dense_group_mask(geometry.groups(), group_keep(geometry, k_global, global_frames))


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
    keep_rows = group_keep(geometry, k_global, global_frames).to(q.device)[groups]  # [S, F+1]
    return (mass * keep_rows).sum(-1)


def call_geometry(call: CallInfo) -> VideoGeometry | None:
    """Frames, tokens per frame and text layout of a self/joint attention call; None if unknown."""
    if call.grid is None or call.q_len != call.kv_len:
        return None
    text = call.text_len if call.text_pos in ("first", "last") else 0
    geometry = VideoGeometry(call.frames, call.tokens_per_frame, text, call.text_pos if text else "none")
    if geometry.seq_len != call.q_len:
        warn_once(f"tile_sparse:geometry:{call.site.name}:{call.q_len}",
                  f"{call.site.name}: {call.q_len} tokens do not match the video grid {call.grid} + "
                  f"{text} text tokens; this layer runs dense.")
        return None
    return geometry
