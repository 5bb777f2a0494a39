"""Configs as the interchange format: every registered config type round-trips through JSON in a fresh
process (its home module imported on demand), unknown names and fields get one clear error, and a
third-party package adds a type through the `attn_processors.configs` entry-point group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from attn_processors.core.install import Passthrough
from attn_processors.core.registry import (
    CONFIG_GROUP,
    config_from_data,
    config_from_json,
    config_to_json,
    config_type,
    register_json_type,
)
from attn_processors.core.sites import Select
from attn_processors.core.store import StoreConfig

REPO = Path(__file__).resolve().parents[1]

# Non-default instances (as Python source, evaluated where the types are loaded) for the types whose
# defaults say little or that have required fields; every other registered type round-trips `cls()`.
EXAMPLES = {
    "Passthrough": 'Passthrough(path="explicit")',
    "StoreConfig": 'StoreConfig(layers=Select(places=("up",), kinds=("cross",)), steps=(0, 2), '
    'aggregate="steps", branch=None, name="maps")',
    "LayoutConfig": "LayoutConfig(boxes=((0.1, 0.1, 0.5, 0.6), (0.5, 0.2, 0.9, 0.9)), "
    'token_groups=((2, 3), (6,)), phrases=("red circle", "blue square"), res_factor=2)',
    "SageConfig": 'SageConfig(backend="simulate", min_kv_len=0)',
    "TileSparseConfig": 'TileSparseConfig(k={"blocks.0.attn1": 2, "blocks.1.attn1": 3}, '
    'global_frames=(0, 3), kernel=SageConfig(backend="simulate", min_kv_len=0))',
    "TileRecallProbe": "TileRecallProbe(ks=(1, 2), max_rows=64)",
    "Select": 'Select(names=("up_blocks.*",), kinds=("cross",), resolutions=(16, (24, 16)))',
}

# Fresh process 1: import every module of the toolkit, so every config type it registers is known;
# each must have a declared home (else JSON naming it fails in a fresh process); print one example each.
ENCODE = """
import importlib, json, pkgutil, sys
import attn_processors
from attn_processors.core.registry import _JSON_TYPES, config_homes, config_to_json, config_from_json

for info in pkgutil.walk_packages(attn_processors.__path__, "attn_processors."):
    importlib.import_module(info.name)
homes = config_homes()
registered = dict(_JSON_TYPES)
homeless = sorted(set(registered) - set(homes) - {"Select"})
assert not homeless, f"config types without a home: {homeless}; declare them with register_config_home"
examples = json.loads(sys.argv[1])
out = []
for name, cls in sorted(registered.items()):
    try:
        config = eval(examples[name], dict(registered)) if name in examples else cls()
    except TypeError as err:
        raise SystemExit(f"{name}() needs arguments ({err}); add an example to EXAMPLES in this test")
    assert config_from_json(config_to_json(config)) == config, name
    out.append({"name": name, "json": config_to_json(config), "repr": repr(config)})
print(json.dumps(out))
"""

# Fresh process 2: only `attn_processors` imported; no technique module loaded before JSON names it.
DECODE = """
import json, sys
import attn_processors
from attn_processors.core.registry import config_from_json, config_to_json

techniques = ("attn_processors.layout", "attn_processors.sage", "attn_processors.tile_sparse")
loaded = sorted(m for m in sys.modules if m.startswith(techniques))
assert not loaded, f"importing attn_processors loaded techniques: {loaded}"
out = []
for item in json.loads(sys.stdin.read()):
    config = config_from_json(item["json"])
    out.append({"name": item["name"], "json": config_to_json(config), "repr": repr(config),
                "type": type(config).__name__})
print(json.dumps(out))
"""


def _python(code: str, *args: str, stdin: str | None = None, path: Path | None = None) -> str:
    python_path = os.pathsep.join(str(p) for p in (path, REPO) if p is not None)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path}
    proc = subprocess.run([sys.executable, "-c", code, *args], input=stdin, capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_every_registered_config_round_trips_in_a_fresh_process():
    encoded = json.loads(_python(ENCODE, json.dumps(EXAMPLES)))
    names = {item["name"] for item in encoded}
    builtin = {"Passthrough", "StoreConfig", "LayoutConfig", "SageConfig", "SageCalibration",
               "TileSparseConfig", "TileRecallProbe", "ZeroToHeroConfig", "QNeRFConfig",
               "StyleConfig", "Select"}
    assert builtin <= names  # a new technique adds to this set; it never shrinks
    decoded = json.loads(_python(DECODE, stdin=json.dumps(encoded)))
    assert [d["name"] for d in decoded] == [e["name"] for e in encoded]
    for before, after in zip(encoded, decoded, strict=True):
        assert after["type"] == before["name"]
        assert after["json"] == before["json"] and after["repr"] == before["repr"], before["name"]


def test_composition_is_a_json_list_of_configs():
    both = (StoreConfig(aggregate="steps"), Passthrough(path="explicit"))
    text = config_to_json(list(both))
    assert json.loads(text)[0]["__type__"] == "StoreConfig"
    assert config_from_json(text) == both
    assert config_from_data(json.loads(text)) == both


def test_unknown_type_names_the_known_ones():
    with pytest.raises(ValueError) as err:
        config_from_json('{"__type__": "TileSparseConfg", "k": 2}')
    message = str(err.value)
    assert message.startswith("unknown config type 'TileSparseConfg' in JSON; known types: ")
    for name in ("LayoutConfig", "Passthrough", "SageConfig", "StoreConfig", "TileSparseConfig"):
        assert name in message
    assert CONFIG_GROUP in message  # how a third party adds one


@pytest.mark.parametrize("text, message", [
    ('{"__type__": "StoreConfig", "keep": "mean"}',
     r"StoreConfig has no field\(s\) \['keep'\]; its fields are \['aggregate', 'branch', 'layers', "),
    ('{"__type__": "StoreConfig", "aggregate": "bogus"}', "aggregate='bogus' is not one of"),
    ('{"__type__": 3}', r'"__type__" must be a config type name \(a string\), got 3'),
])
def test_bad_fields_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        config_from_json(text)


def test_missing_required_fields_are_named():
    with pytest.raises(ValueError, match=r"LayoutConfig needs the field\(s\) \['boxes', 'token_groups'\]"):
        config_from_json('{"__type__": "LayoutConfig", "phrases": ["red circle"]}')


def test_config_type_finds_builtin_types_by_name():
    assert config_type("StoreConfig") is StoreConfig and config_type("Select") is Select
    assert config_type("TileSparseConfig").__name__ == "TileSparseConfig"


def test_third_party_config_found_through_its_entry_point(tmp_path):
    package = tmp_path / "third_tech"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass

        from attn_processors.core.registry import register_technique


        @dataclass(frozen=True)
        class ThirdConfig:
            strength: float = 1.0


        @register_technique(ThirdConfig)
        def _install(config, sites, controller):
            return {}
    """))
    dist = tmp_path / "third_tech-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: third-tech\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{CONFIG_GROUP}]\nThirdConfig = third_tech:ThirdConfig\n")
    code = """
import sys
from attn_processors.core.registry import config_from_json, load_config_homes
assert "third_tech" not in sys.modules
config = config_from_json('{"__type__": "ThirdConfig", "strength": 0.25}')
print(type(config).__module__, config.strength, "ThirdConfig" in load_config_homes())
"""
    assert _python(code, path=tmp_path) == "third_tech 0.25 True"


@dataclass(frozen=True)
class _Twin:
    a: int = 1


def test_two_types_with_one_name_are_ambiguous_in_json():
    register_json_type(_Twin)

    @dataclass(frozen=True)
    class _Twin2:
        a: int = 2

    _Twin2.__name__ = "_Twin"  # another class of the same name, e.g. in another package
    register_json_type(_Twin2)
    with pytest.raises(ValueError, match=r"two config types are named _Twin \(.*test_config_json\._Twin, "):
        config_from_json('{"__type__": "_Twin", "a": 3}')
