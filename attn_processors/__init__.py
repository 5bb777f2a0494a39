"""attn-processors: training-free attention controls and fast attention kernels for Diffusers.

>>> from attn_processors import apply, Select, Passthrough               # doctest: +SKIP
>>> with apply(pipe, Passthrough(layers=Select(kinds=("cross",)))) as ctrl:
...     image = pipe("a red cat").images[0]
"""

from .core import (
    CallInfo,
    ControlledProcessor,
    Controller,
    Passthrough,
    Select,
    Site,
    apply,
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
    "apply",
    "config_from_json",
    "config_to_json",
    "register_technique",
    "select",
]
