"""Which drawing style (``styles.STYLES``) each object of a shapes image is drawn in: fixed rules.

A style-transfer benchmark must say whether an object *looks* outlined, hatched, dotted or flat
without a learned model that could itself be fooled, so the classifier is four named thresholds on
four features of the object's pixels:

- ``fill``: mean ink coverage of the object's interior (its silhouette minus a 3 px rim that holds
  the outline; less on the smallest triangles). Coverage projects each pixel onto the line from
  the background colour to the object's colour (0 = paper, 1 = full colour), so anti-aliased
  pixels count fractionally.
- ``edge_density``: share of interior pixels where coverage jumps by more than ``EDGE_STEP`` to a
  neighbour (texture vs a uniform fill); reported, and used to call textureless mid-fills.
- ``anisotropy``: autocorrelation of the interior coverage one pixel along the "/" direction minus
  one pixel along "\\" (on >= 16 px): hatch lines correlate along themselves and anti-correlate
  across (~ +1.6 with 6 px hatching), a staggered dot grid is symmetric (~ 0).
- ``stroke_width``: how many one-pixel layers, peeled from the silhouette's border inwards, are
  mostly ink (outline styles ~2, flat = every layer).

Rules (thresholds from ``derive_thresholds`` on seed-0 renders, checked on other seeds):
``fill >= FLAT_MIN_FILL`` -> flat; ``fill <= OUTLINE_MAX_FILL`` or no texture -> outline;
``anisotropy >= HATCH_MIN_ANISOTROPY`` -> hatched; else dotted.

Objects are found by ``detect_styled``, the detector's colour labels with hole filling and the
convex hull (every shape of the world is convex), so hollow and textured objects keep their full
silhouette even where a generated stroke has a gap (the flat-world detector opens masks, which
erases thin strokes).

>>> from worlds.shapes.render import SceneObject
>>> from worlds.shapes.styles import render_styled
>>> img = render_styled([SceneObject("blue", "square", (0.2, 0.2, 0.6, 0.6))], "hatched")
>>> [(d.colour, d.shape, d.style) for d in detect_styled(img)]
[('blue', 'square', 'hatched')]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .detector import MIN_PIXELS, classify_shape, colour_labels, components, dilate
from .render import SceneObject
from .styles import PAPER, Style
from .vocab import COLOUR_RGB, COLOURS

# Thresholds: ``derive_thresholds`` on seed 0 (400 scenes x 4 styles, 707 objects per style; re-run
# by benchmarks/style_classifier_check.py): the middle of the widest error-free gap between classes.
FLAT_MIN_FILL = 0.836  # flat interiors are solid (fill 1.0); hatched <= 0.56, dotted <= 0.67
OUTLINE_MAX_FILL = 0.045  # outline interiors are paper (<= 0.004); dotted >= 0.086
HATCH_MIN_ANISOTROPY = 0.771  # hatching 1.30..1.89; the staggered dot grid -0.20..0.24
MIN_EDGE_DENSITY = 0.202  # flat/outline interiors <= 0.23, textured >= 0.20 (only decides mid fills)

INTERIOR_DEPTH = 3  # px peeled off the silhouette before measuring the interior (2 px stroke + AA)
MIN_INTERIOR = 6  # fewest interior pixels to measure fill and edges on (else a shallower peel)
MIN_TEXTURE_PIXELS = 16  # fewest pixels to measure the anisotropy on (else a shallower peel)
EDGE_STEP = 0.3  # coverage jump between neighbours that counts as an edge
MAX_STROKE = 8  # stroke_width is capped here (flat objects are ink all the way in)
CORE_DISTANCE = 45.0  # RGB distance to the reference within which a pixel is fully inked (jitter <= 26)
OPEN_HULL_RATIO = 1.6  # hull / filled area above which an outline counts as open (closed renders: <= 1.4)
MIN_CORE_PIXELS = 10  # fewest fully inked pixels of a real object (a 14 px outline has >= ~30)


@dataclass(frozen=True)
class StyleFeatures:
    fill: float
    edge_density: float
    anisotropy: float
    stroke_width: int
    interior_pixels: int


@dataclass(frozen=True)
class StyledDetection:
    colour: str
    shape: str
    box: tuple[float, float, float, float]  # normalised xyxy
    style: Style
    features: StyleFeatures


# --------------------------------------------------------------------------- mask morphology
def _erode(mask: np.ndarray, times: int = 1) -> np.ndarray:
    """4-neighbour erosion; pixels outside the array count as background."""
    for _ in range(times):
        padded = np.pad(mask, 1)
        mask = ~dilate(~padded)[1:-1, 1:-1]
    return mask


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus every region the outside cannot reach 4-connectedly (an outline's interior)."""
    if not mask.any():
        return mask.copy()
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.pad(mask[y0:y1, x0:x1], 1)  # a free border the outside flood starts from
    outside = np.zeros_like(crop)
    outside[0, :] = outside[-1, :] = outside[:, 0] = outside[:, -1] = True
    while True:  # flood by masked dilation (crops are <= ~30 px, so this is a few dozen steps)
        grown = dilate(outside) & ~crop
        if (grown == outside).all():
            break
        outside = grown
    out = mask.copy()
    out[y0:y1, x0:x1] |= ~outside[1:-1, 1:-1]
    return out


def convex_silhouette(mask: np.ndarray) -> np.ndarray:
    """``mask`` filled to its convex hull (pixel centres; edge pixels included).

    Every shape of this world is convex, so the hull is the object's silhouette even when a generated
    outline has a gap that ``fill_holes`` cannot close (an open stroke would otherwise read as flat).
    """
    ys, xs = np.nonzero(mask)
    if len(ys) < 3:
        return mask.copy()
    pts = sorted(set(zip(xs.tolist(), ys.tolist(), strict=True)))

    def half(points: list[tuple[int, int]]) -> list[tuple[int, int]]:  # Andrew's monotone chain
        hull: list[tuple[int, int]] = []
        for q in points:
            while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (q[1] - hull[-2][1])
                                      - (hull[-1][1] - hull[-2][1]) * (q[0] - hull[-2][0])) <= 0:
                hull.pop()
            hull.append(q)
        return hull

    hull = half(pts)[:-1] + half(pts[::-1])[:-1]
    canvas = Image.new("L", (mask.shape[1], mask.shape[0]), 0)
    if len(hull) >= 3:  # else the pixels are collinear: a line is its own hull
        ImageDraw.Draw(canvas).polygon(hull, fill=1, outline=1)
    return mask | (np.asarray(canvas) > 0)


def silhouette_of(ink: np.ndarray) -> np.ndarray:
    """The object's full silhouette from its ink: holes filled; where that leaves the hull much larger
    (``OPEN_HULL_RATIO``: an outline with a gap, whose interior the flood reaches), the convex hull."""
    filled = fill_holes(ink)
    hull = convex_silhouette(filled)
    return hull if hull.sum() > OPEN_HULL_RATIO * filled.sum() else filled


# ------------------------------------------------------------------------------------ features
def coverage_map(image: np.ndarray, ink: np.ndarray, silhouette: np.ndarray) -> np.ndarray:
    """Per-pixel ink coverage in [0, 1] along the background -> object colour line.

    ``ink``: pixels labelled the object's colour (their median is the object's colour);
    the background is the median of pixels away from the silhouette (paper when there are none).
    """
    x = image.astype(np.float32)
    away = ~dilate(dilate(silhouette))
    bg = np.median(x[away], axis=0) if away.any() else np.array(PAPER, np.float32)
    obj = np.median(x[ink], axis=0)
    axis = obj - bg
    denom = float(axis @ axis)
    if denom < 1.0:  # object colour equals background: nothing to measure
        return np.zeros(image.shape[:2], np.float32)
    return np.clip((x - bg) @ axis / denom, 0.0, 1.0)


def _shift_corr(c: np.ndarray, region: np.ndarray, dy: int, dx: int) -> float:
    """Normalised autocorrelation of ``c`` at shift (dy, dx) over pairs both inside ``region``."""
    h, w = c.shape
    ys, xs = np.nonzero(region)
    y2, x2 = ys + dy, xs + dx
    ok = (y2 >= 0) & (y2 < h) & (x2 >= 0) & (x2 < w)
    ys, xs, y2, x2 = ys[ok], xs[ok], y2[ok], x2[ok]
    keep = region[y2, x2]
    if keep.sum() < 4:
        return 0.0
    a, b = c[ys[keep], xs[keep]], c[y2[keep], x2[keep]]
    mean = c[region].mean()
    var = float(((c[region] - mean) ** 2).mean())
    return float(((a - mean) * (b - mean)).mean() / var) if var > 1e-4 else 0.0


def _peeled(silhouette: np.ndarray, min_pixels: int) -> np.ndarray:
    """The silhouette peeled by ``INTERIOR_DEPTH`` px, or less when that leaves < ``min_pixels``."""
    for depth in range(INTERIOR_DEPTH, 0, -1):  # the smallest triangles keep only a few pixels
        inner = _erode(silhouette, depth)
        if inner.sum() >= min_pixels:
            return inner
    return _erode(silhouette, 1)


def style_features(image: np.ndarray, ink: np.ndarray) -> StyleFeatures:
    """Features of one object from its ink mask (its colour's pixels, one connected object)."""
    silhouette = silhouette_of(ink)
    c = coverage_map(image, ink, silhouette)
    interior = _peeled(silhouette, MIN_INTERIOR)
    texture = _peeled(silhouette, MIN_TEXTURE_PIXELS)  # autocorrelation needs more pixel pairs
    vals = c[interior]
    jumps = np.zeros_like(c, dtype=bool)
    jumps[:, :-1] |= np.abs(np.diff(c, axis=1)) > EDGE_STEP
    jumps[:-1] |= np.abs(np.diff(c, axis=0)) > EDGE_STEP
    layers, peeled = 0, silhouette
    while layers < MAX_STROKE and peeled.any():
        inner = _erode(peeled)
        if c[peeled & ~inner].mean() < 0.5:
            break
        layers, peeled = layers + 1, inner
    return StyleFeatures(
        fill=float(vals.mean()) if vals.size else 0.0,
        edge_density=float(jumps[interior].mean()) if vals.size else 0.0,
        anisotropy=_shift_corr(c, texture, -1, 1) - _shift_corr(c, texture, 1, 1),
        stroke_width=layers,
        interior_pixels=int(interior.sum()),
    )


def classify_features(f: StyleFeatures) -> Style:
    """The rule set (module docstring) applied to one object's features."""
    if f.fill >= FLAT_MIN_FILL:
        return "flat"
    if f.fill <= OUTLINE_MAX_FILL:
        return "outline"
    if f.edge_density < MIN_EDGE_DENSITY:  # an untextured mid fill: the nearer of flat / outline
        return "flat" if f.fill >= 0.5 else "outline"
    return "hatched" if f.anisotropy >= HATCH_MIN_ANISOTROPY else "dotted"


# ----------------------------------------------------------------------------------- detection
def core_pixels(image: np.ndarray, ci: int) -> np.ndarray:
    """Pixels within ``CORE_DISTANCE`` of colour ``ci``'s reference: fully inked, never a fringe.

    Half-covered pixels of one colour can sit nearest to another reference colour (an orange
    stroke's pale edge reads yellow); such fringes have no core pixels of their own.
    """
    ref = np.array(COLOUR_RGB[COLOURS[ci]], np.float32)
    return np.linalg.norm(image.astype(np.float32) - ref, axis=-1) < CORE_DISTANCE


def object_ink(image: np.ndarray, labels: np.ndarray, ci: int) -> np.ndarray | None:
    """Colour ``ci``'s object: its pixels in the (once dilated, so hatch lines and diagonal stroke
    steps join) component holding the most core pixels; None without ``MIN_CORE_PIXELS`` of them."""
    mask, core = labels == ci, core_pixels(image, ci) & (labels == ci)
    if core.sum() < MIN_CORE_PIXELS:
        return None
    best = max(components(dilate(mask)), key=lambda c: int((c & core).sum()))
    return best & mask if (best & core).sum() >= MIN_CORE_PIXELS else None


def detect_styled(image: np.ndarray, min_pixels: int = MIN_PIXELS) -> list[StyledDetection]:
    """(H, W, 3) uint8 RGB -> one StyledDetection per colour present, in any style.

    Per colour: ``object_ink``, holes filled -> silhouette (>= ``min_pixels``); shape from the
    detector's templates on the silhouette; style from ``style_features`` + ``classify_features``.
    """
    h, w = image.shape[:2]
    labels = colour_labels(image)
    found = []
    for ci, colour in enumerate(COLOURS):
        ink = object_ink(image, labels, ci)
        if ink is None:
            continue
        silhouette = silhouette_of(ink)
        if silhouette.sum() < min_pixels:
            continue
        shape, _, (x0, y0, x1, y1) = classify_shape(silhouette)
        feats = style_features(image, ink)
        box = (x0 / w, y0 / h, x1 / w, y1 / h)
        found.append(StyledDetection(colour, shape, box, classify_features(feats), feats))
    return found


def classify_styles(image: np.ndarray) -> dict[str, Style]:
    """{colour: style} of every object found in ``image``."""
    return {d.colour: d.style for d in detect_styled(image)}


# ------------------------------------------------------------------------- threshold derivation
def best_threshold(low: Sequence[float], high: Sequence[float]) -> float:
    """Threshold t (``high`` >= t) with the fewest errors; ties -> the middle of the widest gap."""
    lo, hi = np.sort(np.asarray(low, float)), np.sort(np.asarray(high, float))
    values = np.unique(np.concatenate([lo, hi]))
    cands = (values[:-1] + values[1:]) / 2
    errors = (len(lo) - np.searchsorted(lo, cands, "left")) + np.searchsorted(hi, cands, "left")
    gaps = values[1:] - values[:-1]
    best = np.flatnonzero(errors == errors.min())
    return float(cands[best[np.argmax(gaps[best])]])


def ground_truth_features(
    scenes: Iterable[tuple[Sequence[SceneObject], Style, np.ndarray]],
) -> dict[str, list[StyleFeatures]]:
    """{style: features of every object} from (objects, style, image) triples (truth colour masks)."""
    out: dict[str, list[StyleFeatures]] = {}
    for objects, style, image in scenes:
        labels = colour_labels(image)
        for o in objects:
            ink = object_ink(image, labels, COLOURS.index(o.colour))
            if ink is not None:
                out.setdefault(style, []).append(style_features(image, ink))
    return out


def derive_thresholds(features: dict[str, list[StyleFeatures]]) -> dict[str, float]:
    """The classifier's thresholds from per-style features (see the constants above)."""
    fill = {s: [f.fill for f in fs] for s, fs in features.items()}
    aniso = {s: [f.anisotropy for f in fs] for s, fs in features.items()}
    textured = fill["hatched"] + fill["dotted"]
    return {
        "FLAT_MIN_FILL": best_threshold(textured + fill["outline"], fill["flat"]),
        "OUTLINE_MAX_FILL": best_threshold(fill["outline"], textured),
        "HATCH_MIN_ANISOTROPY": best_threshold(aniso["dotted"], aniso["hatched"]),
        "MIN_EDGE_DENSITY": best_threshold(
            [f.edge_density for s in ("flat", "outline") for f in features[s]],
            [f.edge_density for s in ("hatched", "dotted") for f in features[s]],
        ),
    }
