"""Score moving-shapes videos: per-frame detection, tracking by colour, motion direction, consistency.

Every frame goes through the image detector (``detector.detect``: colour segmentation + shape
templates). Colours are unique within a clip, so a track is simply one colour's detections over
time. A track's motion is the least-squares slope of its box centre (px/frame); the direction is the
sign of the slope on the dominant axis, or "static" when the fitted displacement over the clip is
below ``MIN_TRAVEL`` px.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from worlds.shapes.detector import detect

MIN_TRAVEL = 3.0  # px over the clip; training clips travel 16-26 px at 64x64
MIN_PRESENCE = 0.5  # a colour must be found in at least half the frames to count as present


@dataclass
class Track:
    """One colour's per-frame detections: ``centres`` (T, 2) px with NaN where it was not found."""

    colour: str
    shapes: list[str | None]
    centres: np.ndarray

    @property
    def presence(self) -> float:
        return float(np.mean([s is not None for s in self.shapes]))

    @property
    def shape(self) -> str | None:
        found = [s for s in self.shapes if s is not None]
        return Counter(found).most_common(1)[0][0] if found else None

    @property
    def shape_consistency(self) -> float:
        """Fraction of frames showing the track's majority shape (missing frames count as changes)."""
        return float(np.mean([s == self.shape for s in self.shapes])) if self.shape else 0.0

    def velocity(self) -> tuple[float, float]:
        """Least-squares (vx, vy) in px/frame over the frames where the colour was found."""
        ok = ~np.isnan(self.centres[:, 0])
        if ok.sum() < 2:
            return 0.0, 0.0
        t = np.nonzero(ok)[0].astype(np.float64)
        vx = np.polyfit(t, self.centres[ok, 0], 1)[0]
        vy = np.polyfit(t, self.centres[ok, 1], 1)[0]
        return float(vx), float(vy)

    def direction(self) -> str:
        vx, vy = self.velocity()
        travel = (len(self.shapes) - 1) * max(abs(vx), abs(vy))
        if travel < MIN_TRAVEL:
            return "static"
        if abs(vx) >= abs(vy):
            return "right" if vx > 0 else "left"
        return "down" if vy > 0 else "up"


def track_video(frames: np.ndarray) -> dict[str, Track]:
    """(T, H, W, 3) uint8 -> {colour: Track} for every colour detected in any frame."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got shape {frames.shape}")
    num, h, w = frames.shape[:3]
    per_frame = [detect(f) for f in frames]
    colours = sorted({d.colour for dets in per_frame for d in dets})
    tracks = {}
    for c in colours:
        shapes: list[str | None] = []
        centres = np.full((num, 2), np.nan)
        for t, dets in enumerate(per_frame):
            d = next((d for d in dets if d.colour == c), None)
            shapes.append(d.shape if d else None)
            if d:
                x0, y0, x1, y1 = d.box
                centres[t] = ((x0 + x1) / 2 * w, (y0 + y1) / 2 * h)
        tracks[c] = Track(c, shapes, centres)
    return tracks


def score_video(frames: np.ndarray, objects: list[tuple[str, str, str]]) -> dict:
    """Score one clip against its prompt's (colour, shape, direction) triples.

    Per object: colour = the colour is present (>= MIN_PRESENCE of frames); shape = its majority
    shape matches; motion = its fitted direction matches; consistency = fraction of frames with the
    majority shape. Returns means over the objects plus the per-object details.
    """
    tracks = track_video(frames)
    rows = []
    for colour, shape, direction in objects:
        tr = tracks.get(colour)
        present = tr is not None and tr.presence >= MIN_PRESENCE
        rows.append(
            {
                "colour": colour,
                "present": present,
                "shape_ok": bool(present and tr.shape == shape),
                "direction": tr.direction() if present else None,
                "motion_ok": bool(present and tr.direction() == direction),
                "consistency": tr.shape_consistency if present else 0.0,
            }
        )
    return {
        "colour_accuracy": float(np.mean([r["present"] for r in rows])),
        "shape_accuracy": float(np.mean([r["shape_ok"] for r in rows])),
        "motion_accuracy": float(np.mean([r["motion_ok"] for r in rows])),
        "temporal_consistency": float(np.mean([r["consistency"] for r in rows])),
        "all_objects_ok": all(r["present"] and r["motion_ok"] for r in rows),
        "objects": rows,
    }
