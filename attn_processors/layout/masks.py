"""Boxes -> attention-grid masks, and phrases -> token positions: the inputs of the CSG method
(one box per object, the object's tokens in the prompt).

Boxes are normalised xyxy ``(x1, y1, x2, y2)`` in [0, 1], x to the right, y down. Pixel boxes are
accepted only through :func:`normalise_boxes` with an explicit image size (the reference's own
input is 512-px boxes). A box covers grid cells ``y1 <= row < y2``, ``x1 <= col < x2`` after each
coordinate is scaled to the grid and rounded half-to-even (Python ``round``), exactly as the
reference's ``round(c / 32)`` on a 16x16 grid of a 512-px image.

>>> m = box_masks([(0.25, 0.25, 0.75, 0.75)], res=(4, 4))
>>> m.reshape(4, 4).int().tolist()
[[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import torch

Box = tuple[float, float, float, float]
OnEmpty = Literal[
    "repair",  # give an empty foreground mask the grid cell under its box centre, with a warning
    "error",  # raise ValueError naming the box
]

# Leading words dropped from a phrase before its tokens are used: their attention is not about
# the object ("a red circle" is steered through "red" and "circle").
ARTICLES = ("a", "an", "the")


def validate_boxes(boxes: Sequence[Sequence[float]], what: str = "box") -> list[Box]:
    """Check normalised xyxy boxes: four finite numbers in [0, 1] with x1 < x2 and y1 < y2."""
    out: list[Box] = []
    for i, b in enumerate(boxes):
        if len(b) != 4:
            raise ValueError(f"{what} {i} = {list(b)} must have 4 numbers (x1, y1, x2, y2)")
        x1, y1, x2, y2 = (float(c) for c in b)
        if not all(math.isfinite(c) and 0.0 <= c <= 1.0 for c in (x1, y1, x2, y2)):
            raise ValueError(
                f"{what} {i} = {list(b)} is outside [0, 1]: give normalised xyxy boxes, or pixel "
                "boxes with boxes_in_pixels=True and the image size"
            )
        if not (x1 < x2 and y1 < y2):
            raise ValueError(f"{what} {i} = {list(b)} is empty: it needs x1 < x2 and y1 < y2")
        out.append((x1, y1, x2, y2))
    return out


def normalise_boxes(boxes: Sequence[Sequence[float]], image_hw: tuple[int, int]) -> list[Box]:
    """Pixel xyxy boxes of an image of size (height, width) -> normalised xyxy boxes."""
    h, w = image_hw
    return [(b[0] / w, b[1] / h, b[2] / w, b[3] / h) for b in boxes]


def grid_box(box: Box, res: tuple[int, int]) -> tuple[int, int, int, int]:
    """Normalised box -> cell bounds (x1, y1, x2, y2) on a (rows, cols) grid.

    Each coordinate is ``max(round_half_even(c * size), 0)``; for 512-px boxes on the 16x16 grid
    this equals the reference's ``max(round(c_px / 32), 0)`` (c_px / 512 * 16 is exact).
    """
    rows, cols = res
    x1, y1, x2, y2 = box
    return (max(round(x1 * cols), 0), max(round(y1 * rows), 0),
            max(round(x2 * cols), 0), max(round(y2 * rows), 0))


def _box_mask(box: Box, res: tuple[int, int]) -> torch.Tensor:
    rows, cols = res
    x1, y1, x2, y2 = grid_box(box, res)
    m = torch.zeros(rows, cols, dtype=torch.float32)
    m[y1:y2, x1:x2] = 1.0  # upper bounds exclusive, as slicing in the reference
    return m.flatten()  # (rows*cols,) row-major: cell (y, x) -> y * cols + x


def box_masks(
    fg_boxes: Sequence[Box], bg_boxes: Sequence[Box] = (), res: tuple[int, int] = (16, 16)
) -> torch.Tensor:
    """Masks (n_fg + n_bg, rows*cols) float32 0/1 in fg-then-bg order (reference ``prepare_bboxes``).

    Foreground masks are used as they are (overlaps shared); each background mask is its box minus
    the union of all foreground masks. Empty masks are returned as they are: see :func:`check_masks`.
    """
    fg = [_box_mask(b, res) for b in fg_boxes]
    union = torch.stack(fg).amax(0) if fg else torch.zeros(res[0] * res[1])
    bg = [_box_mask(b, res) * (1.0 - union) for b in bg_boxes]
    return torch.stack(fg + bg) if fg or bg else torch.zeros(0, res[0] * res[1])


def check_masks(
    masks: torch.Tensor,
    boxes: Sequence[Box],
    res: tuple[int, int],
    names: Sequence[str],
    n_fg: int,
    on_empty: OnEmpty = "repair",
) -> torch.Tensor:
    """Reject or repair empty masks (the reference leaves them empty and its self loss crashes).

    A foreground box smaller than a grid cell can round to nothing; with ``on_empty="repair"`` it
    gets the single cell under its centre (and a warning). An empty background mask (its box lies
    inside the foreground union) cannot be repaired meaningfully and always raises.
    """
    masks = masks.clone()
    for j, name in enumerate(names):
        if masks[j].sum() > 0:
            continue
        if j >= n_fg:
            raise ValueError(
                f"background box {list(boxes[j])} for {name!r} is entirely covered by foreground boxes; "
                "enlarge it or drop it"
            )
        msg = (f"box {list(boxes[j])} for {name!r} covers no cell of the {res[0]}x{res[1]} attention grid; "
               "make it at least one cell wide and high")
        if on_empty == "error":
            raise ValueError(msg)
        x1, y1, x2, y2 = boxes[j]
        row = min(int((y1 + y2) / 2 * res[0]), res[0] - 1)
        col = min(int((x1 + x2) / 2 * res[1]), res[1] - 1)
        masks[j, row * res[1] + col] = 1.0
        warnings.warn(msg + f" (repaired: using cell row {row}, col {col})", stacklevel=2)
    return masks


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text).input_ids)


def phrase_token_indices(tokenizer, prompt: str, phrases: Sequence[str]) -> list[list[int]]:
    """Text positions of each phrase's tokens in the tokenised prompt (position 0 = start token).

    A phrase matches the first not-yet-used occurrence of its token sequence (so "a red circle and
    a red square" maps both phrases correctly). Leading articles (a/an/the) of a phrase are dropped
    when the phrase has other tokens. Raises ValueError when the prompt is too long for the text
    encoder or a phrase does not occur (the message lists the prompt's tokens).
    """
    ids = _ids(tokenizer, prompt)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit < 10**6 and len(ids) > limit:
        raise ValueError(
            f"prompt has {len(ids)} tokens but the text encoder takes at most {limit}; shorten the prompt"
        )
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    tokens = tokenizer.convert_ids_to_tokens(ids)
    used: set[int] = set()
    out: list[list[int]] = []
    for phrase in phrases:
        words = phrase.strip().split()
        while len(words) > 1 and words[0].lower() in ARTICLES:
            words = words[1:]
        pids = [i for i in _ids(tokenizer, " ".join(words)) if i not in special]
        match = _find(ids, pids, used) if pids else None
        if match is None:
            raise ValueError(
                f"phrase {phrase!r} was not found in the prompt {prompt!r}; the prompt's tokens are "
                f"{list(enumerate(tokens))}; use words that occur in the prompt"
            )
        if used.intersection(match):
            raise ValueError(
                f"phrase {phrase!r} reuses the prompt tokens {sorted(used.intersection(match))} of an "
                "earlier phrase; every phrase needs its own words in the prompt"
            )
        used.update(match)
        out.append(match)
    return out


def _find(ids: list[int], sub: list[int], used: set[int]) -> list[int] | None:
    """First start position of ``sub`` in ``ids`` whose positions are unused (else first at all)."""
    starts = [s for s in range(len(ids) - len(sub) + 1) if ids[s:s + len(sub)] == sub]
    for s in starts:
        pos = list(range(s, s + len(sub)))
        if not used.intersection(pos):
            return pos
    return list(range(starts[0], starts[0] + len(sub))) if starts else None
