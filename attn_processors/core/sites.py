"""Where an attention layer sits, decided once at install time, and layer selection over sites.

A `Site` is built from the processor key (``"<module path>.processor"``) and the module itself, so
processors never parse names at call time. Selection is a predicate over sites (torchao's
``filter_fn(module, fqn)`` idea): `Select` holds name globs, places, blocks, kinds and resolutions.

Example:
    >>> from attn_processors.core.sites import Select, select
    >>> sites = select(pipe.unet, Select(places=("up",), kinds=("self",)))      # doctest: +SKIP
    >>> [s.name for s in select(pipe.unet, Select(resolutions=(16,)), latent_hw=(64, 64))]  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .families import family_of

Place = Literal["down", "mid", "up", "block", "single"]
Kind = Literal["self", "cross", "joint"]

_UNET_RE = re.compile(r"^(down_blocks|up_blocks|mid_block)(?:\.(\d+))?\.")
_BLOCK_RE = re.compile(r"^(transformer_blocks|single_transformer_blocks|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class Site:
    """One attention layer: its module path, family, place in the network and kind.

    `res_factor` is the UNet downsampling factor relative to the latent (1, 2, 4, 8 for SD1.5);
    it is `None` for transformers, whose token grid does not change with depth.
    """

    name: str  # module path, no ".processor"
    family: str  # "unet" | "sd3" | "cogvideox" | "wan" | "flux"
    place: str  # "down" | "mid" | "up" (UNet), "block" | "single" (transformers), "other"
    block: int  # block index within its place (mid block: 0)
    kind: str  # "self" | "cross" | "joint"
    res_factor: int | None = None

    @property
    def key(self) -> str:
        """The key `set_attn_processor` and `attn_processors` use for this layer."""
        return f"{self.name}.processor"

    def resolution(self, latent_hw: tuple[int, int]) -> tuple[int, int] | None:
        """Token grid (h, w) of this UNet layer for a latent of size `latent_hw`; None for transformers.

        Each stride-2 conv (padding 1) maps n -> ceil(n / 2), so ceil(n / factor) is exact for
        odd and non-square latents.
        """
        if self.res_factor is None:
            return None
        h, w = latent_hw
        return math.ceil(h / self.res_factor), math.ceil(w / self.res_factor)


def _unet_factors(model: torch.nn.Module) -> dict[tuple[str, int], int]:
    """Downsampling factor of every down/mid/up block, read from where the down/upsamplers are."""
    factors: dict[tuple[str, int], int] = {}
    f = 1
    for k, blk in enumerate(getattr(model, "down_blocks", [])):
        factors[("down", k)] = f
        if getattr(blk, "downsamplers", None):
            f *= 2
    factors[("mid", 0)] = f
    for k, blk in enumerate(getattr(model, "up_blocks", [])):
        factors[("up", k)] = f
        if getattr(blk, "upsamplers", None):
            f //= 2
    return factors


def _kind(family: str, module: torch.nn.Module) -> str:
    if family in ("sd3", "cogvideox", "flux"):
        return "joint"  # text and image/video tokens share one attention
    return "cross" if getattr(module, "is_cross_attention", False) else "self"


def build_sites(model: torch.nn.Module) -> list[Site]:
    """Every attention layer of `model` as a `Site`, in `model.attn_processors` order.

    Raises ValueError naming the class when a layer's module/processor pair is not a known family.
    """
    if not hasattr(model, "attn_processors"):
        raise ValueError(
            f"{type(model).__name__} has no attention processors; pass a Diffusers denoiser "
            "(UNet2DConditionModel, a *Transformer*Model) or a pipeline."
        )
    factors = _unet_factors(model)
    sites = []
    for key in model.attn_processors:
        name = key.removesuffix(".processor")
        module = model.get_submodule(name)
        family = family_of(module, module.processor)
        place, block, res = "other", 0, None
        if m := _UNET_RE.match(name + "."):
            place = {"down_blocks": "down", "up_blocks": "up", "mid_block": "mid"}[m.group(1)]
            block = int(m.group(2) or 0)
            res = factors.get((place, block))
        elif m := _BLOCK_RE.match(name):
            place = "single" if m.group(1) == "single_transformer_blocks" else "block"
            block = int(m.group(2))
        sites.append(Site(name, family, place, block, _kind(family, module), res))
    return sites


@dataclass(frozen=True)
class Select:
    """Layer selection; every non-empty field must match (empty = any).

    `resolutions` entries are an int r (the layer's shorter side equals r, so "16" picks the 4x-
    downsampled SD1.5 layers of a 64x64 or a 64x96 latent alike) or an exact (h, w); they need the
    latent size passed to `select`.
    """

    names: tuple[str, ...] = ()  # fnmatch globs on Site.name, e.g. "up_blocks.1.*attn1"
    places: tuple[str, ...] = ()  # "down" | "mid" | "up" | "block" | "single"
    blocks: tuple[int, ...] = ()
    kinds: tuple[str, ...] = ()  # "self" | "cross" | "joint"
    resolutions: tuple[int | tuple[int, int], ...] = ()
    families: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field in ("names", "places", "blocks", "kinds", "resolutions", "families"):
            value = getattr(self, field)
            if isinstance(value, str | int) or not isinstance(value, Sequence):
                raise ValueError(f"Select.{field} must be a tuple, e.g. {field}=({value!r},); got {value!r}")
            object.__setattr__(self, field, tuple(tuple(v) if isinstance(v, list) else v for v in value))
        bad = set(self.kinds) - {"self", "cross", "joint"}
        if bad:
            raise ValueError(f"Select.kinds has {sorted(bad)}; use 'self', 'cross' or 'joint'.")
        bad = set(self.places) - {"down", "mid", "up", "block", "single", "other"}
        if bad:
            raise ValueError(
                f"Select.places has {sorted(bad)}; use 'down', 'mid', 'up', 'block' or 'single'."
            )

    def matches(self, site: Site, latent_hw: tuple[int, int] | None = None) -> bool:
        if self.names and not any(fnmatch.fnmatchcase(site.name, g) for g in self.names):
            return False
        if self.places and site.place not in self.places:
            return False
        if self.blocks and site.block not in self.blocks:
            return False
        if self.kinds and site.kind not in self.kinds:
            return False
        if self.families and site.family not in self.families:
            return False
        if self.resolutions:
            if latent_hw is None:
                raise ValueError(
                    "Select.resolutions needs the latent size: pass latent_hw=(h, w), e.g. (64, 64) "
                    "for SD1.5 at 512 px."
                )
            hw = site.resolution(latent_hw)
            if hw is None:
                return False
            if not any(hw == tuple(r) if isinstance(r, tuple) else min(hw) == r for r in self.resolutions):
                return False
        return True


Predicate = Select | Callable[[Site], bool]


def select(
    model_or_sites: torch.nn.Module | Iterable[Site],
    where: Predicate | None = None,
    *,
    latent_hw: tuple[int, int] | None = None,
) -> list[Site]:
    """Sites matching `where` (a `Select` or a `Site -> bool` callable; None selects all).

    Raises ValueError listing a few available layer names when nothing matches.
    """
    sites = (
        build_sites(model_or_sites) if isinstance(model_or_sites, torch.nn.Module) else list(model_or_sites)
    )
    if where is None:
        chosen = sites
    elif isinstance(where, Select):
        chosen = [s for s in sites if where.matches(s, latent_hw)]
    else:
        chosen = [s for s in sites if where(s)]
    if not chosen:
        few = ", ".join(dict.fromkeys(s.name for s in sites[:3] + sites[-2:])) or "(none)"
        res = {s.resolution(latent_hw) for s in sites} if latent_hw else set()
        raise ValueError(
            f"selector {where!r} matches none of the {len(sites)} attention layers; "
            f"available names include {few}"
            + (f"; resolutions {sorted(r for r in res if r)}" if res - {None} else "")
        )
    return chosen
