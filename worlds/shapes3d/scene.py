"""Scenes of the 3D shapes world: objects on the ground, the views that look at them, the scene file.

Conventions (fixed, so a scene file renders the same for everyone):

* world Z-up, the ground is the plane z = 0; objects rest on it;
* an object is ``{"shape", "colour", "position": [x, y], "size", "yaw"}``: ``size`` is the sphere
  radius, the cube half-side, the cylinder / cone base radius (their height is ``HEIGHT_RATIO``
  x size); ``yaw`` is in degrees about +Z (only the cube shows it); an optional ``"rgb"`` overrides
  the palette colour (the generator's jitter);
* a view is ``{"elevation", "azimuth", "radius"}`` (degrees, degrees, world units; optional
  ``"fov"``, default 40 degrees): the camera sits at
  ``radius * (cos e cos a, cos e sin a, sin e)`` and looks at the origin, elevation above the
  ground plane, azimuth from +X towards +Y;
* a scene file is a JSON list of ``{"objects": [...], "views": [...]}`` (extra keys such as
  ``"group"`` are kept); the first view is the source where a task needs one. Colours are
  distinct within a scene, so the chromaticity labeller (``score.py``) can tell objects apart.

>>> scene = sample_scene(seed=0, index=0)
>>> Scene.from_dict(scene.to_dict()) == scene
True
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from worlds.shapes.vocab import COLOUR_RGB, COLOURS

Shape3D = Literal["sphere", "cube", "cylinder", "cone"]
SHAPES3D: tuple[Shape3D, ...] = ("sphere", "cube", "cylinder", "cone")
# Height of a cylinder / cone as a multiple of its base radius (a cube is 2 x size high, a sphere too).
HEIGHT_RATIO = 2.0
DEFAULT_FOV = 40.0
MAX_OBJECTS = 3
RGB = tuple[int, int, int]


class SceneError(ValueError):
    """A scene, object or view field that is missing or out of range; the message names it."""


def _number(d: dict[str, Any], key: str, where: str) -> float:
    if key not in d:
        raise SceneError(f"{where}.{key} is missing; give a number")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SceneError(f"{where}.{key} = {v!r} is not a finite number")
    return float(v)


def _keys(d: object, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise SceneError(f"{where} must be a JSON object, got {type(d).__name__}")
    extra = sorted(set(d) - allowed)
    if extra:
        raise SceneError(f"{where} has unknown keys {extra}; allowed: {sorted(allowed)}")
    return d


@dataclass(frozen=True)
class Object3D:
    """One primitive resting on the ground (see the module docstring for the fields)."""

    shape: str
    colour: str
    position: tuple[float, float]
    size: float
    yaw: float = 0.0
    rgb: RGB | None = None  # None -> the palette colour COLOUR_RGB[colour]

    def __post_init__(self) -> None:
        if isinstance(self.position, (list, tuple)) and len(self.position) == 2:  # lists -> a hashable tuple
            object.__setattr__(self, "position", tuple(float(p) for p in self.position))
        if self.rgb is not None and isinstance(self.rgb, (list, tuple)):
            object.__setattr__(self, "rgb", tuple(int(c) for c in self.rgb))
        self.validate("object")

    def validate(self, where: str) -> None:
        if self.shape not in SHAPES3D:
            raise SceneError(f"{where}.shape = {self.shape!r} is not a shape; use one of {SHAPES3D}")
        if self.colour not in COLOURS:
            raise SceneError(f"{where}.colour = {self.colour!r} is not a colour; use one of {COLOURS}")
        if len(self.position) != 2 or not all(math.isfinite(float(p)) for p in self.position):
            raise SceneError(f"{where}.position = {self.position!r} must be two finite numbers [x, y]")
        if not (math.isfinite(self.size) and self.size > 0):
            raise SceneError(f"{where}.size = {self.size!r} must be a positive number (world units)")
        if not math.isfinite(self.yaw):
            raise SceneError(f"{where}.yaw = {self.yaw!r} must be a finite number of degrees")
        if self.rgb is not None and (len(self.rgb) != 3 or not all(0 <= int(c) <= 255 for c in self.rgb)):
            raise SceneError(f"{where}.rgb = {self.rgb!r} must be three integers in 0..255")

    @property
    def fill(self) -> RGB:
        return self.rgb if self.rgb is not None else COLOUR_RGB[self.colour]  # type: ignore[index]

    @property
    def height(self) -> float:
        return 2 * self.size if self.shape in ("sphere", "cube") else HEIGHT_RATIO * self.size

    @property
    def footprint(self) -> float:
        """Radius of the circle around ``position`` that holds the object's base (for overlap checks)."""
        return self.size * math.sqrt(2) if self.shape == "cube" else self.size

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"shape": self.shape, "colour": self.colour, "position": list(self.position),
                             "size": self.size, "yaw": self.yaw}
        if self.rgb is not None:
            d["rgb"] = list(self.rgb)
        return d

    @classmethod
    def from_dict(cls, d: object, where: str = "object") -> Object3D:
        d = _keys(d, {"shape", "colour", "position", "size", "yaw", "rgb"}, where)
        for key in ("shape", "colour", "position"):
            if key not in d:
                raise SceneError(f"{where}.{key} is missing")
        pos = d["position"]
        if not isinstance(pos, (list, tuple)) or len(pos) != 2:
            raise SceneError(f"{where}.position = {pos!r} must be a list [x, y]")
        xy = tuple(_number({"x": p}, "x", f"{where}.position") for p in pos)
        rgb = d.get("rgb")
        if rgb is not None and (not isinstance(rgb, (list, tuple)) or len(rgb) != 3
                                or not all(isinstance(c, int) and 0 <= c <= 255 for c in rgb)):
            raise SceneError(f"{where}.rgb = {rgb!r} must be three integers in 0..255")
        obj = object.__new__(cls)
        for name, value in (("shape", d["shape"]), ("colour", d["colour"]), ("position", xy),
                            ("size", _number(d, "size", where)),
                            ("yaw", _number(d, "yaw", where) if "yaw" in d else 0.0),
                            ("rgb", tuple(rgb) if rgb is not None else None)):
            object.__setattr__(obj, name, value)
        obj.validate(where)
        return obj


@dataclass(frozen=True)
class View:
    """A camera on a sphere around the origin, looking at it (degrees, degrees, world units)."""

    elevation: float
    azimuth: float
    radius: float
    fov: float = DEFAULT_FOV

    def __post_init__(self) -> None:
        self.validate("view")

    def validate(self, where: str) -> None:
        if not (math.isfinite(self.elevation) and -90 < self.elevation < 90):
            raise SceneError(f"{where}.elevation = {self.elevation!r} must be in (-90, 90) degrees "
                             "(a camera straight above the origin has no defined 'up')")
        if not math.isfinite(self.azimuth):
            raise SceneError(f"{where}.azimuth = {self.azimuth!r} must be a finite number of degrees")
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise SceneError(f"{where}.radius = {self.radius!r} must be a positive distance")
        if not (math.isfinite(self.fov) and 0 < self.fov < 180):
            raise SceneError(f"{where}.fov = {self.fov!r} must be in (0, 180) degrees")

    def to_dict(self) -> dict[str, float]:
        d = {"elevation": self.elevation, "azimuth": self.azimuth, "radius": self.radius}
        if self.fov != DEFAULT_FOV:
            d["fov"] = self.fov
        return d

    @classmethod
    def from_dict(cls, d: object, where: str = "view") -> View:
        d = _keys(d, {"elevation", "azimuth", "radius", "fov"}, where)
        values = [_number(d, k, where) for k in ("elevation", "azimuth", "radius")]
        fov = _number(d, "fov", where) if "fov" in d else DEFAULT_FOV
        view = object.__new__(cls)
        for name, value in zip(("elevation", "azimuth", "radius", "fov"), (*values, fov), strict=True):
            object.__setattr__(view, name, value)
        view.validate(where)
        return view


@dataclass(frozen=True)
class Scene:
    """Objects and the views of them; ``extra`` keeps other keys of the file (e.g. ``group``)."""

    objects: tuple[Object3D, ...]
    views: tuple[View, ...]
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.validate("scene")

    def validate(self, where: str) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise SceneError(f"{where}.objects has {len(self.objects)} objects; give 1 to {MAX_OBJECTS}")
        if not self.views:
            raise SceneError(f"{where}.views is empty; give at least one view")
        colours = [o.colour for o in self.objects]
        if len(set(colours)) != len(colours):
            raise SceneError(f"{where}.objects repeat a colour {colours}; colours must be distinct "
                             "within a scene (the labeller tells objects apart by colour)")
        for i, a in enumerate(self.objects):
            for j in range(i):
                b = self.objects[j]
                gap = math.dist(a.position, b.position) - a.footprint - b.footprint
                if gap < 0:
                    raise SceneError(f"{where}.objects[{i}] ({a.colour} {a.shape}) overlaps objects[{j}] "
                                     f"({b.colour} {b.shape}) by {-gap:.3f}; move them apart")

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [o.to_dict() for o in self.objects],
                "views": [v.to_dict() for v in self.views], **self.extra}

    @classmethod
    def from_dict(cls, d: object, where: str = "scene") -> Scene:
        if not isinstance(d, dict):
            raise SceneError(f"{where} must be a JSON object with 'objects' and 'views'")
        for key in ("objects", "views"):
            if not isinstance(d.get(key), list):
                raise SceneError(f"{where}.{key} must be a list, got {d.get(key)!r}")
        objects = tuple(Object3D.from_dict(o, f"{where}.objects[{i}]") for i, o in enumerate(d["objects"]))
        views = tuple(View.from_dict(v, f"{where}.views[{i}]") for i, v in enumerate(d["views"]))
        extra = {k: v for k, v in d.items() if k not in ("objects", "views")}
        scene = object.__new__(cls)
        for name, value in (("objects", objects), ("views", views), ("extra", extra)):
            object.__setattr__(scene, name, value)
        scene.validate(where)
        return scene


def load_scenes(path: str | Path) -> list[Scene]:
    """Read and validate a scene file; a bad field raises SceneError naming ``scenes[i]...``."""
    path = Path(path)
    if not path.exists():
        raise SceneError(f"scene file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SceneError(f"scene file {path} is not valid JSON: {e}") from e
    if not isinstance(data, list) or not data:
        raise SceneError(f"scene file {path} must hold a non-empty JSON list of scenes")
    return [Scene.from_dict(s, f"scenes[{i}]") for i, s in enumerate(data)]


def save_scenes(scenes: list[Scene], path: str | Path) -> None:
    Path(path).write_text(json.dumps([s.to_dict() for s in scenes], indent=1) + "\n")


# ------------------------------------------------------------------------------------- generator
@dataclass(frozen=True)
class SceneSpec:
    """Ranges the generator draws from (world units, degrees)."""

    n_objects: tuple[int, ...] = (1, 2, 3)  # drawn uniformly
    disc: float = 0.5  # object positions lie in this disc around the origin
    min_offset: float = 0.15  # ... at least this far from the look-at point (0: centred allowed)
    centred: bool = False  # one object exactly at the origin (the symmetric case)
    size: tuple[float, float] = (0.16, 0.28)
    gap: float = 0.05  # kept between footprints
    elevation: tuple[float, float] = (10.0, 35.0)
    radius: float = 2.4
    views: int = 4
    colour_jitter: int = 0  # +- per channel; 0 keeps the palette colours exactly
    shared_elevation: bool = False  # all views of a scene at one elevation (an orbit), azimuths random


def _sample_object(rng: np.random.Generator, spec: SceneSpec, colour: str, placed: list[Object3D]
                   ) -> Object3D | None:
    """One object that keeps ``spec.gap`` from the placed ones, or None after 30 tries."""
    shape = SHAPES3D[int(rng.integers(len(SHAPES3D)))]
    rgb = None
    if spec.colour_jitter:
        base = np.array(COLOUR_RGB[colour])  # type: ignore[index]
        jitter = rng.integers(-spec.colour_jitter, spec.colour_jitter + 1, 3)
        rgb = tuple(int(c) for c in np.clip(base + jitter, 0, 255))
    for _ in range(30):
        size = float(rng.uniform(*spec.size))
        if spec.centred:
            xy = (0.0, 0.0)
        else:
            r = math.sqrt(rng.uniform(spec.min_offset**2, spec.disc**2))  # uniform over the annulus
            a = rng.uniform(0, 2 * math.pi)
            xy = (round(r * math.cos(a), 4), round(r * math.sin(a), 4))
        obj = Object3D(shape, colour, xy, round(size, 4), round(float(rng.uniform(0, 90)), 2), rgb)
        if all(math.dist(xy, o.position) >= obj.footprint + o.footprint + spec.gap for o in placed):
            return obj
    return None


def _place(rng: np.random.Generator, spec: SceneSpec, colours: list[str]) -> tuple[Object3D, ...]:
    """All objects of one scene; a dead end starts the layout again (same stream: deterministic)."""
    for _ in range(100):
        placed: list[Object3D] = []
        for colour in colours:
            obj = _sample_object(rng, spec, colour, placed)
            if obj is None:
                break
            placed.append(obj)
        else:
            return tuple(placed)
    raise SceneError(f"could not place {len(colours)} objects in a disc of radius {spec.disc} "
                     f"with sizes {spec.size}; widen SceneSpec.disc or shrink SceneSpec.size")


def sample_scene(seed: int, index: int, spec: SceneSpec = SceneSpec()) -> Scene:
    """Scene ``index`` of ``seed``, drawn from ``np.random.default_rng([seed, index])`` (regenerable alone).

    Objects are off the look-at point (``min_offset``..``disc``) unless ``spec.centred``; views are
    ``spec.views`` cameras at random azimuths and elevations in ``spec.elevation`` (one elevation
    for all of them with ``spec.shared_elevation``).
    """
    if spec.centred and spec.n_objects != (1,):
        raise SceneError("SceneSpec.centred places one object at the origin; set n_objects=(1,)")
    rng = np.random.default_rng([seed, index])
    n = int(rng.choice(spec.n_objects))
    colours = [COLOURS[int(c)] for c in rng.choice(len(COLOURS), size=n, replace=False)]
    placed = _place(rng, spec, colours)
    shared = round(float(rng.uniform(*spec.elevation)), 2) if spec.shared_elevation else None
    views = tuple(View(shared if shared is not None else round(float(rng.uniform(*spec.elevation)), 2),
                       round(float(rng.uniform(0, 360)), 2), spec.radius) for _ in range(spec.views))
    return Scene(placed, views)


def first_per_group(scenes: list[Scene], n: int | None) -> list[Scene]:
    """The first ``n`` scenes of each ``group`` (all scenes when ``n`` is None), file order kept."""
    if n is None:
        return scenes
    seen: dict[str, int] = {}
    out = []
    for s in scenes:
        g = str(s.extra.get("group", "all"))
        if seen.get(g, 0) < n:
            out.append(s)
            seen[g] = seen.get(g, 0) + 1
    return out
