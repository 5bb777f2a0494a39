"""Frame-tile statistics of Wan 3D self-attention (attn1), the structure tile-sparse attention uses.

Wan's video tokens are frame-major (t, h, w) after patchify, so the (S x S) self-attention map with
S = F*T (F latent frames, T tokens per frame) is an F x F grid of (T x T) frame tiles. The diagonal
tiles hold same-frame attention; a uniform map puts 1/F of every query's mass there, so

    diagonal_tile_ratio = mean_query(mass on the query's own frame) / (1 / F)

(1.0: no frame structure; F: purely per-frame attention). ``FrameTileProbe`` is a core processor
that computes attn1 on the explicit-softmax path (numerically the same as SDPA) and records this
mass; it changes nothing in the output, and in training its differentiable ``last_mass`` can feed
an optional regulariser.
"""

from __future__ import annotations

import torch

from attn_processors.core import CallInfo, ControlledProcessor, Controller, Site


def diagonal_mass(probs: torch.Tensor, frames: int) -> torch.Tensor:
    """Per (batch, head) mean over queries of the attention mass on the query's own frame.

    probs: (B, H, S, S) rows summing to 1, S = frames * T, frame-major tokens. Returns (B, H).
    """
    b, h, s, _ = probs.shape
    if s % frames:
        raise ValueError(f"sequence length {s} is not a multiple of the frame count {frames}")
    t = s // frames
    tiles = probs.reshape(b, h, frames, t, frames, t).sum(-1)  # (B, H, Fq, Tq, Fk) mass per key frame
    return tiles.diagonal(dim1=2, dim2=4).mean(dim=(-1, -2))  # diag over (Fq, Fk), mean over (Tq, Fq)


class FrameTileProbe(ControlledProcessor):
    """attn1 processor: the core's explicit-softmax path, recording same-frame mass (output unchanged).

    ``frames`` must be set to the latent frame count before a forward. After each call,
    ``last_mass`` (B, H) keeps its autograd graph (for a training regulariser) and, when
    ``record`` is True, ``history`` collects detached per-call (B, H) masses for evaluation.
    """

    def __init__(self, site: Site, frames: int | None = None, record: bool = False) -> None:
        if site.kind != "self":
            raise ValueError(f"FrameTileProbe measures self-attention; {site.name} is {site.kind}-attention")
        super().__init__(site, Controller())
        self.frames = frames
        self.record = record
        self.last_mass: torch.Tensor | None = None
        self.history: list[torch.Tensor] = []

    def edit_probs(self, probs: torch.Tensor, call: CallInfo) -> torch.Tensor:  # (B, H, S, S) fp32
        if self.frames is None:
            raise ValueError("set FrameTileProbe.frames to the latent frame count before the forward")
        self.last_mass = diagonal_mass(probs, self.frames)
        if self.record:
            self.history.append(self.last_mass.detach().float().cpu())
        return probs


def install_probes(transformer, frames: int | None = None, record: bool = False) -> list[FrameTileProbe]:
    """One FrameTileProbe per transformer block's attn1, in block order.

    Sites are built here rather than by ``build_sites`` because training installs its own padded
    cross-attention processor on attn2, which the core does not know.
    """
    probes = []
    for i, block in enumerate(transformer.blocks):
        probe = FrameTileProbe(Site(f"blocks.{i}.attn1", "wan", "block", i, "self"), frames, record)
        block.attn1.set_processor(probe)
        probes.append(probe)
    return probes
