"""The shared attention core: sites, family adapters, the processor base, controller, install, kernels."""

from .controller import Controller
from .families import FAMILIES, Projected, family_of, input_geometry
from .install import Passthrough, apply, denoisers, processors_for
from .kernels import (
    Attend,
    KernelChoice,
    KernelProvider,
    KernelSpec,
    Unsupported,
    dispatch,
    explicit_attention,
    fallbacks,
    first_unsupported,
    sdpa,
    warn_once,
)
from .plain import Processors, processors, stock_processors
from .processor import CallInfo, ComposedProcessor, ControlledProcessor, compose
from .registry import (
    CONFIG_GROUP,
    config_from_data,
    config_from_json,
    config_to_data,
    config_to_json,
    config_type,
    load_config_homes,
    register_config_home,
    register_json_type,
    register_technique,
)
from .sites import Select, Site, build_sites, select
from .store import AttentionStore, StoreConfig, TokenMaps, attention_maps, render_token_heatmaps

__all__ = [
    "KernelProvider",
    "Unsupported",
    "fallbacks",
    "first_unsupported",
    "CONFIG_GROUP",
    "config_from_data",
    "config_to_data",
    "config_type",
    "load_config_homes",
    "register_config_home",
    "FAMILIES",
    "Attend",
    "AttentionStore",
    "StoreConfig",
    "TokenMaps",
    "attention_maps",
    "render_token_heatmaps",
    "CallInfo",
    "ComposedProcessor",
    "ControlledProcessor",
    "Controller",
    "KernelChoice",
    "KernelSpec",
    "Passthrough",
    "Processors",
    "Projected",
    "Select",
    "Site",
    "apply",
    "build_sites",
    "compose",
    "config_from_json",
    "config_to_json",
    "denoisers",
    "dispatch",
    "explicit_attention",
    "family_of",
    "input_geometry",
    "processors",
    "processors_for",
    "register_json_type",
    "register_technique",
    "sdpa",
    "select",
    "stock_processors",
    "warn_once",
]
