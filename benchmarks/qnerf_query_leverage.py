"""How much can the decoder queries move a multi-view edit? Hard injection with replaced queries.

QNeRF consolidates only the self-attention queries. If the queries decided little of the edited
views, no query field could make them agree. This benchmark measures that lever on the 3D world: the
per-view edit (``qnerf_eval.py``'s baseline) against the same edit with the guided steps' target
queries replaced outright (the paper's hard-injection ablation, ``alpha = 0``) by

- ``field``: the QNeRF render (the ablation itself: consistent queries);
- ``own``: each view's own extracted queries (the interval schedule alone, no consolidation);
- ``zeros``: zero queries (every position attends uniformly to the source keys);
- ``other_view``: the render of the view half the orbit away (consistent, but of the wrong view);
- ``truth``: the queries extracted at the same steps while "editing" the ground-truth views
  themselves (the edited scene's renders, inverted and replayed with the edit prompt): the queries of
  a perfectly consistent answer, an oracle no method has. If even they move the views little, no
  query consolidation can.

    python benchmarks/qnerf_query_leverage.py --max-scenes 2
    python benchmarks/qnerf_query_leverage.py --scenes FILE --size 128 --modes field zeros

Per mode (means over scenes): ``consistency_error``, ``gt_psnr``, ``edit_success`` as in
``qnerf_eval.py``; ``pixel_change``, the mean absolute difference (0..255) from the per-view edit; and
``render_vs_own``, the relative distance ||render - extracted|| / ||extracted|| of the last fit (mean
over layers): how far the consolidated queries are from each view's own. Last line JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import qnerf_eval  # noqa: E402

from pipelines.multiview_edit import MultiViewEditPipeline  # noqa: E402

Tensor = torch.Tensor
Maps = dict[str, Tensor]
MODES = ("field", "own", "zeros", "other_view", "truth")
FIELDS = ("consistency_error", "gt_psnr", "edit_success")


def replacement(mode: str, extracted: Maps, rendered: Maps, truth: Maps | None = None) -> Maps | None:
    """The maps injected in place of the QNeRF renders ({layer: (V, h, w, C)}); None keeps them.
    ``truth``: the ground-truth views' queries of this step (mode ``truth``)."""
    if mode == "field":
        return None
    if mode == "own":
        return {n: extracted[n].to(r) for n, r in rendered.items()}
    if mode == "zeros":
        return {n: torch.zeros_like(r) for n, r in rendered.items()}
    if mode == "other_view":
        return {n: r.roll(r.shape[0] // 2, 0) for n, r in rendered.items()}
    if mode == "truth":
        if truth is None:
            raise ValueError("mode='truth' needs the ground-truth views' queries of the step; "
                             "record them first (truth_queries)")
        return {n: truth[n].to(r) for n, r in rendered.items()}
    raise ValueError(f"mode={mode!r}; use one of {MODES}")


def render_gap(extracted: Maps, rendered: Maps) -> float:
    """Mean over layers of ||rendered - extracted|| / ||extracted||."""
    gaps = [float((rendered[n].float().cpu() - e.float()).norm() / e.float().norm())
            for n, e in extracted.items()]
    return float(np.mean(gaps))


class Injector:
    """``callback_on_fit`` for one mode; keeps the last fit's render-to-own gap. ``truth`` maps a fit's
    step to the ground-truth views' queries there (mode ``truth``)."""

    def __init__(self, mode: str, truth: dict[int, Maps] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; use one of {MODES}")
        self.mode, self.truth, self.gap = mode, truth or {}, float("nan")

    def __call__(self, step: int, extracted: Maps, rendered: Maps) -> Maps | None:
        self.gap = render_gap(extracted, rendered)
        return replacement(self.mode, extracted, rendered, self.truth.get(step))


def truth_queries(pipe: MultiViewEditPipeline, scene: Any, edit: dict[str, str], where: str,
                  args: argparse.Namespace) -> dict[int, Maps]:
    """{fit step: extracted queries} of the edit run on the edited scene's own renders, with the edit's
    prompt as both source and target (the same schedule, so the steps match the real edit's)."""
    target, _ = qnerf_eval.edited_scene(scene, edit, where)
    recorded: dict[int, Maps] = {}

    def record(step: int, extracted: Maps, rendered: Maps) -> None:
        recorded[step] = {n: e.clone() for n, e in extracted.items()}

    same = {"from": edit["to"], "to": edit["to"]}
    qnerf_eval.run_scene(pipe, target, same, where, args, callback_on_fit=record)
    return recorded


def pixel_change(a: list[Tensor], b: list[Tensor]) -> float:
    return float(np.mean([(x.float() - y.float()).abs().mean() for x, y in zip(a, b, strict=True)]))


def scene_record(pipe: MultiViewEditPipeline, scene: Any, where: str,
                 args: argparse.Namespace) -> dict[str, Any]:
    """The per-view edit and one hard-injected edit per mode of ``args.modes``, on one scene."""
    edit = qnerf_eval.scene_edit(scene, where)
    plain = argparse.Namespace(**{**vars(args), "methods": ["per_view"]})
    base = qnerf_eval.run_scene(pipe, scene, edit, where, plain)
    rec: dict[str, Any] = {"id": base["id"], "group": base["group"], "per_view": base["per_view"]}
    hard = argparse.Namespace(**{**vars(args), "methods": ["qnerf"], "alpha": 0.0, "hard_inject": True})
    truth = truth_queries(pipe, scene, edit, where, hard) if "truth" in args.modes else None
    for mode in args.modes:
        injector = Injector(mode, truth)
        out = qnerf_eval.run_scene(pipe, scene, edit, where, hard, callback_on_fit=injector)
        rec[mode] = {**{k: out["qnerf"][k] for k in FIELDS},
                     "pixel_change": pixel_change(out["rows"]["qnerf"], base["rows"]["per_view"]),
                     "render_vs_own": injector.gap, "seconds": out["qnerf"]["seconds"]}
    return rec


def mean_of(records: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in records[0][key]:
        vals = [r[key][name] for r in records if r[key][name] is not None]
        out[name] = float(np.mean(vals)) if vals else None
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    qnerf_eval.scene_args(p)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--fit-iters", type=int, default=200)
    # the rest of qnerf_eval's settings (tau, kv_start, guidance, ...) at its defaults
    return qnerf_eval.with_eval_defaults(p, p.parse_args(argv))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    records = qnerf_eval.scene_records(args, scene_record)
    result = {"per_view": mean_of(records, "per_view"),
              "modes": {m: mean_of(records, m) for m in args.modes},
              "scenes": [r["id"] for r in records], "size": args.size, "steps": args.steps,
              "control": args.control, "model": str(args.model), "torch": torch.__version__}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
