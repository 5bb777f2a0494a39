"""Style classifier and detectors on ground-truth renders of every style; prints JSON last.

    python benchmarks/style_classifier_check.py [--quick]

Thresholds are re-derived from ``--derive-seed`` renders (the module's constants came from seed 0)
and the rule set is scored on ``--eval-seed`` renders it never saw: every scene of
``data.make_scene`` (1-3 objects, all colours and shapes, 14-28 px) drawn in every style. Reports
per-style accuracy with a confusion matrix (rows: true style, columns: predicted, "missed" = no
detection of that colour), and the detectors' colour/shape/box accuracy per style: the flat-world
``detector.detect`` and the style-aware ``style_classifier.detect_styled``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator

import numpy as np

from worlds.shapes import style_classifier as sc
from worlds.shapes.data import make_styled_scene
from worlds.shapes.detector import box_iou, detect
from worlds.shapes.styles import STYLES


def renders(seed: int, count: int) -> Iterator[tuple[int, str, np.ndarray, tuple]]:
    for i in range(count):
        for style in STYLES:
            image, _, objects = make_styled_scene(seed, i, style)
            yield i, style, image, objects


def detector_scores(found: list, objects: tuple) -> tuple[int, int, list[float]]:
    """(objects found with right colour and shape, false positives, box IoUs of the found ones)."""
    truth = {o.colour: o for o in objects}
    right, ious = 0, []
    for d in found:
        o = truth.get(d.colour)
        if o is not None and d.shape == o.shape:
            right += 1
            ious.append(box_iou(d.box, o.box))
    return right, sum(d.colour not in truth for d in found), ious


def evaluate(seed: int, count: int) -> dict:
    labels = list(STYLES) + ["missed"]
    confusion = {s: dict.fromkeys(labels, 0) for s in STYLES}
    det: dict[str, dict[str, Callable | list]] = {}
    for _, style, image, objects in renders(seed, count):
        styled = sc.detect_styled(image)
        by_colour = {d.colour: d for d in styled}
        for o in objects:
            d = by_colour.get(o.colour)
            confusion[style][d.style if d else "missed"] += 1
        for name, found in (("detect", detect(image)), ("detect_styled", styled)):
            right, fp, ious = detector_scores(found, objects)
            row = det.setdefault(name, {}).setdefault(style, [0, 0, 0, []])
            row[0] += right
            row[1] += len(objects)
            row[2] += fp
            row[3] += ious
    per_style = {s: round(confusion[s][s] / sum(confusion[s].values()), 4) for s in STYLES}
    detectors = {
        name: {
            s: {"colour_shape_recall": round(r / n, 4), "false_positives": fp,
                "mean_box_iou": round(float(np.mean(ious)), 4) if ious else None}
            for s, (r, n, fp, ious) in rows.items()
        }
        for name, rows in det.items()
    }
    return {"per_style_accuracy": per_style, "confusion": confusion, "detectors": detectors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--derive-seed", type=int, default=0)
    ap.add_argument("--eval-seed", type=int, default=1)
    ap.add_argument("--scenes", type=int, default=400, help="scenes per seed (each drawn in every style)")
    ap.add_argument("--quick", action="store_true", help="60 scenes per seed")
    args = ap.parse_args()
    n = 60 if args.quick else args.scenes
    t0 = time.time()
    feats = sc.ground_truth_features((o, s, img) for _, s, img, o in renders(args.derive_seed, n))
    derived = sc.derive_thresholds(feats)
    shipped = {k: getattr(sc, k) for k in derived}
    ranges = {
        s: {k: [round(min(getattr(f, k) for f in fs), 3), round(max(getattr(f, k) for f in fs), 3)]
            for k in ("fill", "edge_density", "anisotropy", "stroke_width")}
        for s, fs in feats.items()
    }
    result = evaluate(args.eval_seed, n)
    print("feature ranges on derive-seed renders [min, max]:")
    for s, r in ranges.items():
        print(f"  {s:8s} {r}")
    print(f"thresholds derived {json.dumps({k: round(v, 4) for k, v in derived.items()})}; shipped {shipped}")
    print("confusion (rows true, columns predicted):")
    for s, row in result["confusion"].items():
        print(f"  {s:8s} " + " ".join(f"{k}={v}" for k, v in row.items()))
    print(json.dumps({
        "derive_seed": args.derive_seed, "eval_seed": args.eval_seed, "scenes_per_seed": n,
        "objects_per_style": sum(result["confusion"]["flat"].values()),
        "thresholds_shipped": shipped, "thresholds_derived": {k: round(v, 4) for k, v in derived.items()},
        "feature_ranges": ranges, **result, "seconds": round(time.time() - t0, 1),
    }))


if __name__ == "__main__":
    main()
