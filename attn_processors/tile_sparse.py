"""Efficient-vDiT tile-sparse video attention (arXiv 2502.06155, §3.3 "Attention Tile").

A video DiT's 3D attention map is an F x F grid of frame-to-frame tiles (F latent frames, each tile
tokens_per_frame^2). The k:(F-k) mask keeps tile (query frame a, key frame b) iff

    a == b  or  a in G  or  b in G          (G: the k global reference frames)

so kept tiles = 2kF - k^2 + F - k (paper §3.3), linear in F for fixed k. Text tokens stay dense
(their rows and columns are kept). Kernels, all exact for the mask (``attn_processors.core.blockmask``):
gathered SDPA over each query group's kept keys (the default on CPU and CUDA: as fast as the tuned
CPU flex and faster than compiled flex on an H200, no compile), compiled FlexAttention with a
BlockMask built analytically from frame spans (on request), and masked SDPA (reference, short
sequences). ``dispatch`` says which one runs and why.

Paper -> code: mask family (§3.3, Fig. 3) -> ``tile_keep``; kept-tile count -> ``kept_tile_fraction``;
layer-wise mask search (Algorithm 1) -> ``calibrate`` with a recall target (our stand-in loss).

Example::

    >>> import torch
    >>> q = k = v = torch.randn(1, 2, 4 * 6, 8)
    >>> out = tile_sparse_attention(q, k, v, frames=4, tokens_per_frame=6, k_global=1)
    >>> out.shape
    torch.Size([1, 2, 24, 8])
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from attn_processors.core import blockmask
from attn_processors.core.controller import Controller
from attn_processors.core.install import apply
from attn_processors.core.kernels import warn_once
from attn_processors.core.processor import CallInfo, ControlledProcessor
from attn_processors.core.registry import register_technique
from attn_processors.core.sites import Select, Site

TextPosition = Literal[
    "first",  # [text, video] (CogVideoX joint attention)
    "last",  # [video, text] (HunyuanVideo)
    "none",  # video only (Wan / LTX self-attention)
]
GlobalFrames = Literal["first", "uniform"] | Sequence[int]  # "first": 0..k-1; "uniform": evenly spaced
Method = Literal[
    "auto",  # choose by dispatch(): dense / masked SDPA / gather
    "flex",  # compiled flex_attention + analytic BlockMask
    "gather",  # exact: one SDPA per distinct kept-key set, keys gathered (no compiler, no S^2 mask)
    "sdpa_masked",  # reference: SDPA with the dense [S, S] bool mask
    "dense",  # plain SDPA, no mask (what auto picks when every tile is kept)
]

MIN_SPARSE_SEQ_LEN = 2048  # below this one masked SDPA call is cheapest (and no flex compile)


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
    """Frame-tile mask [F, F] (query frame a, key frame b): a == b or a in G or b in G (paper §3.3)."""
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


def tile_mask(
    frames: int, tokens_per_frame: int, k_global: int, *, global_frames: GlobalFrames = "first",
    text_tokens: int = 0, text_position: TextPosition = "first",
) -> torch.BoolTensor:
    """Dense reference mask [S, S], True = attend. S = frames * tokens_per_frame + text_tokens."""
    geometry = VideoGeometry(frames, tokens_per_frame, text_tokens, text_position)
    return blockmask.dense_group_mask(geometry.groups(), group_keep(geometry, k_global, global_frames))


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


_flex_failed: set[str] = set()


def dispatch(
    geometry: VideoGeometry, k_global: int, global_frames: GlobalFrames = "first", *,
    device: torch.device | str = "cpu",
) -> tuple[str, str]:
    """(method, reason) for method="auto": plain SDPA when every tile is kept, one masked SDPA call
    for short sequences, gathered SDPA otherwise. Never flex: it is measured slower than gather on
    both kinds of machine we have, so it runs only when asked for (``method="flex"``).

    CPU (fp32, S = 6144, 1 thread): flex with the rewritten template ties with gather when frame spans
    align to the block size (3.4x vs 3.1x over SDPA at 72.9 % sparsity) and loses when they do not
    (partial blocks run mask_mod); it also compiles per geometry. H200 (bf16, D 128, H 24, torch 2.11,
    benchmarks/results/tile_sparse_gpu_h200.json): gather beat compiled flex at all nine masks of the
    brief, e.g. 2.85x vs 2.25x over SDPA at S = 86 400, 72.9 %, and 1.27x vs 0.97x at S = 28 800, 46.9 %.
    """
    del device  # the choice is the same on CPU and CUDA (measured on both)
    if bool(tile_keep(geometry.frames, k_global, global_frames).all()):
        return "dense", "the mask keeps every tile"
    if geometry.seq_len < MIN_SPARSE_SEQ_LEN:
        return "sdpa_masked", f"S={geometry.seq_len} < {MIN_SPARSE_SEQ_LEN}: one masked SDPA call is cheapest"
    return "gather", "gathered SDPA: faster than compiled flex on CPU and on an H200 (see docstring)"


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


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geometry: VideoGeometry, k_global: int,
    global_frames: GlobalFrames = "first", *, scale: float | None = None, method: Method = "auto",
    block_size: int = blockmask.DEFAULT_BLOCK_SIZE,
    inner: Callable[..., torch.Tensor] | None = None, attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``tile_sparse_attention`` with a prepared geometry (what the processors call).

    ``inner``: a kernel ``attend(q, k, v, *, mask=None, scale=None)`` (e.g. SageAttention) run on each
    query group's kept keys instead of SDPA. ``attn_mask``: an extra mask (bool or additive,
    broadcastable to [B, H, S, S], e.g. text key padding) intersected with the tile mask. Either
    forces the gathered path.
    """
    if q.dim() != 4 or k.shape != q.shape[:3] + k.shape[3:] or v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"q, k, v must be [B, H, S, D] with equal B, H, S; got {q.shape}, {k.shape}, {v.shape}"
        )
    geometry.check_seq_len(q.shape[2])
    if inner is not None or attn_mask is not None:
        plan = tile_gather_plan(geometry, k_global, global_frames, device=q.device)  # full mask: 1 entry
        return blockmask.gather_attend(q, k, v, plan, scale=scale, mask=attn_mask, attend=inner)
    if method == "auto":
        method, _ = dispatch(geometry, k_global, global_frames, device=q.device)
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
    if method == "sdpa_masked":
        groups = geometry.groups(q.device)
        mask = blockmask.dense_group_mask(groups, group_keep(geometry, k_global, global_frames).to(q.device))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    raise ValueError(f"method must be 'auto', 'flex', 'gather', 'sdpa_masked' or 'dense'; got {method!r}")


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


# -- Diffusers processors ------------------------------------------------------------------------
def default_k(frames: int) -> int:
    """k without a calibrated plan: round(sqrt(F)) - 1, at least 1 (2 for F = 8, 4 for F = 24; brief §4)."""
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
    dense_blocks: int = 2  # transformer blocks 0 .. dense_blocks-1 stay dense
    block_size: int = blockmask.DEFAULT_BLOCK_SIZE  # flex BlockMask tile (tokens)
    method: str = "auto"  # "auto" | "flex" | "gather" | "sdpa_masked" (see Method)
    kernel: Any = None  # a SageConfig: its quantized kernel runs on each query group's kept keys
    layers: Select = Select(kinds=("self", "joint"), families=("wan", "cogvideox"))

    def __post_init__(self) -> None:
        if isinstance(self.global_frames, list | tuple):
            object.__setattr__(self, "global_frames", tuple(int(i) for i in self.global_frames))
        elif self.global_frames not in ("first", "uniform"):
            raise ValueError(f"global_frames must be 'first', 'uniform' or a list of frame indices, "
                             f"got {self.global_frames!r}")
        if isinstance(self.k, str) and self.k != "auto":
            raise ValueError(f"k must be an int >= 0, 'auto' or a {{layer name: k}} mapping, got {self.k!r}")
        ks = self.k.values() if isinstance(self.k, Mapping) else [self.k] if isinstance(self.k, int) else []
        if any(not isinstance(k, int) or k < 0 for k in ks):
            raise ValueError(f"k values must be ints >= 0, got {self.k!r}")
        if not 0.0 <= self.dense_steps <= 1.0 or self.dense_blocks < 0:
            raise ValueError(f"dense_steps must be a fraction in [0, 1] and dense_blocks >= 0, "
                             f"got {self.dense_steps} and {self.dense_blocks}")
        if self.block_size < 16 or self.block_size % 16:
            raise ValueError(f"block_size must be a positive multiple of 16, got {self.block_size}")
        if self.method not in ("auto", "flex", "gather", "sdpa_masked"):
            raise ValueError(f"method must be 'auto', 'flex', 'gather' or 'sdpa_masked', got {self.method!r}")
        if self.kernel is not None:
            inner_kernel(self.kernel)  # validate now


def inner_kernel(config: Any) -> Callable[..., torch.Tensor]:
    """The attend function of a kernel config composed under the tile mask (tile_sparse+sage).

    Composition rule: the tile mask decides which keys each query group sees; the inner kernel
    computes attention over them, on every call the tile processor handles (its dense warm-up runs
    the inner kernel on all keys). The inner config's own layer and dense policies do not apply:
    set them on TileSparseConfig (a non-default one raises, rather than being ignored).
    """
    if type(config).__name__ != "SageConfig":
        raise ValueError(f"TileSparseConfig.kernel takes a SageConfig (or None), got {type(config).__name__}")
    from attn_processors.sage.dispatch import sageattn
    from attn_processors.sage.technique import SageConfig

    policy = {f: getattr(config, f) for f in ("dense_steps", "dense_blocks", "dense_layers", "dense_calls",
                                              "policy", "layers")}
    defaults = {f: getattr(SageConfig(), f) for f in policy}
    changed = sorted(f for f in policy if policy[f] != defaults[f])
    if changed:
        raise ValueError(f"SageConfig fields {changed} do not apply under tile_sparse+sage; set the dense "
                         "warm-up (dense_steps, dense_blocks) and layers on TileSparseConfig instead")

    def sage_attend(q, k, v, *, mask=None, scale=None):
        return sageattn(q, k, v, sm_scale=scale, attn_mask=mask, mode=config.mode, backend=config.backend,
                        arch=config.arch, min_kv_len=config.min_kv_len, nan_guard=config.nan_guard)

    return sage_attend


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


class TileSparseProcessor(ControlledProcessor):
    """Runs the k:(F-k) kernel on self/joint attention calls outside the dense warm-up; stock otherwise."""

    def __init__(self, site: Site, controller: Controller, config: TileSparseConfig, k: int | None) -> None:
        super().__init__(site, controller)
        self.config, self.k = config, k  # k None: default_k(frames) at call time
        self.inner = None if config.kernel is None else inner_kernel(config.kernel)

    def k_for(self, frames: int) -> int:
        return min(default_k(frames) if self.k is None else self.k, frames)

    def dense_step(self, call: CallInfo) -> bool:
        n = call.controller.num_steps
        warm = 0 if n is None else math.floor(self.config.dense_steps * n + 1e-6)  # warm-up steps
        return call.step is not None and call.step < warm

    def sparse(self, call: CallInfo, geometry: VideoGeometry | None) -> bool:
        """Whether this call drops tiles: outside the dense warm-up (steps, blocks) and k < F."""
        if geometry is None or self.site.block < self.config.dense_blocks or self.dense_step(call):
            return False
        return self.k_for(geometry.frames) < geometry.frames

    def wants(self, call: CallInfo) -> bool:
        geometry = call_geometry(call)
        return self.sparse(call, geometry) or (self.inner is not None and geometry is not None)

    def kernel(self, call: CallInfo):
        geometry = call_geometry(call)
        if not self.sparse(call, geometry):  # only with an inner kernel: it runs on all keys
            return self.inner
        k_global, cfg = self.k_for(geometry.frames), self.config

        def tile_attend(q, k, v, *, mask=None, scale=None):  # mask: e.g. text key padding, kept exact
            return attend(q, k, v, geometry, k_global, cfg.global_frames, scale=scale, method=cfg.method,
                          block_size=cfg.block_size,
                          inner=self.inner, attn_mask=mask)

        return tile_attend


def _layer_k(config: TileSparseConfig, plan: TilePlan | None, name: str) -> int | None:
    if plan is not None and name in plan.k:
        return plan.k[name]
    if isinstance(config.k, Mapping):
        return config.k.get(name)
    return config.k if isinstance(config.k, int) else None


@register_technique(TileSparseConfig)
def _install(config: TileSparseConfig, sites: Sequence[Site], controller: Controller) -> dict:
    plan = TilePlan.load(config.plan) if config.plan else None
    return {s.name: TileSparseProcessor(s, controller, config, _layer_k(config, plan, s.name)) for s in sites}


# -- calibration: a training-free stand-in for the paper's per-layer mask search (Algorithm 1) ------
@dataclass(frozen=True)
class TilePlan:
    """Per-layer k chosen by calibration, with the measured mean recall of every k tried."""

    k: dict[str, int]  # layer name -> chosen k
    recall: dict[str, dict[int, float]]  # layer name -> {k: mean recall over prompts, steps, heads, rows}
    frames: int
    target_recall: float
    global_frames: str | tuple[int, ...] = "first"

    def save(self, path: str | Path) -> None:
        data = {"format": "tile_sparse_plan/v1", **asdict(self),
                "recall": {n: {str(k): r for k, r in rs.items()} for n, rs in self.recall.items()}}
        Path(path).write_text(json.dumps(data, indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> TilePlan:
        if not Path(path).is_file():
            raise ValueError(f"tile-sparse plan {path} not found; make one with calibrate(...).save(path)")
        data = json.loads(Path(path).read_text())
        if data.pop("format", None) != "tile_sparse_plan/v1":
            raise ValueError(f"{path} is not a tile_sparse_plan/v1 JSON file")
        gf = data["global_frames"]
        return cls(k={n: int(k) for n, k in data["k"].items()},
                   recall={n: {int(k): float(r) for k, r in rs.items()} for n, rs in data["recall"].items()},
                   frames=int(data["frames"]), target_recall=float(data["target_recall"]),
                   global_frames=gf if isinstance(gf, str) else tuple(gf))


def select_k(recall_by_k: Mapping[int, float], target_recall: float, frames: int) -> int:
    """The sparsest k (fewest global frames) whose mean recall reaches the target; F (dense) if none."""
    passing = [k for k, r in recall_by_k.items() if r >= target_recall and k < frames]
    return min(passing) if passing else frames


@dataclass(frozen=True)
class TileRecallProbe:
    """Install-only config for `calibrate`: record the recall of each k per layer; output stays dense."""

    ks: tuple[int, ...] = ()  # empty: every k in 0 .. F
    global_frames: str | tuple[int, ...] = "first"
    max_rows: int = 512  # query rows sampled per call (evenly spaced) for the dense probabilities
    layers: Select = Select(kinds=("self", "joint"), families=("wan", "cogvideox"))


class _RecallProcessor(ControlledProcessor):
    """Dense output; records per k the summed recall (tile_recall) and row count in controller.stores."""

    def __init__(self, site: Site, controller: Controller, probe: TileRecallProbe) -> None:
        super().__init__(site, controller)
        self.probe = probe

    def wants(self, call: CallInfo) -> bool:
        return call_geometry(call) is not None

    def kernel(self, call: CallInfo):
        geometry, probe = call_geometry(call), self.probe
        sums = call.controller.stores.setdefault("tile_recall", {}).setdefault(self.site.name, {})

        def record_then_sdpa(q, k, v, *, mask=None, scale=None):
            n_rows = min(probe.max_rows, q.shape[2])
            rows = torch.linspace(0, q.shape[2] - 1, n_rows, device=q.device).long()  # evenly spaced
            groups = geometry.groups(q.device)
            mass = blockmask.group_mass(q[:, :, rows], k, groups, geometry.frames + 1, scale=scale)  # B,H,R,G
            for k_global in probe.ks or range(geometry.frames + 1):
                if k_global <= geometry.frames and (isinstance(probe.global_frames, str)
                                                    or k_global == len(probe.global_frames)):
                    keep = group_keep(geometry, k_global, probe.global_frames).to(q.device)[groups[rows]]
                    total, count = sums.get(k_global, (0.0, 0))
                    sums[k_global] = (total + float((mass * keep).sum()), count + mass[..., 0].numel())
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

        return record_then_sdpa


@register_technique(TileRecallProbe)
def _install_probe(config: TileRecallProbe, sites: Sequence[Site], controller: Controller) -> dict:
    return {s.name: _RecallProcessor(s, controller, config) for s in sites}


def calibrate(
    pipe, prompts: Sequence[str], *, target_recall: float = 0.9, global_frames: GlobalFrames = "first",
    ks: Sequence[int] = (), max_rows: int = 512, layers: Select | None = None, **pipe_kwargs,
) -> TilePlan:
    """Run `pipe` densely on `prompts`, measure per layer the recall of each k, pick the sparsest k
    with mean recall >= target_recall (``select_k``). pipe_kwargs go to every ``pipe(prompt, ...)``."""
    if not prompts:
        raise ValueError("calibrate needs at least one prompt")
    gf = global_frames if isinstance(global_frames, str) else tuple(global_frames)
    if not isinstance(gf, str):  # an explicit frame list fixes k: compare it with dense only
        if any(k != len(gf) for k in ks):
            raise ValueError(f"global_frames={list(gf)} fixes k = {len(gf)}; pass ks=() or ks=({len(gf)},)")
        ks = (len(gf),)
    probe = TileRecallProbe(tuple(ks), gf, max_rows, **({"layers": layers} if layers is not None else {}))
    with apply(pipe, probe) as ctrl:
        for prompt in prompts:
            pipe(prompt, **pipe_kwargs)
        frames = ctrl.grid[0] if ctrl.grid is not None else None
    sums = ctrl.stores.get("tile_recall", {})
    if frames is None or not sums:
        raise ValueError("calibration saw no video self-attention call; is this a Wan or CogVideoX pipeline?")
    recall = {name: {k: total / count for k, (total, count) in sorted(by_k.items())}
              for name, by_k in sums.items()}
    chosen = {name: select_k(r, target_recall, frames) for name, r in recall.items()}
    return TilePlan(chosen, recall, frames, target_recall, gf)
