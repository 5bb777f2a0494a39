"""Keep the content's colours in a stylised image: the style's strokes, the content's inks.

Attention-based style transfer (IlluSign, StyleID, K/V swap, StyleAligned) reads its values from the
style image, so the output takes the style's palette along with its strokes: a red circle stylised
after a blue hatched square comes out blue. When the colours belong to the content (a sign's clothes,
an object's identity), this pixel-space step puts them back, in the spirit of colour preservation in
neural style transfer (Gatys et al. 2017, "Controlling Perceptual Factors"), adapted to ink on paper:

1. the output's paper colour ``P`` is the median of its border pixels; a pixel is ink where it differs
   from ``P`` by more than ``min_ink`` (RGB distance);
2. each connected ink region's full-ink colour ``I`` is its pixel at the 90th percentile of distance
   from ``P``, and a pixel's coverage is its projection onto ``I - P`` (0 = paper, 1 = full ink), as an
   anti-aliased stroke or a pale hatch line has partial coverage;
3. the region's colour ``T`` is the median colour of the content object most of its pixels lie on or
   within ``radius`` px of (strokes drawn on a silhouette's edge); content objects are connected
   regions farther than ``min_ink`` from the content's border colour; a region with no content object
   that near is left as drawn;
4. each pixel of the region becomes ``P + coverage * (T - P)``: the output's strokes, their shapes
   and strength, in one content colour per region. The output's geometry is never taken from the
   content, so a wrong shape stays wrong and a lost object stays lost.

Paper stays paper, so an outline keeps its empty interior and a hatching its gaps. The step is
outside the attention technique and off by default (``StyleTransferPipeline(..., keep_colours=True)``);
the style benchmark reports every mode with and without it.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
from scipy import ndimage

MIN_INK = 30.0  # RGB distance from the paper (or the content's background) that counts as ink
RADIUS = 4  # px: how far outside a content object a stroke still takes its colour
FULL_INK_QUANTILE = 0.9  # a region's full-ink colour: its pixel at this quantile of distance to paper


def border_median(image: np.ndarray) -> np.ndarray:
    """Median colour of the 2-px frame: the paper / background of a scene whose objects sit inside."""
    frame = np.concatenate([image[:2].reshape(-1, 3), image[-2:].reshape(-1, 3),
                            image[:, :2].reshape(-1, 3), image[:, -2:].reshape(-1, 3)])
    return np.median(frame, axis=0)


def content_objects(content: np.ndarray, radius: int = RADIUS,
                    min_ink: float = MIN_INK) -> tuple[np.ndarray, np.ndarray]:
    """The content's objects: a map of the nearest object's id within ``radius`` px (0 = none) and each
    id's median colour (row 0 unused). Objects are connected regions away from the border's colour."""
    objects = np.linalg.norm(content - border_median(content), axis=-1) > min_ink
    ids, n = ndimage.label(objects, structure=np.ones((3, 3)))
    colours = np.zeros((n + 1, 3), np.float32)
    if n == 0:
        return ids, colours
    for i in range(1, n + 1):
        colours[i] = np.median(content[ids == i], axis=0)
    dist, (iy, ix) = ndimage.distance_transform_edt(~objects, return_indices=True)
    return np.where(dist <= radius, ids[iy, ix], 0), colours


def keep_content_colours(output: PIL.Image.Image, content: PIL.Image.Image, *, radius: int = RADIUS,
                         min_ink: float = MIN_INK) -> PIL.Image.Image:
    """``output``'s strokes recoloured with ``content``'s colours (module docstring); same size as output.

    Each ink region of the output takes one colour, so the output's geometry is kept as drawn: only
    its colours change.
    """
    if output.size != content.size:
        content = content.resize(output.size, PIL.Image.Resampling.BICUBIC)
    out = np.asarray(output.convert("RGB"), np.float32)
    src = np.asarray(content.convert("RGB"), np.float32)
    paper = border_median(out)
    offset = out - paper
    ink = np.linalg.norm(offset, axis=-1) > min_ink
    near, colours = content_objects(src, radius, min_ink)
    result = out.copy()
    regions, _ = ndimage.label(ink, structure=np.ones((3, 3)))
    for r, box in enumerate(ndimage.find_objects(regions), start=1):  # each region within its bounding box
        where = regions[box] == r
        votes = np.bincount(near[box][where], minlength=len(colours))[1:]
        if not votes.any():
            continue  # no content object under this stroke: left as drawn
        target = colours[1 + int(np.argmax(votes))]
        ink_offset = offset[box][where]
        d = np.linalg.norm(ink_offset, axis=-1)
        full = ink_offset[np.argmin(np.abs(d - np.quantile(d, FULL_INK_QUANTILE)))]
        coverage = np.clip(ink_offset @ full / max(float(full @ full), 1.0), 0.0, 1.0)
        result[box][where] = paper + coverage[:, None] * (target - paper)
    return PIL.Image.fromarray(np.clip(np.round(result), 0, 255).astype(np.uint8))
