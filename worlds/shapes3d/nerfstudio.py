"""Views of a scene on disk as a nerfstudio dataset: ``transforms.json``, RGB PNGs, 16-bit depth PNGs.

The format is nerfstudio's (``nerfstudio/data/dataparsers/nerfstudio_dataparser.py``): shared
intrinsics ``fl_x, fl_y, cx, cy, w, h`` and ``camera_model`` at the top, one frame per view with
``file_path``, ``depth_file_path`` and ``transform_matrix`` (OpenGL camera-to-world, 4x4 rows).
Depth PNGs hold z-depth in millimetres (uint16, 0 = no surface), nerfstudio's default
``depth_unit_scale_factor = 1e-3``, which we also write into the file so the scale travels with
it. Our extra keys (``mask_file_path``: object index + 1 per pixel, 0 = none) are ignored by
nerfstudio.

>>> import tempfile
>>> from worlds.shapes3d.scene import sample_scene
>>> folder = write_views(sample_scene(0, 0), tempfile.mkdtemp())
>>> frames = read_views(folder)
>>> len(frames), frames[0].rgb.shape
(4, (64, 64, 3))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from attn_processors.qnerf.cameras import c2w_from_json

from .camera import Camera
from .render import render
from .scene import Scene

DEPTH_SCALE = 1e-3  # metres (world units) per depth-PNG unit: millimetres
INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")


class TransformsError(ValueError):
    """A transforms.json that is not a valid nerfstudio camera file; the message names the field."""


def camera_to_dict(cam: Camera) -> dict[str, Any]:
    return {"fl_x": cam.fl_x, "fl_y": cam.fl_y, "cx": cam.cx, "cy": cam.cy, "w": cam.w, "h": cam.h}


def transforms_dict(cameras: list[Camera], frames: list[dict[str, str]],
                    depth_scale: float = DEPTH_SCALE) -> dict[str, Any]:
    """nerfstudio transforms.json content; ``frames[i]`` holds the file paths of camera i's view.

    Intrinsics shared by all cameras go to the top level, otherwise into each frame (nerfstudio
    accepts both).
    """
    if len(cameras) != len(frames):
        raise ValueError(f"{len(cameras)} cameras but {len(frames)} frames; give one frame per camera")
    shared = all(camera_to_dict(c) == camera_to_dict(cameras[0]) for c in cameras)
    out: dict[str, Any] = {"camera_model": "PINHOLE", "depth_unit_scale_factor": depth_scale}
    if shared and cameras:
        out.update(camera_to_dict(cameras[0]))
    out["frames"] = [{**files, **({} if shared else camera_to_dict(c)),
                      "transform_matrix": c.c2w.tolist()} for c, files in zip(cameras, frames, strict=True)]
    return out


def _matrix(value: object, where: str) -> torch.Tensor:
    """The library's check of an OpenGL camera-to-world matrix, raised as this reader's error."""
    try:
        return c2w_from_json(value, where)
    except ValueError as e:
        raise TransformsError(str(e)) from e


def _intrinsics(d: dict[str, Any], top: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in INTRINSICS:
        value = d.get(key, top.get(key))
        if value is None:
            raise TransformsError(f"{where} has no {key!r} (neither in the frame nor at the top level)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TransformsError(f"{where}.{key} = {value!r} is not a finite number")
        if key in ("w", "h") and (int(value) != value or value < 1):
            raise TransformsError(f"{where}.{key} = {value!r} must be a positive integer (pixels)")
        if key in ("fl_x", "fl_y") and value <= 0:
            raise TransformsError(f"{where}.{key} = {value!r} must be a positive focal length in pixels")
        out[key] = int(value) if key in ("w", "h") else float(value)
    return out


def cameras_from_dict(data: object) -> list[Camera]:
    """Validate transforms.json content and build its cameras (frame order kept)."""
    if not isinstance(data, dict):
        raise TransformsError("transforms.json must hold a JSON object with 'frames'")
    model = data.get("camera_model", "OPENCV")
    if model not in ("PINHOLE", "SIMPLE_PINHOLE", "OPENCV"):
        raise TransformsError(f"camera_model = {model!r} is not a pinhole model; use 'PINHOLE'")
    distortion = [k for k in ("k1", "k2", "k3", "k4", "p1", "p2") if data.get(k, 0) != 0]
    if distortion:
        raise TransformsError(f"distortion {distortion} is not supported; these cameras are ideal pinholes")
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise TransformsError("transforms.json 'frames' must be a non-empty list")
    cams = []
    for i, frame in enumerate(frames):
        where = f"frames[{i}]"
        if not isinstance(frame, dict) or "transform_matrix" not in frame:
            raise TransformsError(f"{where} must be an object with a 'transform_matrix'")
        cams.append(Camera(_matrix(frame["transform_matrix"], where), **_intrinsics(frame, data, where)))
    return cams


def write_transforms(path: str | Path, data: dict[str, Any]) -> None:
    cameras_from_dict(data)  # never write a file we would refuse to read
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def read_transforms(path: str | Path) -> tuple[list[Camera], dict[str, Any]]:
    """Cameras and the raw content of a transforms.json (validated)."""
    path = Path(path)
    if not path.exists():
        raise TransformsError(f"{path} does not exist; write one with write_views() or write_transforms()")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TransformsError(f"{path} is not valid JSON: {e}") from e
    return cameras_from_dict(data), data


# ----------------------------------------------------------------------------------- view sets
@dataclass(frozen=True)
class Frame:
    """One view read back from disk."""

    camera: Camera
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float64 z-depth in world units, inf where the PNG holds 0
    ids: np.ndarray | None  # (H, W) int: object index, -1 none (None without a mask file)


def write_views(scene: Scene, folder: str | Path, size: int = 64, ss: int = 2) -> Path:
    """Render every view of ``scene`` into ``folder`` as a nerfstudio dataset; returns the folder."""
    folder = Path(folder)
    for sub in ("images", "depth", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    cams, frames = [], []
    for i, view in enumerate(scene.views):
        out = render(scene.objects, view, size=size, ss=ss)
        names = {"file_path": f"images/frame_{i:05d}.png", "depth_file_path": f"depth/frame_{i:05d}.png",
                 "mask_file_path": f"masks/frame_{i:05d}.png"}
        Image.fromarray(out.rgb.numpy()).save(folder / names["file_path"])
        mm = torch.where(torch.isfinite(out.depth), (out.depth.double() / DEPTH_SCALE).round(), 0.0)
        if mm.max() > 65535:
            raise ValueError(f"view {i}: depth {mm.max() * DEPTH_SCALE:.1f} exceeds the 65.5 m a uint16 "
                             "millimetre PNG holds; use ground=False or a smaller radius")
        Image.fromarray(mm.numpy().astype(np.uint16)).save(folder / names["depth_file_path"])
        Image.fromarray((out.ids + 1).numpy().astype(np.uint8)).save(folder / names["mask_file_path"])
        cams.append(out.camera)
        frames.append(names)
    write_transforms(folder / "transforms.json", transforms_dict(cams, frames))
    return folder


def _read_png(path: Path, where: str, shape: tuple[int, int]) -> np.ndarray:
    if not path.exists():
        raise TransformsError(f"{where}: {path} does not exist")
    arr = np.asarray(Image.open(path))
    if arr.shape[:2] != shape:
        raise TransformsError(f"{where}: {path} is {arr.shape[1]}x{arr.shape[0]}, the camera says "
                              f"{shape[1]}x{shape[0]} (w x h)")
    return arr


def read_views(folder: str | Path) -> list[Frame]:
    """Cameras, RGB, depth (world units) and object ids of a folder written by ``write_views``."""
    folder = Path(folder)
    cams, data = read_transforms(folder / "transforms.json")
    scale = data.get("depth_unit_scale_factor", DEPTH_SCALE)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise TransformsError(f"depth_unit_scale_factor = {scale!r} must be a positive number")
    out = []
    for i, (cam, frame) in enumerate(zip(cams, data["frames"], strict=True)):
        where, shape = f"frames[{i}]", (cam.h, cam.w)
        if "file_path" not in frame:
            raise TransformsError(f"{where} has no 'file_path'")
        rgb = _read_png(folder / frame["file_path"], where, shape)[..., :3]
        if "depth_file_path" not in frame:
            raise TransformsError(f"{where} has no 'depth_file_path'")
        raw = _read_png(folder / frame["depth_file_path"], where, shape).astype(np.float64)
        depth = np.where(raw > 0, raw * scale, np.inf)
        ids = None
        if "mask_file_path" in frame:
            ids = _read_png(folder / frame["mask_file_path"], where, shape).astype(np.int64) - 1
        out.append(Frame(cam, rgb, depth, ids))
    return out
