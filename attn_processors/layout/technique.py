"""CSG as processors on the core: record maps in the guidance pass, redistribute in the denoising pass.

    >>> cfg = LayoutConfig(boxes=((0.0, 0.0, 0.5, 0.5),), token_groups=((2, 3),), phrases=("red circle",))
    >>> cfg.res_factor is None and cfg.guided_steps == 25
    True

The pipeline (pipelines/layout_to_image.py) sets ``controller.mode``:
- ``"guide"``: cond-only forwards with autograd on the latent; :class:`LayoutProcessor` records the
  fp32 probabilities (grad kept) of the *loss layers* (places ``loss_places`` at the layout
  resolution, self and cross) into ``controller.stores["layout"]``; :func:`guidance_loss` turns
  them into the CSG loss.
- ``"denoise"``: the no-grad CFG forward; at every cross-attention layer of the layout resolution
  the probabilities are redistributed (``redistribution.redistribute``) while
  ``step <= redistribute_last_step``, on the cond rows (and the uncond rows if
  ``redistribute_uncond``).

Layout resolution (which layers): ``res_factor`` counts latent fractions: a layer whose token grid
is latent / res_factor. ``None`` (default) picks the largest factor <= 4 among up-block
cross-attention layers. That is factor 4 for SD 1.x/2.x (the 16x16 layers at 512 px, the reference's
``target_res=16``) and SDXL (32x32 at 1024 px), and factor 2 (8x8 of its 16x16 latent) for the
shipped shapes model, whose coarsest up-block cross-attention is at latent / 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

from ..core.controller import Controller
from ..core.processor import CallInfo, ControlledProcessor, Need
from ..core.registry import register_technique
from ..core.sites import Site
from .losses import LossTerms, LossWeights, PermSource, SamplingParams, csg_loss
from .masks import Box, OnEmpty, box_masks, check_masks, phrase_token_indices, validate_boxes
from .redistribution import redistribute

STORE = "layout"  # key of the LayoutStore in controller.stores
UNetPlace = Literal[
    "down",  # encoder blocks
    "mid",  # the middle block
    "up",  # decoder blocks (the reference's loss layers)
]
PLACES: tuple[str, ...] = get_args(UNetPlace)
ON_EMPTY: tuple[str, ...] = get_args(OnEmpty)


@dataclass(frozen=True)
class LayoutConfig:
    """CSG parameters; defaults are the official code's (``config.py`` and hard-coded constants).

    ``boxes`` are normalised xyxy, one per object; the last ``n_background`` are background boxes
    (their masks exclude every foreground box). ``token_groups`` are the text positions of each
    object's phrase (build with :meth:`from_phrases`).
    """

    boxes: tuple[Box, ...]
    token_groups: tuple[tuple[int, ...], ...]
    phrases: tuple[str, ...] = ()  # for messages and panels only
    n_background: int = 0
    res_factor: int | None = None  # layer grid = latent / res_factor; None: largest up-block factor <= 4
    loss_places: tuple[UNetPlace, ...] = ("up",)  # reference from_where=['up']
    topk_coef: float = 0.8  # selective sampling: top-k fraction of in-box cells
    keep_fraction: float = 0.5  # fraction of the top-k cells kept at random (the reference's ``dropout``)
    margin: float = 0.1  # inter-token hinge, raw probability units
    w_cross: float = 5.0
    w_inter: float = 50.0
    w_self: float = 5.0
    guided_steps: int = 25  # guidance on steps i < guided_steps (T_D)
    iterations: int = 5  # latent updates per guided step (T_R)
    scale_factor: float = 0.5  # eta_i = scale_factor * sqrt(linspace(1, .5, T))[i]; 0.5 is SD-1.4's
    redistribute_last_step: int = 25  # redistribution on steps i <= this (inclusive, as the reference)
    redistribute_uncond: bool = True  # reference: both CFG halves; False: cond rows only
    on_empty: OnEmpty = "repair"  # a box smaller than a grid cell: "repair" (warn) or "error"
    early_exit: bool = True  # stop guidance forwards after the last loss layer (same loss and gradient)

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", tuple(validate_boxes(self.boxes)))
        object.__setattr__(self, "token_groups", tuple(tuple(int(t) for t in g) for g in self.token_groups))
        object.__setattr__(self, "loss_places", tuple(self.loss_places))
        if len(self.boxes) != len(self.token_groups):
            raise ValueError(
                f"{len(self.boxes)} boxes for {len(self.token_groups)} phrases; give one box per phrase")
        if not self.boxes:
            raise ValueError("layout control needs at least one (phrase, box) pair")
        if any(not g for g in self.token_groups):
            raise ValueError("every phrase needs at least one token position")
        if not 0 <= self.n_background <= len(self.boxes):
            raise ValueError(f"n_background={self.n_background} must be between 0 and {len(self.boxes)}")
        if self.res_factor is not None and self.res_factor < 1:
            raise ValueError(f"res_factor={self.res_factor} must be a positive integer (latent / layer size)")
        for name in ("topk_coef", "keep_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a fraction in (0, 1]")
        for name in ("guided_steps", "iterations", "margin", "scale_factor"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.on_empty not in ON_EMPTY:
            raise ValueError(f"on_empty={self.on_empty!r}; use one of {ON_EMPTY}")
        bad = [p for p in self.loss_places if p not in PLACES]
        if bad or not self.loss_places:
            raise ValueError(f"loss_places={self.loss_places!r}; give one or more of {PLACES}")

    @classmethod
    def from_phrases(cls, tokenizer: Any, prompt: str, phrases: Sequence[str],
                     boxes: Sequence[Sequence[float]], **params: Any) -> LayoutConfig:
        """Match each phrase to its token positions in ``prompt`` (see ``masks.phrase_token_indices``)."""
        if len(boxes) != len(phrases):
            raise ValueError(f"{len(boxes)} boxes for {len(phrases)} phrases; give one box per phrase")
        groups = phrase_token_indices(tokenizer, prompt, phrases)
        return cls(boxes=tuple(tuple(b) for b in boxes), token_groups=tuple(tuple(g) for g in groups),
                   phrases=tuple(phrases), **params)

    @property
    def params(self) -> SamplingParams:
        return SamplingParams(self.topk_coef, self.keep_fraction, self.margin)

    @property
    def weights(self) -> LossWeights:
        return LossWeights(self.w_cross, self.w_inter, self.w_self)

    def masks(self, hw: tuple[int, int]) -> torch.Tensor:
        """(n, h*w) object masks on an (h, w) grid, empty ones repaired or rejected."""
        n_fg = len(self.boxes) - self.n_background
        m = box_masks(self.boxes[:n_fg], self.boxes[n_fg:], hw)
        names = self.phrases or tuple(f"object {j}" for j in range(len(self.boxes)))
        return check_masks(m, self.boxes, hw, names, n_fg, self.on_empty)


def layout_factor(sites: Sequence[Site], res_factor: int | None) -> int:
    """The res_factor of the layout layers: the given one, or the largest up-block cross factor <= 4."""
    cross_up = sorted({s.res_factor for s in sites if s.kind == "cross" and s.place == "up" and s.res_factor})
    if res_factor is not None:
        have = sorted({s.res_factor for s in sites if s.kind == "cross" and s.res_factor})
        if res_factor not in have:
            raise ValueError(f"res_factor={res_factor}: this UNet has cross-attention at latent / {have} "
                             "only; pick one of those")
        return res_factor
    usable = [f for f in cross_up if f <= 4]
    if not usable:
        raise ValueError(f"no up-block cross-attention at latent / 4 or finer (factors {cross_up}); "
                         "pass res_factor= explicitly")
    return usable[-1]


@dataclass
class LayoutStore:
    """Maps recorded in the guidance pass (grad kept) and head-averaged maps of the denoising pass."""

    cross: list[torch.Tensor] = field(default_factory=list)  # each [B, H, N, K] fp32
    self_: list[torch.Tensor] = field(default_factory=list)  # each [B, H, N, N] fp32
    hw: tuple[int, int] | None = None
    denoise_maps: torch.Tensor | None = None  # running sum [N, K] of cond-row head means
    denoise_calls: int = 0
    keep_denoise_maps: bool = False
    loss_layers: int = 0  # how many loss layers record per guidance forward
    early_exit: bool = True

    def clear(self) -> None:
        self.cross, self.self_ = [], []

    def record(self, kind: str, probs: torch.Tensor, hw: tuple[int, int]) -> None:
        """Keep a loss layer's probabilities; after the last one, end the forward (nothing later
        in the network changes the loss, so skipping it changes neither the loss nor its gradient)."""
        (self.cross if kind == "cross" else self.self_).append(probs)
        self.hw = hw
        if self.early_exit and len(self.cross) + len(self.self_) >= self.loss_layers:
            raise GuidanceForwardDone


class GuidanceForwardDone(Exception):
    """Raised by the last loss layer of a guidance forward; the pipeline catches it."""


class LayoutProcessor(ControlledProcessor):
    """Records (guide mode, loss layers) or redistributes (denoise mode, cross layers)."""

    def __init__(self, site: Site, controller: Controller, config: LayoutConfig, is_loss_layer: bool) -> None:
        super().__init__(site, controller)
        self.config, self.is_loss_layer = config, is_loss_layer
        self.store: LayoutStore = controller.stores[STORE]
        flat = [t for g in config.token_groups for t in g]
        self.token_idx = torch.tensor(flat)  # (L,) every layout token, groups expanded
        self.group_of = torch.tensor([j for j, g in enumerate(config.token_groups) for _ in g])  # (L,)
        self._masks: dict[tuple[int, int], torch.Tensor] = {}

    def masks(self, hw: tuple[int, int]) -> torch.Tensor:
        if hw not in self._masks:
            self._masks[hw] = self.config.masks(hw)
        return self._masks[hw]

    def needs(self) -> tuple[Need, ...]:
        """The step: redistribution runs on the first ``redistribute_last_step`` steps only."""
        return ("step",)

    def wants(self, call: CallInfo) -> bool:
        if call.hw is None:
            return False
        if call.mode == "guide":
            return self.is_loss_layer
        if call.mode != "denoise" or self.site.kind != "cross":
            return False
        step = call.step
        redist = step is not None and step <= self.config.redistribute_last_step
        return redist or self.store.keep_denoise_maps

    def edit_probs(self, probs: torch.Tensor, call: CallInfo) -> torch.Tensor:  # [B, H, Nq, Nk] fp32
        assert call.hw is not None
        if call.mode == "guide":
            self.store.record(self.site.kind, probs, call.hw)
            return probs
        step = call.step
        if step is not None and step <= self.config.redistribute_last_step:
            probs = self._redistribute(probs, call)
        if self.store.keep_denoise_maps:
            self._keep(probs, call)
        return probs

    def _redistribute(self, probs: torch.Tensor, call: CallInfo) -> torch.Tensor:
        masks = self.masks(call.hw)[self.group_of].to(probs.device)  # (L, N): each token its phrase's box
        if self.config.redistribute_uncond:
            return redistribute(probs, self.token_idx, masks)
        rows = call.rows("cond")
        out = probs.clone()
        out[rows] = redistribute(probs[rows], self.token_idx, masks)
        return out

    def _keep(self, probs: torch.Tensor, call: CallInfo) -> None:
        rows = call.rows("cond") if call.labels is not None else list(range(probs.shape[0]))
        mean = probs[rows].detach().mean(dim=(0, 1)).float().cpu()  # (N, K)
        s = self.store
        s.denoise_maps = mean if s.denoise_maps is None else s.denoise_maps + mean
        s.denoise_calls += 1
        s.hw = call.hw


@register_technique(LayoutConfig)
def _install_layout(config: LayoutConfig, sites: Sequence[Site], ctrl: Controller) -> Mapping[str, Any]:
    factor = layout_factor(sites, config.res_factor)
    store = ctrl.stores[STORE] = LayoutStore(early_exit=config.early_exit)
    chosen = [s for s in sites if s.res_factor == factor and s.place in ("down", "mid", "up")]
    out = {}
    for s in chosen:
        is_loss = s.place in config.loss_places and s.kind in ("self", "cross")
        if s.kind == "cross" or is_loss:
            out[s.name] = LayoutProcessor(s, ctrl, config, is_loss)
            store.loss_layers += is_loss
    if not store.loss_layers:
        raise ValueError(f"no {config.loss_places} attention layers at latent / {factor}; set loss_places "
                         "or res_factor")
    return out


def aggregate(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample mean over recorded layers and heads: list of [B, H, N, M] -> [B, N, M]
    (the reference concatenates layers x heads and averages; samples are never mixed)."""
    if not maps:
        raise ValueError("no attention maps were recorded; the loss layers did not run in guide mode")
    return torch.stack(maps).mean(dim=(0, 2))


def guidance_loss(store: LayoutStore, config: LayoutConfig,
                  perms: PermSource) -> tuple[torch.Tensor, list[LossTerms]]:
    """CSG loss summed over the samples of the guided batch (each sample's maps on their own)."""
    assert store.hw is not None
    A = aggregate(store.cross)  # [B, N, K]
    S = aggregate(store.self_) if store.self_ and config.w_self != 0 else None  # [B, N, N]
    masks = config.masks(store.hw).to(A.device)
    terms = [csg_loss(A[b], None if S is None else S[b], masks, config.token_groups, config.params,
                      config.weights, perms) for b in range(A.shape[0])]
    return torch.stack([t.total for t in terms]).sum(), terms
