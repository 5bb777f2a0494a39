"""Synthetic "moving shapes" videos for the embedded Wan-architecture video model.

Each video shows 1-2 flat-coloured shapes on a light background, each moving left/right/up/down at a
steady speed; the caption names colour, shape and direction ("a red circle moving right and a blue
square moving up"). Per-frame boxes are kept so a detector can score generated videos. Frames are
rendered with 4x4 supersampling (anti-aliased edges, sub-pixel motion) in plain numpy: ~1 ms/frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worlds.shapes.vocab import COLOUR_RGB, COLOURS, DIRECTIONS, SHAPES, caption, object_phrase

# Unit displacement per direction in (x, y) image coordinates (y grows downwards).
DIRECTION_VECTORS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
SUPERSAMPLE = 4


@dataclass
class MovingObject:
    """One shape's identity and trajectory; ``boxes`` is (T, 4) float [x0, y0, x1, y1] in pixels."""

    colour: str
    shape: str
    direction: str
    boxes: np.ndarray

    @property
    def phrase(self) -> str:
        return object_phrase(self.colour, self.shape, self.direction)


@dataclass
class VideoSample:
    """A rendered clip: ``frames`` is (T, H, W, 3) uint8, objects in caption order."""

    frames: np.ndarray
    caption: str
    objects: list[MovingObject]


def shape_mask(shape: str, box: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of ``shape`` drawn in ``box`` on a (size, size) canvas.

    Coverage is the fraction of the 4x4 sub-pixel samples that fall inside the ideal shape, so a
    box at a fractional position moves the edge smoothly (steady sub-pixel motion).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")
    s = SUPERSAMPLE
    # sample centres of the supersampled grid, in pixel units: (size*s,)
    c = (np.arange(size * s, dtype=np.float32) + 0.5) / s
    x0, y0, x1, y1 = (float(v) for v in box)
    xs = c[None, :]
    ys = c[:, None]
    if shape == "square":
        inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    elif shape == "circle":
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    else:  # upright isosceles triangle: apex at top centre, base along the bottom edge
        cx, w, h = (x0 + x1) / 2, x1 - x0, y1 - y0
        frac = (ys - y0) / h  # 0 at the apex, 1 at the base
        inside = (frac >= 0) & (frac <= 1) & (np.abs(xs - cx) <= frac * w / 2)
    # (size*s, size*s) -> (size, size) box-filter average
    return inside.reshape(size, s, size, s).mean(axis=(1, 3), dtype=np.float32)


def render_frames(
    objects: list[MovingObject], background: np.ndarray, size: int, rgb: list[np.ndarray]
) -> np.ndarray:
    """Composite the objects (later ones on top) over ``background`` for every frame -> (T,H,W,3) uint8."""
    num_frames = objects[0].boxes.shape[0]
    out = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        img = np.broadcast_to(background, (size, size, 3)).astype(np.float32)
        for obj, colour in zip(objects, rgb, strict=True):
            a = shape_mask(obj.shape, obj.boxes[t], size)[..., None]
            img = img * (1 - a) + colour[None, None, :] * a
        out[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def _trajectory(
    rng: np.random.Generator, direction: str, num_frames: int, size: int, side: float, speed: float
) -> np.ndarray:
    """Boxes (T, 4) of a ``side``-px object moving at ``speed`` px/frame, fully inside the canvas."""
    dx, dy = DIRECTION_VECTORS[direction]
    travel = speed * (num_frames - 1)
    margin = 1.0
    # Start range so that start and end both stay inside [margin, size - margin - side].
    lo, hi = margin, size - margin - side
    x = rng.uniform(lo + max(0.0, -dx * travel), hi - max(0.0, dx * travel))
    y = rng.uniform(lo + max(0.0, -dy * travel), hi - max(0.0, dy * travel))
    t = np.arange(num_frames, dtype=np.float32)
    xs = x + dx * speed * t
    ys = y + dy * speed * t
    return np.stack([xs, ys, xs + side, ys + side], axis=1).astype(np.float32)


def _separated(a: np.ndarray, b: np.ndarray, gap: float) -> bool:
    """True when boxes (T,4) a and b are at least ``gap`` px apart in every frame."""
    apart_x = (a[:, 2] + gap <= b[:, 0]) | (b[:, 2] + gap <= a[:, 0])
    apart_y = (a[:, 3] + gap <= b[:, 1]) | (b[:, 3] + gap <= a[:, 1])
    return bool(np.all(apart_x | apart_y))


def sample_video(
    rng: np.random.Generator,
    num_objects: int | None = None,
    num_frames: int = 9,
    size: int = 64,
    side_range: tuple[float, float] = (14.0, 22.0),
    speed_range: tuple[float, float] = (1.0, 1.6),
    colour: str | None = None,
    shape: str | None = None,
    direction: str | None = None,
) -> VideoSample:
    """Draw one random clip; ``colour``/``shape``/``direction`` pin the first object (for evaluation)."""
    if num_objects is None:
        num_objects = 1 if rng.random() < 0.6 else 2
    if num_objects not in (1, 2):
        raise ValueError(f"num_objects must be 1 or 2, got {num_objects}")
    if num_frames < 2 or size < 32:
        raise ValueError(f"need num_frames >= 2 and size >= 32, got {num_frames}, {size}")
    for name, value, allowed in (
        ("colour", colour, COLOURS),
        ("shape", shape, SHAPES),
        ("direction", direction, DIRECTIONS),
    ):
        if value is not None and value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; use one of {allowed}")
    # scale the motion range with canvas and clip length: a 64-px clip travels 16-26 px in total
    scale = size / 64.0 * 16.0 / (num_frames - 1)
    for _ in range(100):
        colours = list(rng.choice(COLOURS, size=num_objects, replace=False))
        if colour is not None:
            colours[0] = colour
            if num_objects == 2 and colours[1] == colour:
                colours[1] = next(c for c in COLOURS if c != colour)
        objects = []
        for i in range(num_objects):
            sh = shape if (i == 0 and shape is not None) else str(rng.choice(SHAPES))
            di = direction if (i == 0 and direction is not None) else str(rng.choice(DIRECTIONS))
            side = float(rng.uniform(*side_range)) * size / 64.0
            speed = float(rng.uniform(*speed_range)) * scale
            objects.append(
                MovingObject(str(colours[i]), sh, di, _trajectory(rng, di, num_frames, size, side, speed))
            )
        if num_objects == 1 or _separated(objects[0].boxes, objects[1].boxes, gap=2.0):
            break
    else:  # pragma: no cover - 100 failed placements is practically impossible at 64 px
        raise RuntimeError("could not place non-overlapping objects")
    # light grey with a small per-channel tint
    background = (rng.uniform(195, 245) + rng.uniform(-6, 6, size=3)).astype(np.float32)
    rgb = [
        np.clip(np.array(COLOUR_RGB[o.colour], np.float32) + rng.uniform(-15, 15, size=3), 0, 255)
        for o in objects
    ]
    frames = render_frames(objects, background, size, rgb)
    return VideoSample(frames=frames, caption=caption([o.phrase for o in objects]), objects=objects)


def frames_to_tensor(frames: np.ndarray):
    """(T,H,W,3) uint8 -> torch (3,T,H,W) float in [-1, 1], the layout AutoencoderKLWan encodes."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0)
    return x.permute(3, 0, 1, 2).contiguous()


def eval_prompts(num: int = 40, num_objects: int = 1, seed: int = 0) -> list[dict]:
    """Fixed evaluation prompts: for 1 object, a balanced sweep over colour x direction x shape.

    Returns dicts with ``prompt`` and ``objects`` [(colour, shape, direction), ...].
    """
    if num_objects not in (1, 2):
        raise ValueError(f"num_objects must be 1 or 2, got {num_objects}")
    rng = np.random.default_rng(seed)
    out = []
    if num_objects == 1:
        combos = [(c, s, d) for c in COLOURS for d in DIRECTIONS for s in SHAPES]
        order = rng.permutation(len(combos))
        for i in range(num):
            c, s, d = combos[order[i % len(combos)]]
            out.append({"prompt": object_phrase(c, s, d), "objects": [(c, s, d)]})
        return out
    for _ in range(num):
        cols = rng.choice(COLOURS, size=2, replace=False)
        objs = [(str(cols[i]), str(rng.choice(SHAPES)), str(rng.choice(DIRECTIONS))) for i in range(2)]
        out.append({"prompt": caption([object_phrase(*o) for o in objs]), "objects": objs})
    return out
