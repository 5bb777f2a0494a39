"""Technique registry: a frozen config type maps to its installer (torchao's handler registry).

An installer turns a config plus the selected sites into processors:
``installer(config, sites, controller) -> {site.name: ControlledProcessor}``. `apply` looks the
installer up by the config's type, so adding a technique never touches an `isinstance` ladder.

Configs are the one interchange format: the app, batch scripts and benchmarks share them as JSON,
``{"__type__": "TileSparseConfig", "k": 2, ...}`` (a list of those for composition):

    >>> from attn_processors.core.install import Passthrough
    >>> cfg = Passthrough(path="explicit")
    >>> config_from_json(config_to_json(cfg)) == cfg
    True

JSON names a type by its class name, so a fresh process must know where that class is defined before
the module defining it has been imported. Every type has a *home*, a module imported on first use:
- the toolkit declares its own with `register_config_home` (``attn_processors/__init__.py``), as
  strings, so the core never imports a technique;
- a third-party package declares its configs (and nested JSON types) under the entry-point group
  ``attn_processors.configs``, one entry per type, e.g. in its ``pyproject.toml``::

      [project.entry-points."attn_processors.configs"]
      MyConfig = "my_package.technique:MyConfig"
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, TypeVar

from .controller import Controller
from .sites import Select, Site

Installer = Callable[[Any, Sequence[Site], Controller], Mapping[str, Any]]
C = TypeVar("C")

CONFIG_GROUP = "attn_processors.configs"  # entry-point group of third-party config types

_INSTALLERS: dict[type, Installer] = {}
_JSON_TYPES: dict[str, type] = {"Select": Select}
_CLASHES: dict[str, set[str]] = {}  # a name two different classes registered: ambiguous in JSON
# type name -> "module" (the type is that module's attribute of the same name) or "module:attr"
_HOMES: dict[str, str] = {
    "Passthrough": "attn_processors.core.install",
    "StoreConfig": "attn_processors.core.store",
}


def register_json_type(cls: type[C]) -> type[C]:
    """Allow a frozen dataclass (e.g. a box or phrase spec nested in a config) in config JSON."""
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
        raise ValueError(f"{cls.__name__} must be a frozen dataclass (@dataclass(frozen=True)) to round-trip")
    old = _JSON_TYPES.get(cls.__name__)
    if old is not None and _where(old) != _where(cls):  # JSON naming this type could mean either
        _CLASHES.setdefault(cls.__name__, {_where(old)}).add(_where(cls))
    _JSON_TYPES[cls.__name__] = cls
    return cls


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


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
    """Technique config types with an installer, among the modules imported so far."""
    return list(_INSTALLERS)


# -- where each type lives ------------------------------------------------------------------------


def register_config_home(name: str, home: str) -> None:
    """Declare that config type `name` is defined in module `home` ("pkg.mod" or "pkg.mod:Attr").

    JSON naming `name` then imports `home` on first use; nothing is imported now.
    """
    if _HOMES.get(name, home) != home:
        raise ValueError(
            f"config type {name!r} already lives in {_HOMES[name]!r}; cannot move it to {home!r}"
        )
    _HOMES[name] = home


def config_homes() -> dict[str, str]:
    """Every declared home: the registered ones, then the entry points of installed packages."""
    homes = dict(_HOMES)
    for ep in entry_points(group=CONFIG_GROUP):
        if homes.get(ep.name, ep.value) != ep.value:
            dist = ep.dist.name if ep.dist is not None else "an installed package"
            raise ValueError(
                f"config type {ep.name!r} is declared twice: {homes[ep.name]!r} and {ep.value!r} "
                f"(entry point of {dist} in group {CONFIG_GROUP!r}); rename one of the types"
            )
        homes[ep.name] = ep.value
    return homes


def config_type(name: str) -> type:
    """The JSON-registered type called `name`, importing its home module on first use."""
    if name in _CLASHES:
        raise ValueError(
            f"two config types are named {name} ({', '.join(sorted(_CLASHES[name]))}); JSON names a type "
            "by its class name, so rename one"
        )
    if name in _JSON_TYPES:
        return _JSON_TYPES[name]
    homes = config_homes()
    if name not in homes:
        known = ", ".join(sorted(set(_JSON_TYPES) | set(homes)))
        raise ValueError(
            f"unknown config type {name!r} in JSON; known types: {known}. A technique outside this "
            f"package declares its config types under the entry-point group {CONFIG_GROUP!r}."
        )
    return _load_home(name, homes[name])


def load_config_homes() -> dict[str, type]:
    """Import every declared home; returns every JSON type by name (e.g. to list or test them all)."""
    for name, home in config_homes().items():
        if name not in _JSON_TYPES:
            _load_home(name, home)
    return dict(_JSON_TYPES)


def _load_home(name: str, home: str) -> type:
    module, _, attr = home.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr or name)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"config type {name!r} should be defined in {home!r}, but loading it failed: {err}"
        ) from err
    if getattr(obj, "__name__", None) != name:
        raise ValueError(
            f"{home!r} gives {obj!r} for config type {name!r}; point the home at the class {name}"
        )
    if name not in _JSON_TYPES:  # a home may hold a plain frozen dataclass (a type nested in configs)
        register_json_type(obj)
    return _JSON_TYPES[name]


# -- JSON -----------------------------------------------------------------------------------------


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
            return _build(value["__type__"], {k: _decode(v) for k, v in value.items() if k != "__type__"})
        return {k: _decode(v) for k, v in value.items()}
    return value


def _build(name: Any, values: dict[str, Any]) -> Any:
    """`name(**values)`, with unknown or missing fields named instead of a bare TypeError."""
    if not isinstance(name, str):
        raise ValueError(f'"__type__" must be a config type name (a string), got {json.dumps(name)}')
    cls = config_type(name)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{name} has no field(s) {unknown}; its fields are {sorted(fields)}")
    missing = sorted(
        n for n, f in fields.items()
        if n not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(f"{name} needs the field(s) {missing} in its JSON")
    return cls(**values)


def config_to_data(config: Any) -> Any:
    """JSON-ready data of a registered config, or of a sequence of them (a composition)."""
    return _encode(config)


def config_from_data(data: Any) -> Any:
    """Inverse of `config_to_data`: a config from a parsed JSON object, a tuple of configs from a list."""
    return _decode(data)


def config_to_json(config: Any) -> str:
    """JSON text of a registered config (nested registered dataclasses included) or of a sequence of them."""
    return json.dumps(_encode(config), sort_keys=True)


def config_from_json(text: str) -> Any:
    """Inverse of `config_to_json`; works in a fresh process (the type's home is imported on demand)."""
    return _decode(json.loads(text))
