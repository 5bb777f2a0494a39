"""ZeroToHeroConfig: every range, weight and switch of Zero-to-Hero (Sobol et al., NeurIPS 2024).

Defaults are the paper's (App. 8.5) unless a comment says "ours": the paper leaves those open.

>>> cfg = ZeroToHeroConfig()
>>> len(cfg.timesteps()), cfg.nfe()                   # Hourglass: 26 steps, 66 network evaluations
(26, 66)
>>> plain = ZeroToHeroConfig.plain(50)                # everything off: a plain 50-step DDIM sampler
>>> plain.nfe(), plain.amf, plain.msa
(50, False, False)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from ..core.sites import Select
from .filtering import Pooling
from .schedule import hourglass_timesteps, resample_counts, uniform_timesteps

Schedule = Literal[
    "hourglass",  # §4.5: stage_steps over the stages split at stage_bounds (10/6/10 -> 26 steps)
    "uniform",  # DDIMScheduler's spacing with num_steps steps (the plain sampler)
]
FilterRows = Literal[
    "all",  # filter every batch row on its own, the source branch too (ours; the paper is silent)
    "target",  # filter the target rows only; the source branch's maps are left as computed
]
Range = tuple[float, float]


@dataclass(frozen=True)
class ZeroToHeroConfig:
    """Attention map filtering + mutual self-attention + Hourglass resampling, on Zero-1-to-3.

    Timestep ranges are closed intervals (lo, hi) of the scheduler timestep t (0..999).
    """

    # -- attention map filtering (AMF, §4.2-4.3) --------------------------------------------------
    amf: bool = True
    pooling: Pooling = "min"  # in-step pooling f; paper: min (mean also tried)
    instep_range: Range = (800, 1000)  # in-step pooling on t in [800, 1000] (paper)
    crossstep_range: Range = (600, 1000)  # cross-step history blend on t in [600, 1000] (paper)
    alpha_c: float = 0.2  # weight of the current map in the history blend (paper; history dominates)
    alpha_h: float = 0.5  # weight of the refined map in the history update (paper)
    amf_layers: Select = Select(kinds=("self",))  # ours: every self-attention layer (paper: not stated)
    filter_rows: FilterRows = "all"  # ours: the source branch is filtered too
    # -- resampling (§4.3, RePaint-style jump 1) ---------------------------------------------------
    resample_iterations: int = 5  # R (paper; R in 4..8 behaves alike, 15-20 loses diversity)
    resample_range: Range = (800, 1000)  # steps with t in [800, 1000] run R times (paper)
    # -- early-stage mutual self-attention (MSA, §4.4) ---------------------------------------------
    msa: bool = True
    msa_range: Range = (700, 1000)  # paper, Zero-1-to-3; Zero123-XL uses (600, 1000): see zero123_xl()
    # decoder self-attention at latent / f for these f: (1, 2) = 32x32 and 16x16 of Zero-1-to-3's 32x32
    # latent, i.e. up_blocks.3 and up_blocks.2 (paper); encoder layers shift the pose (paper)
    msa_res_factors: tuple[int, ...] = (1, 2)
    # -- sampling schedule (§4.5) -----------------------------------------------------------------
    schedule: Schedule = "hourglass"
    stage_steps: tuple[int, ...] = (10, 6, 10)  # steps in [800,1000) / [200,800) / [0,200) (paper)
    stage_bounds: tuple[int, ...] = (200, 800)  # stage edges (paper); the integers are ours (schedule.py)
    num_steps: int = 50  # step count of the "uniform" schedule (the demo's 50; unused by "hourglass")

    def __post_init__(self) -> None:
        for name, choices in (("pooling", get_args(Pooling)), ("filter_rows", get_args(FilterRows)),
                              ("schedule", get_args(Schedule))):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r}; use one of {choices}")
        for name in ("instep_range", "crossstep_range", "resample_range", "msa_range"):
            value = tuple(getattr(self, name))
            if len(value) != 2 or not all(math.isfinite(v) for v in value) or value[0] > value[1]:
                raise ValueError(f"{name}={getattr(self, name)!r}; give (lo, hi) timesteps with lo <= hi, "
                                 "e.g. (800, 1000)")
            object.__setattr__(self, name, value)
        for name in ("alpha_c", "alpha_h"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a weight in [0, 1]")
        if isinstance(self.resample_iterations, bool) or not isinstance(self.resample_iterations, int) \
                or self.resample_iterations < 1:
            raise ValueError(f"resample_iterations={self.resample_iterations!r}; give R >= 1 "
                             "(1: no resampling)")
        if self.amf_layers.resolutions:
            raise ValueError("amf_layers cannot select by resolutions (the installer has no latent "
                             "size); select by names, places or blocks, e.g. Select(places=('up',))")
        object.__setattr__(self, "msa_res_factors", tuple(int(f) for f in self.msa_res_factors))
        if self.msa and (not self.msa_res_factors or min(self.msa_res_factors) < 1):
            raise ValueError(f"msa_res_factors={self.msa_res_factors!r}; give downsampling factors >= 1, "
                             "e.g. (1, 2), or set msa=False")
        object.__setattr__(self, "stage_steps", tuple(self.stage_steps))
        object.__setattr__(self, "stage_bounds", tuple(self.stage_bounds))
        if self.schedule == "hourglass":
            hourglass_timesteps(self.stage_steps, self.stage_bounds)  # raises on a bad split
        elif not 1 <= self.num_steps <= 1000:
            raise ValueError(f"num_steps={self.num_steps!r}; give 1..1000 steps for the uniform schedule")

    @classmethod
    def plain(cls, num_steps: int = 50) -> ZeroToHeroConfig:
        """Everything off: uniform DDIM, R = 1, no filtering, no mutual attention."""
        return cls(amf=False, msa=False, resample_iterations=1, schedule="uniform", num_steps=num_steps)

    @classmethod
    def zero123_xl(cls) -> ZeroToHeroConfig:
        """The paper's Zero123-XL setting: mutual self-attention on t in [600, 1000]
        (change other fields with ``dataclasses.replace``)."""
        return cls(msa_range=(600, 1000))

    def timesteps(self, num_train: int = 1000, steps_offset: int = 1) -> list[int]:
        """The sampled timesteps, strictly decreasing."""
        if self.schedule == "hourglass":
            return hourglass_timesteps(self.stage_steps, self.stage_bounds, num_train)
        return uniform_timesteps(self.num_steps, num_train, steps_offset)

    def iterations(self, timesteps: list[int]) -> list[int]:
        """R_t per step (R on the resampling range, else 1)."""
        return resample_counts(timesteps, self.resample_iterations, self.resample_range)

    def nfe(self, num_train: int = 1000, steps_offset: int = 1) -> int:
        """Network evaluations of one sample (each a batched CFG call): the sum of R_t."""
        return sum(self.iterations(self.timesteps(num_train, steps_offset)))
