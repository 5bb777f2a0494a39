"""Offline tracker of the moving parts of a clip, and the sign's start and end found from the motion.

IlluSign draws arrows along the hand's path between the sign's start and end frames. Real footage
would need a hand-landmark model; the moving-shapes clips (and any clip shot on a plain backdrop or
from a fixed camera) need none, so this tracker uses packages only (numpy + scipy, no OpenCV, no
downloads):

1. Foreground per frame: pixels whose colour is far from the backdrop, taken as the median of the
   frame's border pixels. This needs a plain backdrop (the moving-shapes world; sign-language
   lexicon videos are shot on one). A per-pixel temporal median was tried and dropped: a part that
   covers a pixel for more than half the clip (a slow hand, a shape that travels less than its own
   size) lands in that background and leaves ghosts and half masks.
2. Parts: 8-connected components of the (opened) foreground, at least ``min_area`` pixels.
3. Tracks: consecutive frames' parts are matched by the Hungarian algorithm on a cost of centroid
   distance (fraction of the image diagonal) plus mean-colour distance; a part nobody matches
   starts a new track, a track may miss frames.
4. The sign's span: frames where the fastest track moves faster than ``active_fraction`` of its peak
   speed (``find_span``), the stroke between the hold phases.

>>> from worlds.moving_shapes.data import sample_video
>>> import numpy as np
>>> clip = sample_video(np.random.default_rng(0), num_objects=1, direction="right")
>>> [int(t.present.sum()) for t in track_parts(clip.frames)]
[9]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Part:
    """One foreground component in one frame: centroid (x, y) px, mean RGB, pixel mask."""

    centre: np.ndarray  # (2,) float x, y
    colour: np.ndarray  # (3,) float RGB
    mask: np.ndarray  # (H, W) bool


@dataclass(frozen=True)
class Track:
    """One part followed through the clip; frames where it was not found hold NaN / empty masks."""

    centres: np.ndarray  # (T, 2) float x, y px, NaN where missing
    masks: np.ndarray  # (T, H, W) bool
    colour: np.ndarray  # (3,) mean RGB over the frames it was found in

    @property
    def present(self) -> np.ndarray:
        """(T,) bool: the frames the part was found in."""
        return ~np.isnan(self.centres[:, 0])

    def path(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """Centres over frames ``start..end`` (inclusive) where found -> (n, 2)."""
        end = len(self.centres) - 1 if end is None else end
        seg = self.centres[start : end + 1]
        return seg[~np.isnan(seg[:, 0])]


def check_frames(frames: np.ndarray) -> np.ndarray:
    """Return ``frames`` as (T, H, W, 3) uint8, or raise naming the shape and the fix."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames must be (T, H, W, 3) RGB, got shape {frames.shape}; convert RGBA/grey frames to RGB"
        )
    if frames.shape[0] < 2:
        raise ValueError(f"a clip needs at least 2 frames to show motion, got {frames.shape[0]}")
    return frames.astype(np.uint8, copy=False)


def foreground(frames: np.ndarray, threshold: float = 40.0) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, H, W) bool: RGB distance to the frame's backdrop above ``threshold``."""
    x = check_frames(frames).astype(np.float32)
    border = np.concatenate([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], axis=1)  # (T, P, 3)
    backdrop = np.median(border, axis=1)[:, None, None, :]  # (T, 1, 1, 3)
    return np.linalg.norm(x - backdrop, axis=-1) > threshold


def frame_parts(image: np.ndarray, fg: np.ndarray, min_area: int) -> list[Part]:
    """Connected foreground components of one frame (opened, 8-connected, >= ``min_area`` px)."""
    from scipy import ndimage

    clean = ndimage.binary_opening(fg, structure=np.ones((3, 3), bool))
    labels, count = ndimage.label(clean, structure=np.ones((3, 3), int))
    parts = []
    for i in range(1, count + 1):
        mask = labels == i
        if mask.sum() < min_area:
            continue
        ys, xs = np.nonzero(mask)
        parts.append(Part(np.array([xs.mean(), ys.mean()]) + 0.5, image[mask].mean(0), mask))
    return parts


def _match(prev: list[Part], cur: list[Part], diag: float, max_cost: float) -> list[tuple[int, int]]:
    """Hungarian matching of two frames' parts on centroid + colour distance; pairs under ``max_cost``."""
    from scipy.optimize import linear_sum_assignment

    if not prev or not cur:
        return []
    cost = np.array(
        [[np.linalg.norm(p.centre - c.centre) / diag + np.linalg.norm(p.colour - c.colour) / 255.0
          for c in cur] for p in prev]
    )
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] <= max_cost]


def track_parts(
    frames: np.ndarray,
    *,
    threshold: float = 40.0,
    min_area: int | None = None,
    max_cost: float = 0.5,
    min_presence: float = 0.5,
) -> list[Track]:
    """Follow every foreground part through the clip -> tracks found in >= ``min_presence`` of frames.

    ``min_area`` defaults to 0.2 % of the frame (8 px at 64x64). ``max_cost`` gates a match: the
    centroid jump as a fraction of the diagonal plus the colour change as a fraction of 255.
    """
    frames = check_frames(frames)
    num, h, w = frames.shape[:3]
    diag = float(np.hypot(h, w))
    min_area = max(4, int(0.002 * h * w)) if min_area is None else min_area
    fg = foreground(frames, threshold)
    tracks: list[list[tuple[int, Part]]] = []
    last: list[tuple[int, Part]] = []  # (track index, its latest part)
    for t in range(num):
        parts = frame_parts(frames[t], fg[t], min_area)
        pairs = _match([p for _, p in last], parts, diag, max_cost)
        matched = {c for _, c in pairs}
        nxt = dict(last)
        for r, c in pairs:
            k = last[r][0]
            tracks[k].append((t, parts[c]))
            nxt[k] = parts[c]
        for c, part in enumerate(parts):
            if c not in matched:
                tracks.append([(t, part)])
                nxt[len(tracks) - 1] = part
        last = list(nxt.items())
    out = []
    for obs in tracks:
        if len(obs) < min_presence * num:
            continue
        centres = np.full((num, 2), np.nan)
        masks = np.zeros((num, h, w), bool)
        for t, part in obs:
            centres[t], masks[t] = part.centre, part.mask
        out.append(Track(centres, masks, np.mean([p.colour for _, p in obs], axis=0)))
    return out


def speeds(track: Track) -> np.ndarray:
    """(T-1,) px/frame between consecutive frames (0 across a missing frame)."""
    step = np.linalg.norm(np.diff(track.centres, axis=0), axis=1)
    return np.nan_to_num(step, nan=0.0)


def find_span(
    tracks: list[Track], *, active_fraction: float = 0.5, min_speed: float = 0.3
) -> tuple[int, int]:
    """The sign's (start, end) frames: the first and last frame of the stroke, from the motion.

    Speed per transition = the fastest track's step, smoothed by a 3-tap moving average; a
    transition is active above ``active_fraction`` x the peak and ``min_speed`` px/frame. The span
    runs from the frame before the first active transition to the frame after the last.
    """
    if not tracks:
        raise ValueError("no moving part was found in the clip; give the start and end frames by index")
    speed = np.max([speeds(t) for t in tracks], axis=0)  # (T-1,)
    smooth = np.convolve(np.pad(speed, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    active = np.flatnonzero((smooth > active_fraction * smooth.max()) & (smooth > min_speed))
    if active.size == 0:
        raise ValueError(
            f"nothing moves faster than {min_speed} px/frame; give the start and end frames by index"
        )
    return int(active[0]), int(active[-1]) + 1
