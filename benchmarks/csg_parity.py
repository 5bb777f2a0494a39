"""Numerical parity of our CSG maths with the official implementation's golden tensors.

For every case in ``DIR/index.json`` (format: tests/golden/csg/README.md) this rebuilds the
masks from the boxes, the loss terms from the stored maps and recorded permutations, and the
redistributed probabilities, and prints one JSON object as its last line:
``{"cases": n, "max_abs_err": {quantity: err}, "tolerance": {...}, "pass": bool}``.
Exit code 1 when any error exceeds its tolerance (losses 1e-5; masks, redistribution 1e-6).

    python benchmarks/csg_parity.py --golden tests/golden/csg
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from attn_processors.layout.losses import LossWeights, SamplingParams, csg_loss  # noqa: E402
from attn_processors.layout.masks import box_masks  # noqa: E402
from attn_processors.layout.redistribution import redistribute  # noqa: E402

DEFAULT_GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "csg"
TOL = {"masks": 1e-6, "redistribution": 1e-6, "selection": 0.0}
LOSS_KEYS = ("intra_terms", "inter_terms", "self_terms", "loss_cross", "loss_self", "loss_total")


def _norm_split(meta: dict) -> tuple[list, list]:
    """fg/bg boxes in normalised form, from the 512-px boxes (the reference's input)."""
    size = float(meta.get("image_size", 512))
    scale = lambda boxes: [tuple(c / size for c in b) for b in boxes]
    return scale(meta["fg_boxes_px"]), scale(meta["bg_boxes_px"])


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def check_box_case(meta: dict, tensors: dict) -> dict[str, float]:
    res = (meta["target_res"], meta["target_res"])
    err = 0.0
    for layout in meta["layouts"]:
        fg, bg = _norm_split(layout)
        err = max(err, _err(box_masks(fg, bg, res), tensors[layout["tensor"]]))
    return {"masks": err}


def recorded_perms(tensors: dict, variant: str):
    """PermSource returning the permutations the reference drew (README: 'How the randomness is pinned')."""
    return lambda loss, j, k: tensors[f"{variant}.perm_{loss}_{j}"]


def check_loss_case(meta: dict, tensors: dict) -> dict[str, float]:
    res = (meta["target_res"], meta["target_res"])
    fg, bg = _norm_split(meta)
    masks = box_masks(fg, bg, res)
    errs = {"masks": _err(masks, tensors["masks"])}
    groups = [[t] for t in meta["indices"]]
    w = meta["loss_weights"]
    weights = LossWeights(cross=w["cross"], inter=w["inter"], self=w["self"])
    sel_err = 0.0
    for name, var in meta["variants"].items():
        p = var["params"]
        params = SamplingParams(topk_coef=p["topk_coef"], keep_fraction=p["dropout"], margin=p["margin"])
        terms = csg_loss(tensors["cross_attn"], tensors["self_attn"], masks, groups, params, weights,
                         recorded_perms(tensors, name))
        ours = {"intra_terms": terms.intra, "inter_terms": terms.inter, "self_terms": terms.self_,
                "loss_cross": terms.loss_cross, "loss_self": terms.loss_self, "loss_total": terms.total}
        for key in LOSS_KEYS:
            ref = tensors.get(f"{name}.{key}")
            if ref is not None:
                errs[key] = max(errs.get(key, 0.0), _err(ours[key].detach(), ref))
        for j, cells in enumerate(terms.selected):
            ref = tensors[f"{name}.sel_pixels_cross_{j}"]
            sel_err = max(sel_err, 0.0 if torch.equal(cells.cpu(), ref) else 1.0)
    errs["selection"] = sel_err
    red = meta.get("redistribution")
    if red:
        idx = torch.tensor(meta["indices"])
        out = redistribute(tensors["redist.probs_in"], idx, tensors["masks"])
        errs["redistribution"] = _err(out, tensors["redist.probs_out"])
    return errs


def run(golden: Path) -> dict:
    index = json.loads((golden / "index.json").read_text())
    worst: dict[str, float] = {}
    for case in index["cases"]:
        meta = json.loads((golden / case["json"]).read_text())
        tensors = load_file(str(golden / case["tensors"]))
        errs = check_box_case(meta, tensors) if "layouts" in meta else check_loss_case(meta, tensors)
        for k, v in errs.items():
            worst[k] = max(worst.get(k, 0.0), v)
    tol = {k: TOL.get(k, 1e-5) for k in worst}
    ok = all(worst[k] <= tol[k] for k in worst)
    return {"cases": len(index["cases"]), "max_abs_err": worst, "tolerance": tol, "pass": ok}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN, help="golden directory with index.json")
    args = ap.parse_args(argv)
    if not (args.golden / "index.json").is_file():
        raise SystemExit(f"no index.json in {args.golden}; pass --golden DIR")
    result = run(args.golden)
    print(json.dumps(result))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
