"""Scoring an image of the 3D shapes world against its ground-truth render.

* ``psnr``: 10 log10(255^2 / MSE) over all pixels and channels of uint8 images, capped at
  ``MAX_PSNR`` (identical images);
* ``ssim``: Wang et al. 2004 on 0..255 images, Gaussian window 11x11 sigma 1.5, K1 = 0.01,
  K2 = 0.03, population (co)variances, per channel, averaged over the *valid* region (no padding:
  the 5-pixel border is left out) and the channels. This equals scikit-image's
  ``structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  channel_axis=2, data_range=255)``. (torchmetrics reflect-pads and averages the whole image: at
  64x64 it differs by up to 0.16, so numbers from it are not comparable.)
* ``chroma_labels``: the colour of every pixel from its chromaticity (rgb / max channel), which
  Lambert shading leaves unchanged, so shaded and shadowed faces keep their label; grey ground,
  shadows and sky fall below the saturation floor. The 2D world's RGB-distance labeller
  misreads shaded faces.
* ``score_view``: PSNR, SSIM, foreground IoU and, per visible object (colours are distinct within a
  scene), mask IoU, colour present and centroid error in pixels. Objects with fewer than
  ``min_visible`` ground-truth pixels (mostly occluded) are skipped, not scored as 0.

>>> from worlds.shapes3d.render import render
>>> from worlds.shapes3d.scene import sample_scene
>>> scene = sample_scene(0, 0)
>>> truth = render(scene.objects, scene.views[1])
>>> rec = score_view(truth.rgb, truth, [o.colour for o in scene.objects])
>>> rec["psnr"], rec["ssim"], all(o["iou"] > 0.9 for o in rec["objects"])
(100.0, 1.0, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from worlds.shapes.vocab import COLOUR_RGB, COLOURS

from .render import RenderOutput, render
from .scene import Scene

MAX_PSNR = 100.0
SSIM_SIGMA, SSIM_WIN, SSIM_K1, SSIM_K2 = 1.5, 11, 0.01, 0.03
# Chromaticity labeller thresholds: (max - min) / max, max channel (0..255), chroma distance.
MIN_SATURATION, MIN_VALUE, MAX_CHROMA_DISTANCE = 0.35, 35.0, 0.35
MIN_VISIBLE_64 = 20  # ground-truth pixels an object needs to be scored, at 64x64 (scaled with area)

_PALETTE = torch.tensor([COLOUR_RGB[c] for c in COLOURS], dtype=torch.float64)
_PALETTE_CHROMA = _PALETTE / _PALETTE.max(-1, keepdim=True).values  # (C, 3)


def _image(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """(H, W, 3) uint8 array or tensor -> float64 tensor; ValueError naming the argument otherwise."""
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.ndim != 3 or t.shape[-1] != 3 or t.dtype != torch.uint8:
        raise ValueError(f"{name} must be an (H, W, 3) uint8 RGB image, got {tuple(t.shape)} {t.dtype}")
    return t.double()


def _pair(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _image(a, "image"), _image(b, "reference")
    if x.shape != y.shape:
        raise ValueError(f"image {tuple(x.shape)} and reference {tuple(y.shape)} differ in size; "
                         "render the reference at the generated image's size")
    return x, y


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    x, y = _pair(a, b)
    mse = ((x - y) ** 2).mean().item()
    return MAX_PSNR if mse == 0 else min(MAX_PSNR, 10 * math.log10(255.0**2 / mse))


def _gaussian_window() -> torch.Tensor:
    r = SSIM_WIN // 2
    g = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float64) ** 2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()  # (11,)


def ssim(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Mean SSIM (the convention in the module docstring); images need at least 11x11 pixels."""
    x, y = _pair(a, b)
    if min(x.shape[:2]) < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN}, got {tuple(x.shape[:2])}")
    g = _gaussian_window()
    kx, ky = g.view(1, 1, 1, -1).expand(3, 1, 1, -1), g.view(1, 1, -1, 1).expand(3, 1, -1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # (1, 3, H, W) -> (1, 3, H-10, W-10), valid region
        return F.conv2d(F.conv2d(t, kx, groups=3), ky, groups=3)

    x, y = x.permute(2, 0, 1)[None], y.permute(2, 0, 1)[None]
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean().item()


def chroma_labels(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 -> (H, W) int64: index into ``COLOURS`` by chromaticity, -1 for grey / dark pixels."""
    x = _image(image, "image")
    mx, mn = x.max(-1).values, x.min(-1).values
    chroma = x / mx.clamp(min=1.0)[..., None]  # (H, W, 3), max channel = 1
    dist = (chroma[:, :, None, :] - _PALETTE_CHROMA).norm(dim=-1)  # (H, W, C)
    best, label = dist.min(-1)
    ok = ((mx - mn) / mx.clamp(min=1.0) > MIN_SATURATION) & (mx > MIN_VALUE) & (best < MAX_CHROMA_DISTANCE)
    return label.where(ok, -1)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 1.0


def _centroid(mask: torch.Tensor) -> torch.Tensor:
    ii, jj = mask.nonzero().double().T
    return torch.stack([jj.mean(), ii.mean()])  # (x, y) in pixels


def score_view(image: np.ndarray | torch.Tensor, truth: RenderOutput, colours: Sequence[str],
               min_visible: int | None = None) -> dict[str, Any]:
    """Scores of ``image`` against the render ``truth`` of objects with these ``colours`` (in order).

    Returns ``psnr``, ``ssim``, ``fg_iou`` (labelled pixels vs the union of object masks) and
    ``objects``: one record per object with at least ``min_visible`` visible pixels (default
    ``MIN_VISIBLE_64`` scaled to the image area): ``colour``, ``visible_px``, ``iou`` (labeller mask
    vs the render's mask), ``present`` (the colour covers at least ``min_visible`` pixels),
    ``centroid_px`` (distance between the two masks' centroids; None when the colour is absent).
    """
    x = _image(image, "image")
    if len(colours) != truth.coverage.shape[0]:
        raise ValueError(f"{len(colours)} colours for {truth.coverage.shape[0]} rendered objects; "
                         "give the scene's object colours in order")
    bad = [c for c in colours if c not in COLOURS]
    if bad:
        raise ValueError(f"colours {bad} are not in the palette {COLOURS}")
    h, w = x.shape[:2]
    if min_visible is None:
        min_visible = max(1, round(MIN_VISIBLE_64 * h * w / 64**2))
    img = x.to(torch.uint8)
    labels = chroma_labels(img)
    masks = truth.masks  # (K, H, W) bool
    rec: dict[str, Any] = {"psnr": psnr(img, truth.rgb), "ssim": ssim(img, truth.rgb),
                           "fg_iou": _iou(labels >= 0, masks.any(0)), "objects": []}
    for colour, gt in zip(colours, masks, strict=True):
        visible = int(gt.sum())
        if visible < min_visible:
            continue
        pred = labels == COLOURS.index(colour)  # type: ignore[arg-type]
        n_pred = int(pred.sum())
        centroid = (_centroid(pred) - _centroid(gt)).norm().item() if n_pred else None
        rec["objects"].append({"colour": colour, "visible_px": visible, "iou": _iou(pred, gt),
                               "present": n_pred >= min_visible, "centroid_px": centroid})
    return rec


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, float | int | None]:
    """Means over views (PSNR, SSIM, fg IoU) and over scored objects (IoU, colour present, centroid)."""
    objs = [o for r in records for o in r["objects"]]
    cents = [o["centroid_px"] for o in objs if o["centroid_px"] is not None]

    def mean(v: list[float]) -> float | None:
        return round(float(np.mean(v)), 4) if v else None

    return {"views": len(records), "objects": len(objs),
            "psnr": mean([r["psnr"] for r in records]), "ssim": mean([r["ssim"] for r in records]),
            "fg_iou": mean([r["fg_iou"] for r in records]), "mask_iou": mean([o["iou"] for o in objs]),
            "colour_present": mean([float(o["present"]) for o in objs]), "centroid_px": mean(cents)}


def score_novel_views(scene: Scene, images: Sequence[np.ndarray | torch.Tensor], size: int = 64
                      ) -> list[dict[str, Any]]:
    """Score ``images[i]`` against the render of target view ``scene.views[i + 1]`` (view 0 is the source)."""
    if len(images) != len(scene.views) - 1:
        raise ValueError(f"{len(images)} images for {len(scene.views) - 1} target views; give one per "
                         "view after the source")
    colours = [o.colour for o in scene.objects]
    return [score_view(img, render(scene.objects, view, size=size), colours)
            for img, view in zip(images, scene.views[1:], strict=True)]


def copy_input_baseline(scene: Scene, size: int = 64) -> list[dict[str, Any]]:
    """The trivial novel-view answer: the source view's render, returned for every target."""
    source = render(scene.objects, scene.views[0], size=size).rgb
    return score_novel_views(scene, [source] * (len(scene.views) - 1), size)
