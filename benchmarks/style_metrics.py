"""Image metrics of the style benchmark: Canny edges and edge F1, and a Gram-matrix style distance.

No downloadable network is allowed (CI is offline), so the Gram matrices are not VGG's. Style here is
colour and texture (outline strokes, hatching, dots), which a fixed filter bank sees directly:

- features per pixel: R, G, B in [0, 1] and |Gabor| responses of the grey image at 4 orientations
  (0, 45, 90, 135 degrees) x 2 wavelengths (4 and 8 px; the world's hatching and dot periods are
  6 px), at two scales (the image and its 2x average-pooled copy): 11 channels per scale;
- Gram matrix per scale: F Fᵀ / N over the N pixels (11 x 11);
- style distance: the Frobenius norm of the Gram difference, averaged over the two scales;
  ``gram_reduction`` = 1 - d(output, style) / d(content, style) (1 = the style's statistics
  reached, 0 = no closer than the content image, < 0 = further).

Edges are the style pipeline's own Canny (``pipelines.style_transfer.canny_edges``: the IlluSign
proxy's 5x5 blur and thresholds 30/120) run on each RGB channel and joined: on grey luma alone a
yellow object on the light-grey ground of a flat scene has no edges at all (luma 193 vs ~220), so
every output would score 0 against it.

>>> import numpy as np
>>> img = np.full((32, 32, 3), 255, np.uint8); img[8:24, 8:24] = (200, 30, 30)
>>> e = canny(img); bool(e[8:24, 8].any()) and not e[12:20, 12:20].any()
True
>>> edge_f1(img, img)
1.0
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

EDGE_TOLERANCE = 3.0  # px: an edge pixel counts as matched within this distance
GABOR_WAVELENGTHS = (4.0, 8.0)
GABOR_ANGLES = (0.0, 45.0, 90.0, 135.0)


def canny(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) bool: the union of the style pipeline's Canny on each channel."""
    from pipelines.style_transfer import canny_edges

    edges = np.zeros(image.shape[:2], bool)
    for c in range(3):
        channel = Image.fromarray(np.repeat(image[..., c : c + 1], 3, axis=2))  # grey = this channel
        edges |= np.asarray(canny_edges(channel))[..., 0] == 0
    return edges


def edge_f1(output: np.ndarray, reference: np.ndarray, tolerance: float = EDGE_TOLERANCE) -> float:
    """F1 of ``output``'s Canny edges against ``reference``'s, a match being within ``tolerance`` px.

    Precision: output edge pixels near a reference edge; recall: reference edge pixels near an
    output edge. 1.0 when neither image has edges, 0.0 when only one has.
    """
    eo, er = canny(output), canny(reference)
    if not eo.any() and not er.any():
        return 1.0
    if not eo.any() or not er.any():
        return 0.0
    precision = float((ndimage.distance_transform_edt(~er)[eo] <= tolerance).mean())
    recall = float((ndimage.distance_transform_edt(~eo)[er] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _gabor(wavelength: float, angle_deg: float) -> np.ndarray:
    """Zero-mean, L1-normalised even Gabor kernel (sigma = wavelength / 2)."""
    sigma = wavelength / 2
    r = int(np.ceil(2 * sigma))
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    t = np.radians(angle_deg)
    u = x * np.cos(t) + y * np.sin(t)
    k = np.exp(-(x * x + y * y) / (2 * sigma * sigma)) * np.cos(2 * np.pi * u / wavelength)
    k -= k.mean()
    return k / np.abs(k).sum()


_BANK = [_gabor(wl, a) for wl in GABOR_WAVELENGTHS for a in GABOR_ANGLES]


def style_features(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (11, H, W) float: RGB and 8 rectified Gabor responses, all in ~[0, 1]."""
    rgb = image.astype(np.float64) / 255.0
    g = rgb @ np.array([0.299, 0.587, 0.114])
    maps = [rgb[..., c] for c in range(3)]
    maps += [np.abs(ndimage.convolve(g, k, mode="nearest")) for k in _BANK]
    return np.stack(maps)


def gram_matrices(image: np.ndarray) -> list[np.ndarray]:
    """The (11, 11) Gram matrix F Fᵀ / N at full and half resolution."""
    grams = []
    img = image
    for _ in range(2):
        f = style_features(img).reshape(len(_BANK) + 3, -1)
        grams.append(f @ f.T / f.shape[1])
        h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
        img = img[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    return grams


def gram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the two scales of the Frobenius norm of the Gram-matrix difference."""
    pairs = zip(gram_matrices(a), gram_matrices(b), strict=True)
    return float(np.mean([np.linalg.norm(x - y) for x, y in pairs]))


def gram_reduction(output: np.ndarray, content: np.ndarray, style: np.ndarray) -> float:
    """1 - d(output, style) / d(content, style): how much of the way to the style's statistics."""
    base = gram_distance(content, style)
    return 0.0 if base == 0 else 1.0 - gram_distance(output, style) / base
