"""attn-processors: training-free attention controls and fast attention kernels for Diffusers.

Example (a stock pipeline; each technique is a frozen config installed with one verb):

    from attn_processors import apply, Select, StoreConfig, attention_maps

    with apply(pipe, StoreConfig(layers=Select(kinds=("cross",)))) as ctrl:
        image = pipe("a red cat").images[0]
    maps = ctrl.stores["attention"].token_maps()          # [tokens, h, w]
    attention_maps(pipe, "a red cat").grid().save("maps.png")
"""

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

__all__ = [
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
