"""Deterministic synthetic scenes: 1-3 coloured shapes on a light background, with captions.

Scene ``i`` of seed ``s`` is drawn from ``np.random.default_rng([s, i])``, so any scene can be
regenerated alone (training, evaluation and tests agree without storing images).

Drawing styles (``styles.STYLES``) are opt-in: with ``styles=("flat", "outline", ...)`` scene ``i``
keeps exactly the objects of the flat stream and its style is drawn from a *separate* generator,
``default_rng([s, i, STYLE_STREAM])``, so the flat-only data (the default) is bit-identical to the
data ``assets/shapes-sd`` was trained on.

>>> scene = make_scene(seed=0, index=3)
>>> scene.image.shape, len(scene.objects) == len(scene.boxes)
((64, 64, 3), True)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch

from .render import SceneObject, draw_scene, object_mask
from .styles import STYLES, Style, check_style, render_styled, styled_caption
from .vocab import COLOUR_RGB, COLOURS, SHAPES, caption, object_phrase

MAX_OBJECTS = 3
# Object side in pixels at 64x64 (scaled with the image size), and the gap kept between boxes.
MIN_SIDE, MAX_SIDE, MARGIN = 14, 28, 2
COLOUR_JITTER = 15
# Probability of 1, 2 and 3 objects: the evaluation's prompts have 1-2 objects, so 3-object
# scenes (the hardest binding) get a smaller share of a short CPU training budget.
COUNT_PROBS = (0.4, 0.4, 0.2)
FLAT: tuple[Style, ...] = ("flat",)
STYLE_STREAM = 1  # third seed word of the style generator (the scene generator has two)


@dataclass(frozen=True)
class Scene:
    """One rendered sample. ``objects[i]`` is the ``i``-th phrase of ``caption``."""

    image: np.ndarray  # (H, W, 3) uint8
    caption: str
    objects: tuple[SceneObject, ...]
    style: Style = "flat"

    @property
    def boxes(self) -> np.ndarray:
        """(n, 4) float32 normalised xyxy."""
        return np.array([o.box for o in self.objects], dtype=np.float32).reshape(-1, 4)

    @property
    def labels(self) -> list[tuple[str, str]]:
        return [(o.colour, o.shape) for o in self.objects]


def _overlaps(a: tuple[float, ...], b: tuple[float, ...], margin: float) -> bool:
    apart_x = a[2] + margin <= b[0] or b[2] + margin <= a[0]
    apart_y = a[3] + margin <= b[1] or b[3] + margin <= a[1]
    return not (apart_x or apart_y)


def sample_objects(rng: np.random.Generator, n_objects: int, size: int = 64) -> list[SceneObject]:
    """Distinct colours, any shapes, square boxes that do not overlap (``MARGIN`` px apart)."""
    if not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be in 1..{MAX_OBJECTS}, got {n_objects}")
    scale = size / 64
    colours = rng.choice(len(COLOURS), size=n_objects, replace=False)
    boxes: list[tuple[float, float, float, float]] = []
    while len(boxes) < n_objects:  # rejection sampling; 3 boxes of <= 28 px fit easily in 64 px
        side = rng.integers(MIN_SIDE, MAX_SIDE + 1) * scale
        x0, y0 = rng.uniform(0, size - side, size=2)
        box = (x0, y0, x0 + side, y0 + side)
        if all(not _overlaps(box, b, MARGIN * scale) for b in boxes):
            boxes.append(box)
    objects = []
    for c, box in zip(colours, boxes, strict=True):
        colour = COLOURS[int(c)]
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        rgb = tuple(int(v) for v in np.clip(np.array(COLOUR_RGB[colour]) + jitter, 0, 255))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        objects.append(SceneObject(colour, shape, tuple(v / size for v in box), rgb))  # type: ignore[arg-type]
    return objects


def sample_background(rng: np.random.Generator) -> tuple[int, int, int]:
    """Light grey (195-245) with a small per-channel tint (+-6)."""
    grey = int(rng.integers(195, 246))
    tint = rng.integers(-6, 7, size=3)
    return tuple(int(v) for v in np.clip(grey + tint, 0, 255))  # type: ignore[return-value]


def check_styles(styles: Sequence[str]) -> tuple[Style, ...]:
    """``styles`` as a tuple of known, distinct styles; ValueError naming the bad entry otherwise."""
    styles = tuple(styles)
    if not styles or len(set(styles)) != len(styles):
        raise ValueError(f"styles must be distinct and non-empty, got {styles}; e.g. {','.join(STYLES)}")
    return tuple(check_style(s) for s in styles)


def scene_style(seed: int, index: int, styles: Sequence[Style] = FLAT) -> Style:
    """The style of scene ``index``: uniform over ``styles`` from its own generator (flat-only: no draw)."""
    if len(styles) == 1:
        return styles[0]
    return styles[int(np.random.default_rng([seed, index, STYLE_STREAM]).integers(len(styles)))]


def make_scene(
    seed: int, index: int, size: int = 64, n_objects: int | None = None, styles: Sequence[Style] = FLAT
) -> Scene:
    """Scene ``index`` of the stream ``seed`` (1-3 objects drawn with ``COUNT_PROBS`` unless given).

    With several ``styles`` the objects are those of the flat scene, drawn in ``scene_style``'s
    choice and captioned "..., <style> style" (``styles.styled_caption``; flat adds no words).
    """
    rng = np.random.default_rng([seed, index])
    n = int(rng.choice(MAX_OBJECTS, p=COUNT_PROBS)) + 1 if n_objects is None else n_objects
    objects = sample_objects(rng, n, size)
    image = draw_scene(objects, size=size, background=sample_background(rng))
    style = scene_style(seed, index, styles)
    if style == "flat":
        text = caption([object_phrase(o.colour, o.shape) for o in objects])
    else:
        image, text = render_styled(objects, style, size), styled_caption(objects, style)
    return Scene(image=image, caption=text, objects=tuple(objects), style=style)


def render_arrays(
    seed: int, start: int, count: int, size: int = 64, mask_size: int = 16, styles: Sequence[Style] = FLAT
) -> dict[str, np.ndarray | list[str]]:
    """Scenes ``start .. start+count-1`` as numpy arrays (``scene_batch`` before the tensor step).

    Plain arrays and strings, so that worker processes can send them back cheaply.
    """
    pixels = np.empty((count, size, size, 3), dtype=np.uint8)
    masks = np.zeros((count, MAX_OBJECTS, mask_size, mask_size), dtype=np.float32)
    valid = np.zeros((count, MAX_OBJECTS), dtype=bool)
    boxes = np.zeros((count, MAX_OBJECTS, 4), dtype=np.float32)
    captions = []
    for b in range(count):
        scene = make_scene(seed, start + b, size, styles=styles)
        pixels[b] = scene.image
        captions.append(scene.caption)
        for j, obj in enumerate(scene.objects):
            masks[b, j] = object_mask(obj, size=mask_size, supersample=4)
            valid[b, j] = True
            boxes[b, j] = obj.box
    return {"pixels": pixels, "captions": captions, "masks": masks, "valid": valid, "boxes": boxes}


def to_tensors(arrays: dict[str, np.ndarray | list[str]]) -> dict[str, torch.Tensor | list[str]]:
    """``render_arrays``' output as training tensors (pixels (B, 3, H, W) in [-1, 1])."""
    x = torch.from_numpy(arrays["pixels"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return {
        "pixels": x,
        "captions": arrays["captions"],
        "masks": torch.from_numpy(arrays["masks"]),
        "valid": torch.from_numpy(arrays["valid"]),
        "boxes": torch.from_numpy(arrays["boxes"]),
    }


def scene_batch(
    seed: int, start: int, count: int, size: int = 64, mask_size: int = 16, styles: Sequence[Style] = FLAT
) -> dict[str, torch.Tensor | list[str]]:
    """Scenes ``start .. start+count-1`` as training tensors.

    Returns ``pixels`` (B, 3, H, W) in [-1, 1], ``captions`` list[str], ``masks``
    (B, MAX_OBJECTS, mask_size, mask_size) object coverage in caption order (zeros for absent
    objects), ``valid`` (B, MAX_OBJECTS) bool and ``boxes`` (B, MAX_OBJECTS, 4).
    """
    return to_tensors(render_arrays(seed, start, count, size, mask_size, styles))


def prefetched(fn: Callable, calls: Iterable[tuple], workers: int = 0, depth: int | None = None) -> Iterator:
    """``fn(*args)`` for each ``args`` of ``calls``, in order; with ``workers`` > 1 computed ahead in
    that many processes (at most ``depth`` results pending, default 2 per worker).

    Styled scenes take 1-15 ms each on one core, far slower than a GPU step of the small models, so
    a GPU run renders in parallel; the results are the same as in one process.
    """
    if workers <= 1:
        for args in calls:
            yield fn(*args)
        return
    import multiprocessing as mp

    calls = iter(calls)
    with mp.get_context("spawn").Pool(workers) as pool:  # spawn: safe beside a CUDA context
        pending = deque(pool.apply_async(fn, args) for args in islice(calls, depth or 2 * workers))
        while pending:
            result = pending.popleft().get()
            nxt = next(calls, None)
            if nxt is not None:
                pending.append(pool.apply_async(fn, nxt))
            yield result


def make_styled_scene(seed: int, index: int, style: str, size: int = 64) -> tuple[np.ndarray, str, tuple]:
    """Scene ``index`` of ``make_scene``'s stream ``seed`` drawn in ``style`` (chosen, not drawn).

    Returns (image, caption, objects). Flat is exactly ``make_scene``'s image (its sampled grey);
    the illustration styles are drawn on ``PAPER``.
    """
    style = check_style(style)
    scene = make_scene(seed, index, size)
    image = scene.image if style == "flat" else render_styled(scene.objects, style, size)
    return image, styled_caption(scene.objects, style), scene.objects
