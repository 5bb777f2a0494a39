"""Calibrate the per-(layer, step) Sage policy: which calls must stay in full precision.

The SageAttention2 tech report (v1, "adaptive quantization") profiles ``cossim * (1 - L1)`` of
the quantized attention output per layer and timestep and runs the weak ones at higher precision;
its exact rule is not published. We run the pipeline in full precision, and on every selected
attention call also compute the quantized output on the same q/k/v, score it, and keep dense
every (layer, step) whose mean score over the prompts is below ``threshold``:

    policy = calibrate(pipe, ["a red cat", "a blue car"], SageConfig(backend="simulate"),
                       num_inference_steps=30)                              # doctest: +SKIP
    write_policy(policy, "sage_policy.json")                                 # doctest: +SKIP
    with apply(pipe, SageConfig(policy="sage_policy.json")): ...             # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..core.controller import Controller
from ..core.install import apply
from ..core.kernels import Attend, sdpa
from ..core.processor import CallInfo, ControlledProcessor
from ..core.registry import register_technique
from ..core.sites import Select, Site
from .technique import SageConfig

STORE = "sage_calibration"  # controller.stores key: {(layer, step): [score, ...]}
METRIC = "cos*(1-relL1)"


def score(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``cos(out, ref) * (1 - relL1)`` over the whole call (the tech report's per-layer metric)."""
    o, r = out.double().flatten(), ref.double().flatten()
    cos = torch.nn.functional.cosine_similarity(o, r, dim=0).item()
    rel_l1 = ((o - r).abs().sum() / r.abs().sum().clamp_min(1e-30)).item()
    return cos * (1.0 - rel_l1)


@dataclass(frozen=True)
class SageCalibration:
    """Install the calibration probe: exact attention flows on, the quantized one is only scored."""

    sage: SageConfig = SageConfig(backend="simulate")
    layers: Select = Select()


class _Probe(ControlledProcessor):
    """Returns exact attention; scores the Sage kernel (without its NaN guard) on the same q/k/v."""

    def __init__(self, site: Site, controller: Controller, config: SageConfig) -> None:
        super().__init__(site, controller)
        self.config = replace(config, nan_guard=False)  # a non-finite output must score 0, not be rescued

    def kernel(self, call: CallInfo) -> Attend:
        name, step = self.site.name, call.step
        scores = call.controller.stores.setdefault(STORE, defaultdict(list))
        quantized = self.config.attend_kernel(call.controller.stats)

        def exact_and_scored(q, k, v, *, mask=None, scale=None):
            exact = sdpa(q, k, v, mask=mask, scale=scale)
            quant = quantized(q, k, v, mask=mask, scale=scale)
            finite = bool(torch.isfinite(quant).all())
            scores[(name, -1 if step is None else step)].append(score(quant, exact) if finite else 0.0)
            return exact

        return exact_and_scored


@register_technique(SageCalibration)
def _install(config: SageCalibration, sites: Sequence[Site], controller: Controller) -> dict[str, _Probe]:
    return {s.name: _Probe(s, controller, config.sage) for s in sites}


def calibrate(
    pipe: Any, prompts: Sequence[str], config: SageConfig | None = None, *,
    threshold: float = 0.998, seed: int = 0, **call_kwargs: Any,
) -> dict[str, Any]:
    """Profile ``score`` per (layer, step) over ``prompts`` and return the policy dict.

    ``config`` (default ``SageConfig(backend="simulate")``) names the recipe, backend and layers.
    ``call_kwargs`` go to ``pipe(...)`` (steps, size, frames). Calls scored below ``threshold``
    become ``dense_calls``; the default 0.998 sits between SageAttention 1's per-layer cos >= 0.998
    kernel choice and the 8-bit kernels' typical score on real activations.
    """
    config = SageConfig(backend="simulate") if config is None else config
    if not prompts:
        raise ValueError("calibrate needs at least one prompt")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    with apply(pipe, SageCalibration(sage=config, layers=config.layers)) as ctrl:
        for prompt in prompts:
            with torch.no_grad():
                pipe(prompt, generator=torch.Generator().manual_seed(seed), **call_kwargs)
    raw: dict[tuple[str, int], list[float]] = ctrl.stores.get(STORE, {})
    table: dict[str, dict[str, float]] = defaultdict(dict)
    dense = []
    for (name, step), values in sorted(raw.items()):
        mean = sum(values) / len(values)
        table[name][str(step)] = mean
        if mean < threshold and step >= 0:
            dense.append([name, step])
    return {"recipe": config.recipe, "metric": METRIC, "threshold": threshold, "prompts": list(prompts),
            "scores": dict(table), "dense_calls": dense}


def write_policy(policy: dict[str, Any], path: str | Path) -> Path:
    """Write a policy from ``calibrate`` as JSON; ``SageConfig(policy=path)`` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(policy, indent=1, sort_keys=True))
    return path
