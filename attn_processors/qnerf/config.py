"""QNeRFConfig: every switch of query consolidation (Patashnik et al., SIGGRAPH Asia 2024).

The paper's code is not released; a comment says "paper" where the value is the paper's and "ours"
where the paper leaves it open (docs/qnerf.md lists which is which).

>>> cfg = QNeRFConfig()
>>> cfg.query_factors, cfg.kv_factors, cfg.tau
((1, 2, 4), (1, 2), 2)
>>> QNeRFConfig(alpha=-1.0)
Traceback (most recent call last):
...
ValueError: alpha=-1.0; give a step size >= 0 (0: no guidance, the per-view edit)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

from ..core.sites import Select
from .field import Encoder


@dataclass(frozen=True)
class QNeRFConfig:
    """Query capture, mutual self-attention and the guidance / interval schedule of QNeRF.

    Layers are chosen among decoder self-attention layers (``layers``) by their downsampling factor
    relative to the latent, so the same config resolves on SD 1.5 (64x64 latent: factors 1, 2, 4 are
    ``up_blocks.3/2/1``), SDXL and the 3D world's small model.
    """

    # -- where ----------------------------------------------------------------------------------
    layers: Select = Select(places=("up",), kinds=("self",))  # candidate layers (paper: decoder attn1)
    query_factors: tuple[int, ...] = (1, 2, 4)  # QNeRF heads: latent / f (paper: 64, 32, 16 of SD 1.5)
    kv_factors: tuple[int, ...] = (1, 2)  # MasaCtrl K/V layers (MasaCtrl's up_blocks.2-3 on SD 1.5)
    # -- MasaCtrl mutual self-attention (the base editor) ---------------------------------------
    mutual: bool = True  # target queries attend to the source (inverted) view's K/V
    kv_start_step: int = 4  # from this sampling step on (MasaCtrl: 4 of 50)
    # -- guidance (soft injection, §3.3) --------------------------------------------------------
    alpha: float = 20.0  # z <- z - alpha * grad of the query distance (paper value unknown; ours)
    guidance_steps: int = 1  # gradient moves per guided step (paper: 1; more: smaller, surer moves; ours)
    hard_inject: bool = False  # guided steps replace target queries by rendered ones (paper's ablation)
    tau: int = 2  # guided steps, then free steps, per interval (paper value unknown; ours)
    until_step: int | None = None  # no consolidation from this step on (None: to the end; ours)
    early_exit: bool = True  # a guidance forward stops after the last query layer (same gradient)
    # -- the query field ----------------------------------------------------------------------
    encoder: Encoder = "triplane"
    fit_iters: int = 200  # per interval (paper value unknown; ours)
    fit_lr: float = 1e-2
    depth_weight: float = 0.1  # weight of the depth loss when depth is given (depth-nerfacto)
    warm_start: bool = True  # QNeRF_k starts from QNeRF_{k-1} (ours; the paper is silent)

    def __post_init__(self) -> None:
        if self.encoder not in get_args(Encoder):
            raise ValueError(f"encoder={self.encoder!r}; use one of {get_args(Encoder)}")
        for name in ("query_factors", "kv_factors"):
            value = tuple(int(f) for f in getattr(self, name))
            if any(f < 1 for f in value):
                raise ValueError(f"{name}={value}; give downsampling factors >= 1, e.g. (1, 2)")
            object.__setattr__(self, name, value)
        if not self.query_factors:
            raise ValueError("query_factors=(); give at least one factor, e.g. (1, 2, 4)")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"alpha={self.alpha!r}; give a step size >= 0 (0: no guidance, the per-view "
                             "edit)")
        if isinstance(self.tau, bool) or not isinstance(self.tau, int) or self.tau < 1:
            raise ValueError(f"tau={self.tau!r}; give the guided (and free) steps per interval, an int >= 1")
        if isinstance(self.guidance_steps, bool) or not isinstance(self.guidance_steps, int) \
                or self.guidance_steps < 1:
            raise ValueError(f"guidance_steps={self.guidance_steps!r}; give the gradient moves per guided "
                             "step, an int >= 1 (the paper: 1)")
        if self.kv_start_step < 0:
            raise ValueError(f"kv_start_step={self.kv_start_step!r}; give a step index >= 0")
        if self.until_step is not None and self.until_step < 0:
            raise ValueError(f"until_step={self.until_step!r}; give a step index >= 0, or None")
        if self.fit_iters < 0 or not self.fit_lr > 0 or self.depth_weight < 0:
            raise ValueError(f"fit_iters={self.fit_iters}, fit_lr={self.fit_lr}, depth_weight="
                             f"{self.depth_weight}; give iters >= 0, lr > 0 and a weight >= 0")
        if self.layers.resolutions:
            raise ValueError("layers cannot select by resolutions (the installer has no latent size); "
                             "use query_factors / kv_factors, e.g. query_factors=(1, 2)")
