"""attn-processors: training-free attention controls and fast attention kernels for Diffusers.

The plain Diffusers path (the call users know) and the `apply` convenience give the same result:

    from attn_processors import apply, processors, stock_processors, Select, StoreConfig, attention_maps

    procs = processors(pipe, StoreConfig())
    pipe.unet.set_attn_processor(procs)                       # or pipe.transformer.set_attn_processor
    image = pipe("a red circle").images[0]
    maps = procs.controller.stores["attention"].token_maps()  # [tokens, h, w]
    pipe.unet.set_attn_processor(stock_processors(pipe.unet))  # back to Diffusers' processors

    with apply(pipe, StoreConfig(layers=Select(kinds=("cross",)))) as ctrl:
        image = pipe("a red circle").images[0]
    maps = ctrl.stores["attention"].token_maps()
    attention_maps(pipe, "a red circle").grid().save("maps.png")

Configs travel as JSON (`config_to_json` / `config_from_json`), so the app, the batch tool and the
benchmarks share one format; a fresh process finds each technique's config through its home below.
"""

import importlib

from .core import (
    CallInfo,
    ControlledProcessor,
    Controller,
    Passthrough,
    Select,
    Site,
    StoreConfig,
    apply,
    attention_maps,
    config_from_json,
    config_to_json,
    processors,
    register_technique,
    select,
    stock_processors,
)
from .core.registry import register_config_home

# The package of each technique config, as strings: the configs load on first use, so
# `import attn_processors` stays light (no triton, no flex compile) and the core never imports a
# technique. The same table tells `config_from_json` where a type named in JSON lives.
_TECHNIQUE_CONFIGS = {
    "LayoutConfig": "attn_processors.layout",
    "SageConfig": "attn_processors.sage",
    "SageCalibration": "attn_processors.sage",
    "TileSparseConfig": "attn_processors.tile_sparse",
    "TileRecallProbe": "attn_processors.tile_sparse",
    "ZeroToHeroConfig": "attn_processors.zero_to_hero",
    "QNeRFConfig": "attn_processors.qnerf",
    "StyleConfig": "attn_processors.style",
}
for _name, _package in _TECHNIQUE_CONFIGS.items():
    register_config_home(_name, _package)
_PUBLIC_CONFIGS = ("LayoutConfig", "SageConfig", "TileSparseConfig")  # the configs at the package top


def __getattr__(name: str):
    if name in _PUBLIC_CONFIGS:
        return getattr(importlib.import_module(_TECHNIQUE_CONFIGS[name]), name)
    raise AttributeError(f"module 'attn_processors' has no attribute {name!r}")


__all__ = [
    "LayoutConfig",
    "SageConfig",
    "TileSparseConfig",
    "CallInfo",
    "ControlledProcessor",
    "Controller",
    "Passthrough",
    "Select",
    "Site",
    "StoreConfig",
    "attention_maps",
    "apply",
    "config_from_json",
    "config_to_json",
    "register_technique",
    "processors",
    "select",
    "stock_processors",
]
