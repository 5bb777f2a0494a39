"""Drawing styles of the shapes world: the same scene drawn flat, as outlines, hatched or dotted.

A style model (and the style-injection benchmark) needs scenes whose *content* (colours, shapes,
boxes) stays fixed while the *look* changes, so every style renders the same ``SceneObject`` list
deterministically. ``flat`` is ``render.draw_scene`` itself (today's training look, pixel for
pixel); the others are drawn on white paper, like an illustration:

- ``outline``: a coloured stroke along the shape's border, the interior left as paper;
- ``hatched``: the outline plus diagonal "/" lines inside it;
- ``dotted``: the outline plus a staggered grid of dots inside it (stippling).

Objects are drawn at ``supersample`` x the output size and box-downsampled, as in ``draw_scene``.
Patterns are anchored to each object's centre, so an object looks the same wherever it sits. Lengths
are given in pixels of a 64x64 image and scale with ``size``.

The style is also a caption word: ``styled_caption`` appends ", outline style" (no words for flat)
without touching ``vocab.caption``'s grammar; ``STYLE_WORDS`` lists the words a tokenizer must add.

>>> from worlds.shapes.render import SceneObject
>>> img = render_styled([SceneObject("red", "circle", (0.2, 0.2, 0.6, 0.6))], "hatched")
>>> img.shape, img.dtype, img[2, 2].tolist()
((64, 64, 3), dtype('uint8'), [255, 255, 255])
>>> styled_caption([("red", "circle"), ("blue", "square")], "outline")
'a red circle and a blue square, outline style'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from .render import DEFAULT_BACKGROUND, RGB, Box, SceneObject, draw_scene, render_object
from .vocab import caption, object_phrase, parse_caption

Style = Literal[
    "flat",  # filled shapes on light grey: the look assets/shapes-sd was trained on
    "outline",  # coloured stroke, paper-white interior: the illustration look
    "hatched",  # outline + diagonal hatching inside
    "dotted",  # outline + a staggered dot grid inside
]
STYLES: tuple[Style, ...] = ("flat", "outline", "hatched", "dotted")
# Words a caption gains: "<objects>, <style> style". Flat has no words (old captions stay valid).
STYLE_WORDS: tuple[str, ...] = ("outline", "hatched", "dotted", "style")

PAPER: RGB = (255, 255, 255)  # ground of the illustration styles
OUTLINE_WIDTH = 2.0  # stroke width, px at 64x64: solid at 64 px, leaves 14 px objects an interior
# Pattern periods are 6 px = 1.5 cells of the x4-down latent grid: a probe fine-tune of the shipped
# VAE (800 CPU steps) reconstructed 6 px hatching/dots well enough for the classifier (0.83 / 0.70)
# and 4 px patterns not at all (0.0: one latent cell per period averages them into a tint).
HATCH_PERIOD = 6.0  # horizontal distance between hatch lines, px at 64x64 (4.2 px perpendicular)
HATCH_WIDTH = 2.25  # horizontal width of one hatch line: 37.5 % ink inside the outline
DOT_PERIOD = 6.0  # spacing of the staggered dot grid, px at 64x64
DOT_DIAMETER = 3.0  # 20 % ink inside the outline: clearly between outline (0 %) and flat (100 %)


def check_style(style: str) -> Style:
    """Return ``style`` if it is known, else raise naming the allowed ones."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; use one of {STYLES} (flat = today's filled look)")
    return style  # type: ignore[return-value]


def default_background(style: str) -> RGB:
    """Light grey for flat (as ``draw_scene``), white paper for the illustration styles."""
    return DEFAULT_BACKGROUND if check_style(style) == "flat" else PAPER


# ------------------------------------------------------------------------------------ geometry
def inset_box_shape(shape: str, box_px: Box, d: float) -> list[tuple[float, float]] | Box | None:
    """The shape of ``box_px`` shrunk by ``d`` px all round: a box (circle/square) or a triangle.

    Returns None when nothing is left. The triangle is shrunk about its incentre, which moves every
    side inward by exactly ``d``; circles in square boxes (the only ones sampled) stay circles.
    """
    x0, y0, x1, y1 = box_px
    if shape in ("circle", "square"):
        inner = (x0 + d, y0 + d, x1 - d, y1 - d)
        return inner if inner[2] > inner[0] and inner[3] > inner[1] else None
    verts = _triangle(box_px)
    (ax, ay), (bx, by), (cx, cy) = verts
    a, b, c = math.dist(verts[1], verts[2]), math.dist(verts[0], verts[2]), math.dist(verts[0], verts[1])
    perimeter = a + b + c
    ix, iy = (a * ax + b * bx + c * cx) / perimeter, (a * ay + b * by + c * cy) / perimeter
    area = abs((bx - ax) * (cy - ay) - (cx - ax) * (by - ay)) / 2
    r = 2 * area / perimeter  # inradius
    if r <= d:
        return None
    k = (r - d) / r
    return [(ix + (vx - ix) * k, iy + (vy - iy) * k) for vx, vy in verts]


def _triangle(box_px: Box) -> list[tuple[float, float]]:
    """Vertices of ``render_object``'s upright triangle (same inclusive-pixel convention)."""
    x0, y0, x1, y1 = box_px
    x1i, y1i = x1 - 1, y1 - 1
    return [((x0 + x1i) / 2, y0), (x1i, y1i), (x0, y1i)]


def _shape_mask(shape: str, region: list[tuple[float, float]] | Box | None, big: int) -> np.ndarray:
    """Binary (big, big) mask of a shape given as a box (circle/square) or triangle vertices."""
    canvas = Image.new("L", (big, big), 0)
    if region is None:  # the inset left nothing: an all-stroke object
        return np.zeros((big, big), bool)
    draw = ImageDraw.Draw(canvas)
    if isinstance(region, list):  # triangle vertices
        draw.polygon(region, fill=255)
    else:
        render_object(draw, shape, region, 255)
    return np.asarray(canvas) >= 128


def shape_centre(shape: str, box_px: Box) -> tuple[float, float]:
    """Where patterns are anchored: the incentre for triangles, the box centre otherwise.

    A dot (or a hatch line) always sits there, so even the smallest object's interior holds one.
    """
    if shape != "triangle":
        return (box_px[0] + box_px[2]) / 2, (box_px[1] + box_px[3]) / 2
    verts = _triangle(box_px)
    a, b, c = math.dist(verts[1], verts[2]), math.dist(verts[0], verts[2]), math.dist(verts[0], verts[1])
    return (
        (a * verts[0][0] + b * verts[1][0] + c * verts[2][0]) / (a + b + c),
        (a * verts[0][1] + b * verts[1][1] + c * verts[2][1]) / (a + b + c),
    )


def _pattern(style: Style, centre: tuple[float, float], big: int, scale: float) -> np.ndarray:
    """Hatch lines or staggered dot grid over the canvas, with a line / dot through ``centre``."""
    ys, xs = np.mgrid[0:big, 0:big].astype(np.float64) + 0.5  # pixel centres
    u, v = xs - centre[0], ys - centre[1]
    if style == "hatched":  # "/" lines are x + y = const (y grows downward)
        width = HATCH_WIDTH * scale
        return np.mod(u + v + width / 2, HATCH_PERIOD * scale) < width
    period = DOT_PERIOD * scale
    row = np.floor(v / period + 0.5)
    du = np.mod(u + (row % 2) * period / 2 + period / 2, period) - period / 2  # odd rows shifted half
    dv = np.mod(v + period / 2, period) - period / 2
    return du * du + dv * dv < (DOT_DIAMETER * scale / 2) ** 2


def ink_mask(obj: SceneObject, style: str, size: int = 64, supersample: int = 4) -> np.ndarray:
    """Where ``obj`` puts colour in ``style``, on the supersampled canvas -> bool (big, big)."""
    style = check_style(style)
    big, scale = size * supersample, supersample * size / 64
    box_px = tuple(c * big for c in obj.box)
    full = _shape_mask(obj.shape, box_px, big)  # type: ignore[arg-type]
    if style == "flat":
        return full
    inner = _shape_mask(obj.shape, inset_box_shape(obj.shape, box_px, OUTLINE_WIDTH * scale), big)  # type: ignore[arg-type]
    ink = full & ~inner  # the stroke
    if style in ("hatched", "dotted"):
        ink |= inner & _pattern(style, shape_centre(obj.shape, box_px), big, scale)  # type: ignore[arg-type]
    return ink


# ----------------------------------------------------------------------------------- rendering
def render_styled(
    objects: Sequence[SceneObject],
    style: str = "flat",
    size: int = 64,
    background: RGB | np.ndarray | None = None,
    supersample: int = 4,
) -> np.ndarray:
    """Render a scene in ``style`` -> uint8 (size, size, 3); deterministic in its arguments.

    ``background`` defaults to ``default_background(style)``; like ``draw_scene`` it may be an RGB
    triple or a (size*supersample, size*supersample, 3) uint8 array. ``flat`` is ``draw_scene``.
    """
    style = check_style(style)
    if background is None:
        background = default_background(style)
    if style == "flat":
        return draw_scene(objects, size=size, background=background, supersample=supersample)
    big = size * supersample
    if isinstance(background, np.ndarray):
        if background.shape != (big, big, 3):
            raise ValueError(f"background array must be ({big}, {big}, 3), got {background.shape}")
        canvas = background.astype(np.uint8).copy()
    else:
        canvas = np.empty((big, big, 3), np.uint8)
        canvas[:] = np.array(background, np.uint8)
    for obj in objects:  # later objects on top, as in draw_scene
        canvas[ink_mask(obj, style, size, supersample)] = np.array(obj.fill, np.uint8)
    image = Image.fromarray(canvas, "RGB")
    if supersample > 1:
        image = image.reduce(supersample)  # the same box filter as draw_scene
    return np.asarray(image, dtype=np.uint8).copy()


# ------------------------------------------------------------------------------------ captions
def styled_caption(objects: Sequence[SceneObject | tuple[str, str]], style: str = "flat") -> str:
    """The project's caption plus ", <style> style"; flat adds nothing (so old captions are flat).

    >>> styled_caption([("red", "circle")], "dotted")
    'a red circle, dotted style'
    """
    style = check_style(style)
    pairs = [(o.colour, o.shape) if isinstance(o, SceneObject) else o for o in objects]
    text = caption([object_phrase(c, s) for c, s in pairs])
    return text if style == "flat" else f"{text}, {style} style"


def parse_styled_caption(text: str) -> tuple[list[tuple[str, str]], Style]:
    """Inverse of ``styled_caption``: ((colour, shape) per object, style).

    >>> parse_styled_caption("a red circle and a blue square, hatched style")
    ([('red', 'circle'), ('blue', 'square')], 'hatched')
    """
    body, style = " ".join(text.split()), "flat"
    if body.endswith(" style"):
        head, sep, last = body[: -len(" style")].rpartition(",")
        word = last.strip()
        if not sep or word not in STYLES or word == "flat":
            allowed = [s for s in STYLES if s != "flat"]
            raise ValueError(
                f"{text!r} does not end in ', <style> style' with a style of {allowed}; "
                "flat scenes carry no style words"
            )
        body, style = head.strip(), word
    return parse_caption(body), style  # type: ignore[return-value]
