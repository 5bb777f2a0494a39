"""Detector of the shapes world: colour segmentation + template shape classification.

Each pixel takes the nearest reference colour (``vocab.COLOUR_RGB``) when it is saturated enough
and close enough to it; the largest 4-connected component of each colour is an object; its shape is
the ideal circle / square / triangle drawn in the component's bounding box with the highest mask
IoU. (A fill-ratio rule misread the rounded squares a model draws as circles.)

>>> from worlds.shapes.data import make_scene
>>> scene = make_scene(seed=0, index=1)
>>> sorted((d.colour, d.shape) for d in detect(scene.image)) == sorted(scene.labels)
True
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .render import ideal_shape_mask
from .vocab import COLOUR_RGB, COLOURS, SHAPES

MIN_SATURATION = 0.35  # HSV saturation; the background is grey (< 0.1)
MAX_DISTANCE = 110.0  # RGB distance to the nearest reference colour
MIN_PIXELS = 40  # smallest object: a 14 px triangle covers ~98 px at 64x64

_REFS = np.array([COLOUR_RGB[c] for c in COLOURS], dtype=np.float32)  # (C, 3)


@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    box: tuple[float, float, float, float]  # normalised xyxy
    pixels: int
    shape_iou: float  # IoU of the component with its best shape template


def colour_labels(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) int: index into COLOURS, or -1 for background / unsure pixels."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    x = image.astype(np.float32)
    mx, mn = x.max(-1), x.min(-1)
    saturation = (mx - mn) / np.maximum(mx, 1.0)
    dist = np.linalg.norm(x[:, :, None, :] - _REFS[None, None], axis=-1)  # (H, W, C)
    labels = dist.argmin(-1)
    ok = (saturation > MIN_SATURATION) & (dist.min(-1) < MAX_DISTANCE)
    return np.where(ok, labels, -1)


def dilate(mask: np.ndarray) -> np.ndarray:
    """4-neighbour dilation of a bool mask."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def open_mask(mask: np.ndarray) -> np.ndarray:
    """Morphological opening (4-neighbour): drops 1-px lines and specks, keeps solid shapes.

    Anti-aliased rims of one colour can fall nearest to another reference colour (half-covered
    red pixels look orange); they form 1-px lines that the opening removes.
    """
    eroded = ~dilate(~mask)
    return dilate(eroded) & mask


def components(mask: np.ndarray) -> Iterator[np.ndarray]:
    """4-connected components of a bool mask, in scan order (flood fill by masked dilation)."""
    remaining = mask.copy()
    while remaining.any():
        ys, xs = np.nonzero(remaining)
        comp = np.zeros_like(mask)
        comp[ys[0], xs[0]] = True
        while True:
            grown = dilate(comp) & remaining
            if grown.sum() == comp.sum():
                break
            comp = grown
        remaining &= ~comp
        yield comp


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of a bool mask (the first of equal size)."""
    best, best_size, left = np.zeros_like(mask), 0, int(mask.sum())
    for comp in components(mask):
        size = int(comp.sum())
        if size > best_size:
            best, best_size = comp, size
        left -= size
        if left <= best_size:  # a smaller leftover cannot beat the best
            break
    return best


def classify_shape(component: np.ndarray) -> tuple[str, float, tuple[int, int, int, int]]:
    """Component mask -> (shape, template IoU, pixel bbox x0, y0, x1, y1 exclusive)."""
    ys, xs = np.nonzero(component)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    crop = component[y0:y1, x0:x1]
    best_shape, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        tmpl = ideal_shape_mask(shape, x1 - x0, y1 - y0)
        iou = float((tmpl & crop).sum() / max((tmpl | crop).sum(), 1))
        if iou > best_iou:
            best_shape, best_iou = shape, iou
    return best_shape, best_iou, (x0, y0, x1, y1)


def detect(image: np.ndarray, min_pixels: int = MIN_PIXELS) -> list[Detection]:
    """(H, W, 3) uint8 RGB -> one Detection per colour present (largest component >= min_pixels)."""
    h, w = image.shape[:2]
    labels = colour_labels(image)
    found = []
    for ci, colour in enumerate(COLOURS):
        mask = labels == ci
        if mask.sum() < min_pixels:
            continue
        comp = largest_component(open_mask(mask))
        if comp.sum() < min_pixels:
            continue
        for _ in range(2):  # give back the rim and the triangle's apex the opening took
            comp = dilate(comp) & mask
        shape, iou, (x0, y0, x1, y1) = classify_shape(comp)
        found.append(Detection(colour, shape, (x0 / w, y0 / h, x1 / w, y1 / h), int(comp.sum()), iou))
    return found


def box_iou(a: tuple[float, ...] | np.ndarray, b: tuple[float, ...] | np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
