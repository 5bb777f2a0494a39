"""Motion arrows: a tracked path smoothed, fitted with a parametric spline, drawn with an arrowhead.

IlluSign draws red arrows along the hand's trajectory (its result files are named
``spline_<sign>.png``); the paper gives no formula, so ours is:

1. ``trim_rests``: drop the rest before the first and after the last real step (a hold at the end
   of a stroke makes the smoothed path wiggle back and turns the head around);
   ``smooth_path``: Savitzky-Golay (window 5, order 2) or a moving average over the tracked centres;
   these are the spline's control points.
2. ``fit_spline``: ``scipy.interpolate.splprep`` (cubic, fewer points -> lower degree) with total
   squared residual ``smoothing`` px^2, so every control point lies within sqrt(smoothing) px of
   the curve (0.5 px by default), sampled densely into a poly-line.
3. ``make_arrow``: no arrow when the smoothed path is shorter than ``min_fraction`` (3 %) of the
   image diagonal (a part that barely moves); else the poly-line and a head whose tip is the
   curve's end point and whose axis is the poly-line's last segment.

>>> import numpy as np
>>> arrow = make_arrow(np.array([[10.0, 30.0], [20.0, 30.0], [30.0, 30.0], [40.0, 30.0]]), (64, 64))
>>> [round(float(v), 3) for v in arrow.tip], round(arrow.head_angle(), 1)
([40.0, 30.0], 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

Smoothing = Literal[
    "savgol",  # Savitzky-Golay: keeps the path's curvature, removes jitter
    "moving_average",  # box filter: stronger, rounds corners
    "none",  # the raw tracked centres
]
SMOOTHINGS: tuple[Smoothing, ...] = ("savgol", "moving_average", "none")
ARROW_RED = (220, 20, 20)


@dataclass(frozen=True)
class Arrow:
    """A drawn motion arrow in pixel coordinates (x, y) of the frame it was tracked in."""

    control: np.ndarray  # (n, 2) smoothed path (the spline's control points)
    line: np.ndarray  # (m, 2) spline poly-line, ending at the tip
    head: np.ndarray  # (3, 2) arrowhead triangle: tip, left barb, right barb

    @property
    def tip(self) -> np.ndarray:
        return self.head[0]

    def head_angle(self) -> float:
        """Direction the head points, degrees (0 = +x, 90 = +y, i.e. down in the image)."""
        axis = self.head[0] - (self.head[1] + self.head[2]) / 2
        return float(np.degrees(np.arctan2(axis[1], axis[0])))

    def scaled(self, sx: float, sy: float) -> Arrow:
        """The same arrow on an image ``sx`` x wider and ``sy`` x taller (pixel-corner convention)."""
        s = np.array([sx, sy])
        return Arrow(self.control * s, self.line * s, self.head * s)


def angle_between(a: np.ndarray, b: np.ndarray) -> float:
    """Unsigned angle in degrees between two 2-D vectors."""
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def smooth_path(points: np.ndarray, method: Smoothing = "savgol", window: int = 5) -> np.ndarray:
    """(n, 2) centres -> (n, 2) smoothed; the window shrinks to the path (odd, >= 3) or is skipped."""
    if method not in SMOOTHINGS:
        raise ValueError(f"unknown smoothing {method!r}; use one of {SMOOTHINGS}")
    pts = np.asarray(points, dtype=np.float64)
    win = min(window, len(pts) if len(pts) % 2 else len(pts) - 1)
    if method == "none" or win < 3:
        return pts.copy()
    if method == "savgol":
        from scipy.signal import savgol_filter

        return savgol_filter(pts, win, polyorder=min(2, win - 1), axis=0, mode="interp")
    padded = np.pad(pts, ((win // 2, win // 2), (0, 0)), mode="edge")
    kernel = np.ones(win) / win
    return np.stack([np.convolve(padded[:, i], kernel, mode="valid") for i in range(2)], axis=1)


def trim_rests(points: np.ndarray, min_step: float) -> np.ndarray:
    """(n, 2) path without its leading and trailing steps shorter than ``min_step`` px (one rest
    point is kept at each end); a path with no such step comes back whole."""
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    moving = np.flatnonzero(steps >= min_step)
    if moving.size == 0:
        return points
    return points[moving[0] : moving[-1] + 2]


def fit_spline(control: np.ndarray, smoothing: float = 0.25, samples: int = 64) -> np.ndarray:
    """Parametric spline through ``control`` (n, 2) -> poly-line (m, 2) from its start to its end.

    Repeated points are dropped first (splprep needs distinct ones); the poly-line holds the curve
    at every control point's parameter plus ``samples`` evenly spaced ones, so it passes within
    sqrt(``smoothing``) px of each control point.
    """
    from scipy.interpolate import splev, splprep

    pts = np.asarray(control, dtype=np.float64)
    keep = np.concatenate([[True], np.linalg.norm(np.diff(pts, axis=0), axis=1) > 1e-6])
    pts = pts[keep]
    if len(pts) < 2:
        return pts.copy()
    k = min(3, len(pts) - 1)
    tck, u = splprep([pts[:, 0], pts[:, 1]], s=smoothing, k=k)
    grid = np.union1d(np.linspace(0.0, 1.0, samples), u)
    return np.stack(splev(grid, tck), axis=1)


def path_length(points: np.ndarray) -> float:
    """Sum of segment lengths of an (n, 2) path."""
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum()) if len(points) > 1 else 0.0


def arrowhead(line: np.ndarray, length: float, spread_deg: float = 25.0) -> np.ndarray:
    """(3, 2) head at the poly-line's end, its axis along the last segment: tip, left, right barb."""
    tip = line[-1]
    seg = line[-1] - line[-2]
    d = seg / np.linalg.norm(seg)
    barbs = []
    for sign in (1.0, -1.0):
        a = np.radians(sign * spread_deg)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        barbs.append(tip - length * (rot @ d))
    return np.stack([tip, *barbs])


def make_arrow(
    centres: np.ndarray,
    image_size: tuple[int, int],
    *,
    smoothing_method: Smoothing = "savgol",
    window: int = 5,
    spline_smoothing: float = 0.25,
    min_fraction: float = 0.03,
    head_fraction: float = 0.06,
    rest_fraction: float = 0.005,
) -> Arrow | None:
    """Arrow along a tracked path of (n, 2) centres in an image of (height, width); None if static.

    ``min_fraction``: shortest smoothed path that gets an arrow, as a fraction of the image diagonal.
    ``head_fraction``: arrowhead length as a fraction of the diagonal.
    ``rest_fraction``: steps shorter than this (fraction of the diagonal) at either end are a rest.
    """
    pts = np.asarray(centres, dtype=np.float64)
    pts = pts[~np.isnan(pts).any(axis=1)]
    diag = float(np.hypot(*image_size))
    if len(pts) < 2:
        return None
    control = smooth_path(trim_rests(pts, rest_fraction * diag), smoothing_method, window)
    if path_length(control) < min_fraction * diag:
        return None
    line = fit_spline(control, spline_smoothing)
    if len(line) < 2:
        return None
    return Arrow(control, line, arrowhead(line, head_fraction * diag))


def draw_arrows(
    image: Image.Image,
    arrows: list[Arrow],
    colour: tuple[int, int, int] = ARROW_RED,
    width: int | None = None,
) -> Image.Image:
    """A copy of ``image`` with each arrow's poly-line and filled head drawn on it."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(1, round(min(out.size) / 100)) if width is None else width
    for arrow in arrows:
        base = (arrow.head[1] + arrow.head[2]) / 2
        # stop the line where the head starts: a wide line would poke through the tip
        keep = np.linalg.norm(arrow.line - arrow.tip, axis=1) > np.linalg.norm(arrow.tip - base)
        shaft = np.concatenate([arrow.line[keep], base[None]])
        if len(shaft) >= 2:
            draw.line([tuple(p) for p in shaft], fill=colour, width=width, joint="curve")
        draw.polygon([tuple(p) for p in arrow.head], fill=colour)
    return out
