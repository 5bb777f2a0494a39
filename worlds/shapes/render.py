"""Drawing primitives of the shapes world, shared by the image and the video data generators.

Objects are drawn at ``supersample`` x the output size and box-downsampled, so edges are
anti-aliased the same way in every generator. Boxes are normalised xyxy in [0, 1] (x to the
right, y down), the convention of the layout technique and the detector.

>>> import numpy as np
>>> img = draw_scene([SceneObject("red", "circle", (0.25, 0.25, 0.5, 0.5))], size=32)
>>> img.shape, img.dtype
((32, 32, 3), dtype('uint8'))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .vocab import COLOUR_RGB, COLOURS, SHAPES

Box = tuple[float, float, float, float]
RGB = tuple[int, int, int]

DEFAULT_BACKGROUND: RGB = (220, 220, 220)


@dataclass(frozen=True)
class SceneObject:
    """One object: its words, its normalised xyxy box and (optionally) a jittered RGB."""

    colour: str
    shape: str
    box: Box
    rgb: RGB | None = None  # None -> the reference colour COLOUR_RGB[colour]

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; use one of {COLOURS}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; use one of {SHAPES}")
        x0, y0, x1, y1 = self.box
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"box {self.box} must be xyxy with x1 > x0 and y1 > y0")

    @property
    def fill(self) -> RGB:
        return self.rgb if self.rgb is not None else COLOUR_RGB[self.colour]  # type: ignore[index]


def render_object(draw: ImageDraw.ImageDraw, shape: str, box_px: Box, rgb: RGB | int) -> None:
    """Draw one filled shape inscribed in ``box_px`` (pixel xyxy on the canvas of ``draw``).

    ``rgb`` is an int on single-channel ("L") canvases. circle: the ellipse of the box; square: the
    box; triangle: upright, apex at the top centre.
    """
    x0, y0, x1, y1 = box_px
    # PIL treats x1/y1 as inclusive pixel coordinates: subtract one so the shape covers the box.
    x1i, y1i = x1 - 1, y1 - 1
    if shape == "circle":
        draw.ellipse((x0, y0, x1i, y1i), fill=rgb)
    elif shape == "square":
        draw.rectangle((x0, y0, x1i, y1i), fill=rgb)
    elif shape == "triangle":
        draw.polygon([((x0 + x1i) / 2, y0), (x1i, y1i), (x0, y1i)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")


def _to_px(box: Box, size: int) -> Box:
    return (box[0] * size, box[1] * size, box[2] * size, box[3] * size)


def draw_scene(
    objects: Sequence[SceneObject],
    size: int = 64,
    background: RGB | np.ndarray = DEFAULT_BACKGROUND,
    supersample: int = 4,
) -> np.ndarray:
    """Render objects (later ones on top) over a flat background -> uint8 array (size, size, 3).

    ``background`` may also be a (size*supersample, size*supersample, 3) uint8 array (textured
    or moving backgrounds in the video generator).
    """
    big = size * supersample
    if isinstance(background, np.ndarray):
        if background.shape != (big, big, 3):
            raise ValueError(f"background array must be ({big}, {big}, 3), got {background.shape}")
        canvas = Image.fromarray(background.astype(np.uint8), "RGB")
    else:
        canvas = Image.new("RGB", (big, big), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        render_object(draw, obj.shape, _to_px(obj.box, big), obj.fill)
    if supersample > 1:
        canvas = canvas.reduce(supersample)  # box filter: anti-aliased edges
    return np.asarray(canvas, dtype=np.uint8).copy()


def object_mask(obj: SceneObject, size: int = 64, supersample: int = 4) -> np.ndarray:
    """Coverage of one object alone -> float32 (size, size) in [0, 1] (occlusion not applied)."""
    big = size * supersample
    canvas = Image.new("L", (big, big), 0)
    render_object(ImageDraw.Draw(canvas), obj.shape, _to_px(obj.box, big), 255)
    if supersample > 1:
        canvas = canvas.reduce(supersample)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def ideal_shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """Binary mask of ``shape`` filling a width x height box (the detector's templates)."""
    canvas = Image.new("L", (width * 4, height * 4), 0)
    render_object(ImageDraw.Draw(canvas), shape, (0, 0, width * 4, height * 4), 255)
    return np.asarray(canvas.reduce(4), dtype=np.float32) >= 128
