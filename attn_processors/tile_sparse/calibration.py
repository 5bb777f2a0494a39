"""Per-layer k by calibration: a training-free stand-in for the paper's layer-wise mask search
(Efficient-vDiT Algorithm 1), with the recall of the mask (``tile_recall``) as the criterion.

    plan = calibrate(pipe, ["a red car"], target_recall=0.9, num_frames=33)  # doctest: +SKIP
    plan.save("plan.json"); TileSparseConfig(plan="plan.json")                 # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core import blockmask
from ..core.controller import Controller
from ..core.install import apply
from ..core.kernels import Attend
from ..core.policy import check_choice
from ..core.processor import CallInfo, ControlledProcessor
from ..core.registry import register_technique
from ..core.sites import Select, Site
from .geometry import GlobalFrames, call_geometry, group_keep

STORE = "tile_recall"  # controller.stores key: {layer: {k: (summed recall, rows)}}


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(self.ks))
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in self.ks):
            raise ValueError(f"ks must hold ints >= 0 (global frame counts to probe), got {self.ks!r}")
        if isinstance(self.global_frames, list | tuple):
            object.__setattr__(self, "global_frames", tuple(int(i) for i in self.global_frames))
        else:
            check_choice("global_frames (or a list of frame indices)", self.global_frames,
                         ("first", "uniform"))
        if isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int) or self.max_rows < 1:
            raise ValueError(f"max_rows must be an int >= 1, got {self.max_rows!r}")


class _RecallProcessor(ControlledProcessor):
    """Dense output; records per k the summed recall (tile_recall) and row count in controller.stores."""

    def __init__(self, site: Site, controller: Controller, probe: TileRecallProbe) -> None:
        super().__init__(site, controller)
        self.probe = probe

    def wants(self, call: CallInfo) -> bool:
        return call_geometry(call) is not None

    def kernel(self, call: CallInfo) -> Attend:
        geometry, probe = call_geometry(call), self.probe
        sums = call.controller.stores.setdefault(STORE, {}).setdefault(self.site.name, {})

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
    pipe: Any, prompts: Sequence[str], *, target_recall: float = 0.9, global_frames: GlobalFrames = "first",
    ks: Sequence[int] = (), max_rows: int = 512, layers: Select | None = None, **pipe_kwargs: Any,
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
    sums = ctrl.stores.get(STORE, {})
    if frames is None or not sums:
        raise ValueError("calibration saw no video self-attention call; is this a Wan or CogVideoX pipeline?")
    recall = {name: {k: total / count for k, (total, count) in sorted(by_k.items())}
              for name, by_k in sums.items()}
    chosen = {name: select_k(r, target_recall, frames) for name, r in recall.items()}
    return TilePlan(chosen, recall, frames, target_recall, gf)
