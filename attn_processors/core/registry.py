"""Technique registry: a frozen config type maps to its installer (torchao's handler registry).

An installer turns a config plus the selected sites into processors:
``installer(config, sites, controller) -> {site.name: ControlledProcessor}``. `apply` looks the
installer up by the config's type, so adding a technique never touches an `isinstance` ladder.
Configs round-trip through JSON so the app, batch scripts and benchmarks share them:

    >>> from attn_processors.core.install import Passthrough
    >>> cfg = Passthrough(path="explicit")
    >>> config_from_json(config_to_json(cfg)) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .controller import Controller
from .sites import Select, Site

Installer = Callable[[Any, Sequence[Site], Controller], Mapping[str, Any]]
C = TypeVar("C")

_INSTALLERS: dict[type, Installer] = {}
_JSON_TYPES: dict[str, type] = {"Select": Select}


def register_json_type(cls: type[C]) -> type[C]:
    """Allow a frozen dataclass (e.g. a box or phrase spec nested in a config) in config JSON."""
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
        raise ValueError(f"{cls.__name__} must be a frozen dataclass (@dataclass(frozen=True)) to round-trip")
    _JSON_TYPES[cls.__name__] = cls
    return cls


def register_technique(config_type: type) -> Callable[[Installer], Installer]:
    """Decorator: `@register_technique(MyConfig)` on `def install(config, sites, controller)`.

    The config must be a frozen dataclass; an optional field `layers: Select` chooses the layers
    `apply` hands the installer (all attention layers of the denoiser when absent).
    """
    register_json_type(config_type)

    def decorate(installer: Installer) -> Installer:
        if config_type in _INSTALLERS and _INSTALLERS[config_type] is not installer:
            raise ValueError(f"{config_type.__name__} already has an installer ({_INSTALLERS[config_type]})")
        _INSTALLERS[config_type] = installer
        return installer

    return decorate


def installer_for(config: Any) -> Installer:
    """The installer registered for `type(config)`; ValueError listing registered configs otherwise."""
    try:
        return _INSTALLERS[type(config)]
    except KeyError:
        known = ", ".join(sorted(t.__name__ for t in _INSTALLERS)) or "(none)"
        raise ValueError(
            f"{type(config).__name__} is not a registered technique config; registered: {known}. "
            "Decorate its installer with @register_technique(ConfigType)."
        ) from None


def registered_configs() -> list[type]:
    return list(_INSTALLERS)


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if type(value).__name__ not in _JSON_TYPES:
            raise ValueError(
                f"{type(value).__name__} is not JSON-registered; decorate it with @register_json_type"
            )
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__type__": type(value).__name__, **fields}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError(
        f"cannot store {type(value).__name__} in a config; use numbers, strings, tuples or "
        "registered frozen dataclasses"
    )


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)  # frozen configs hold tuples
    if isinstance(value, dict):
        if "__type__" in value:
            name = value["__type__"]
            if name not in _JSON_TYPES:
                raise ValueError(f"unknown config type {name!r} in JSON; import the module that registers it")
            return _JSON_TYPES[name](**{k: _decode(v) for k, v in value.items() if k != "__type__"})
        return {k: _decode(v) for k, v in value.items()}
    return value


def config_to_json(config: Any) -> str:
    """JSON text of a registered config (nested registered dataclasses included)."""
    return json.dumps(_encode(config), sort_keys=True)


def config_from_json(text: str) -> Any:
    """Inverse of `config_to_json`."""
    return _decode(json.loads(text))
