"""attn-processors: training-free attention controls and fast attention kernels for Diffusers.

Example (a stock pipeline; each technique is a frozen config installed with one verb):

    from attn_processors import apply, Select, StoreConfig, attention_maps

    with apply(pipe, StoreConfig(layers=Select(kinds=("cross",)))) as ctrl:
        image = pipe("a red cat").images[0]
    maps = ctrl.stores["attention"].token_maps()          # [tokens, h, w]
    attention_maps(pipe, "a red cat").grid().save("maps.png")
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
    register_technique,
    select,
)

# Technique configs load on first use, so `import attn_processors` stays light (no triton, no flex
# compile) and the core never depends on a technique.
_TECHNIQUE_CONFIGS = {
    "LayoutConfig": "attn_processors.layout",
    "SageConfig": "attn_processors.sage",
    "TileSparseConfig": "attn_processors.tile_sparse",
}


def __getattr__(name: str):
    if name in _TECHNIQUE_CONFIGS:
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
    "select",
]
