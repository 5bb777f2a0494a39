"""StyleConfig: IlluSign style injection and its peers, one `mode` flag apart.

A field left None takes the mode's default (`MODE_DEFAULTS`, `default_sites`); `resolved()` returns
the config with every default written in, which is what processors and pipelines read.

- illusign: queries w_img Q_content + w_edge Q_edges (paper: 1, 0.5); K/V the style's (replace);
  layers: decoder self-attention at its highest resolution (SD1.5: up_blocks.3.*.attn1).
- style_id: queries gamma Q_content + (1 - gamma) Q_out, logits x T (1.5); K/V the style's;
  layers: decoder self-attention at its two highest resolutions (SD1.5: up_blocks.2-3).
- kv_swap: the output's own queries on the style's K/V (MasaCtrl); layers as style_id.
- style_aligned: own queries, AdaIN'd to the style's Q statistics; K/V own ++ style's (concat),
  K AdaIN'd; every self-attention layer.

>>> cfg = StyleConfig().resolved()
>>> cfg.w_img, cfg.w_edge, cfg.edge_stream, cfg.contrast, cfg.temperature
(1.0, 0.5, 'edges', 1.67, 1.0)
>>> StyleConfig(mode="style_id").resolved().temperature
1.5
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..core.sites import Select, Site
from .fusion import Stage2Mode
from .maths import ContrastMode

StyleMode = Literal[
    "illusign",  # fused geometry query, style K/V, contrast, structure refresh (Bruner et al. 2025)
    "style_id",  # query preservation + attention temperature, style K/V (Chung et al., CVPR 2024)
    "kv_swap",  # the output's own query on the style's K/V (MasaCtrl's mutual self-attention)
    "style_aligned",  # shared attention: own K/V concatenated with the style's, AdaIN on Q/K (Hertz et al.)
]
EdgeStream = Literal[
    "edges",  # the edges image's own inversion row (the paper's reading: Q_geo = Q_img + 0.5 Q_edges)
    "out",  # the output row's own query, which starts from the edges latent (the proxy code:
    # Q_out <- Q_out + 0.5 Q_img, i.e. w_img=0.5, w_edge=1, edge_stream="out")
]
InitFrom = Literal["edges", "content"]  # whose inverted noise the output row starts from
Range = tuple[float, float]  # fractions of the denoising run, half-open [lo, hi): (0, 0) = never

MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    # IlluSign: paper gamma=1 (image), delta=0.5 (edges); proxy ranges of its 100-step run as fractions:
    # swap in steps 10..90, refresh every 5th step below 40, AdaIN 25..45, skip 32 steps
    "illusign": dict(steps=(0.1, 0.9), w_img=1.0, w_edge=0.5, edge_stream="edges", temperature=1.0,
                     contrast=1.67, refresh_every=5, adain_qk=False, adain_steps=(0.25, 0.45),
                     adain_init=False, skip=0.32, init="edges"),
    # StyleID: gamma=0.75, T=1.5, initial-latent AdaIN, full inversion, every step
    "style_id": dict(steps=(0.0, 1.0), w_img=0.75, w_edge=0.25, edge_stream="out", temperature=1.5,
                     contrast=1.0, refresh_every=0, adain_qk=False, adain_steps=None, adain_init=True,
                     skip=0.0, init="content"),
    # MasaCtrl: mutual self-attention from step 4 of 50
    "kv_swap": dict(steps=(0.08, 1.0), w_img=0.0, w_edge=1.0, edge_stream="out", temperature=1.0,
                    contrast=1.0, refresh_every=0, adain_qk=False, adain_steps=None, adain_init=False,
                    skip=0.0, init="content"),
    # StyleAligned: every self-attention layer and step, AdaIN on queries and keys
    "style_aligned": dict(steps=(0.0, 1.0), w_img=0.0, w_edge=1.0, edge_stream="out", temperature=1.0,
                          contrast=1.0, refresh_every=0, adain_qk=True, adain_steps=None, adain_init=False,
                          skip=0.0, init="content"),
}


@dataclass(frozen=True)
class StyleConfig:
    """Style injection into self-attention; see the module table. None = the mode's default."""

    mode: StyleMode = "illusign"
    layers: Select | None = None  # None: the mode's layers (`default_sites`); cross-attn never changes
    steps: Range | None = None  # where the swap acts, as fractions of the denoising run
    w_img: float | None = None  # weight of the content image's query
    w_edge: float | None = None  # weight of the edge stream's query (which that is: edge_stream)
    edge_stream: EdgeStream | None = None
    temperature: float | None = None  # output rows' logits x T (StyleID; T > 1 sharpens)
    contrast: float | None = None  # attention contrast strength s (1.0 = off); IlluSign 1.67
    contrast_mode: ContrastMode = "row_wise"
    refresh_every: int | None = None  # structure refresh: every n-th step the output takes the edges
    refresh_until: float = 0.4  # row's Q, K, V, while step < refresh_until * run length (0 = off)
    adain_qk: bool | None = None  # style_aligned only: AdaIN of the output's Q and K to the style's
    guidance: Range = (3.5, 1.75)  # swap guidance scale, linear from the first to the last step
    adain_steps: Range | None = None  # latent AdaIN of the output to the style after these steps
    adain_init: bool | None = None  # StyleID: AdaIN of the initial output latent to the style's
    skip: float | None = None  # fraction of the inversion's steps not denoised (start partly noised)
    init: InitFrom | None = None  # whose inverted noise the output starts from
    stage2: Stage2Mode = "query"  # stage-2 fusion of start and end illustrations (fusion.py)
    tau_sim: float | None = 0.5  # m_dis = 1[cos(Q1, Q2) < tau_sim]; None: soft (1 - cos) / 2

    def __post_init__(self) -> None:
        choices = (("mode", get_args(StyleMode)), ("contrast_mode", get_args(ContrastMode)),
                   ("stage2", get_args(Stage2Mode)), ("edge_stream", (None, *get_args(EdgeStream))),
                   ("init", (None, *get_args(InitFrom))))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"StyleConfig.{name}={getattr(self, name)!r}; use one of {allowed}")
        if self.layers is not None and not isinstance(self.layers, Select):
            raise ValueError(f"StyleConfig.layers={self.layers!r}; give a Select, e.g. "
                             "Select(names=('up_blocks.3.*attn1',)), or None for the mode's layers")
        for name in ("steps", "guidance", "adain_steps"):
            self._check_range(name)
        for name in ("temperature", "contrast", "w_img", "w_edge", "tau_sim"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"StyleConfig.{name}={value!r} must be a finite number")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"StyleConfig.temperature={self.temperature!r} must be > 0 (1.0 = off)")
        if self.contrast is not None and self.contrast < 0:
            raise ValueError(f"StyleConfig.contrast={self.contrast!r} must be >= 0 (1.0 = off)")
        if self.adain_qk and self.mode != "style_aligned":
            raise ValueError(f"StyleConfig.adain_qk=True acts in mode='style_aligned' only (got "
                             f"mode={self.mode!r}); drop adain_qk or switch the mode")
        if self.refresh_every is not None and self.refresh_every < 0:
            raise ValueError(f"StyleConfig.refresh_every={self.refresh_every!r}; give n >= 0 (0 = off)")
        for name in ("refresh_until", "skip"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"StyleConfig.{name}={value!r}; give a fraction of the run in [0, 1)")

    def _check_range(self, name: str) -> None:
        value = getattr(self, name)
        if value is None:
            return
        value = tuple(float(v) for v in value)
        limit = name != "guidance"  # guidance scales are not fractions
        if len(value) != 2 or not all(math.isfinite(v) for v in value) or (
                limit and not 0 <= value[0] <= value[1] <= 1):
            raise ValueError(f"StyleConfig.{name}={getattr(self, name)!r}; give (lo, hi)"
                             + (" fractions of the run with 0 <= lo <= hi <= 1, e.g. (0.1, 0.9)" if limit
                                else " scales, e.g. (3.5, 1.75)"))
        object.__setattr__(self, name, value)

    def resolved(self) -> StyleConfig:
        """This config with every None replaced by its mode's default (layers stay None: per model)."""
        filled = {k: v for k, v in MODE_DEFAULTS[self.mode].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **filled)

    def active(self, step: int, num_steps: int) -> bool:
        """Whether the swap acts at `step` (0-based) of a `num_steps` run (resolved config)."""
        return in_range(step, num_steps, self.steps)

    def refresh(self, step: int, num_steps: int) -> bool:
        """IlluSign's structure refresh: step % n == 0 while step < refresh_until * num_steps."""
        n = self.refresh_every or 0
        return n > 0 and step % n == 0 and step < self.refresh_until * num_steps


def in_range(step: int, num_steps: int, bounds: Range | None) -> bool:
    """Step `step` of `num_steps` lies in the half-open fraction range: lo <= step / num_steps < hi
    (as Python's range: (0.1, 0.9) of 100 steps is steps 10..89; (0, 1) every step; (0, 0) none)."""
    if bounds is None:
        return False
    pos = step / max(num_steps, 1)
    return bounds[0] <= pos < bounds[1]


def default_sites(mode: str, sites: Sequence[Site]) -> list[Site]:
    """The mode's default layers among `sites` (self-attention only), found by resolution, so they
    resolve on any UNet: IlluSign's highest-resolution decoder layers (SD1.5 up_blocks.3, SDXL
    up_blocks.1), StyleID/MasaCtrl's two highest (SD1.5 up_blocks.2-3), StyleAligned's all."""
    self_sites = [s for s in sites if s.kind == "self"]
    if mode == "style_aligned":
        return self_sites
    up = [s for s in self_sites if s.place == "up" and s.res_factor is not None]
    factors = sorted({s.res_factor for s in up})[: 1 if mode == "illusign" else 2]
    return [s for s in up if s.res_factor in factors]
