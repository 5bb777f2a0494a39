"""The plain Diffusers path: processors for `set_attn_processor`, with nothing else to call.

Users already know `pipe.unet.set_attn_processor(...)`. `processors(pipe, *configs)` returns the
complete `{key: processor}` dict for it, the same processors `apply(pipe, *configs)` installs, and
sets up what they need to know on the pipeline itself: the scheduler tells the controller the step
and timestep, `encode_prompt` tells it which batch rows are conditional, and a forward pre-hook on
the denoiser tells it the latent size and video token grid. Those hooks remove themselves the first
time the denoiser runs without any of these processors installed.

    procs = processors(pipe, SageConfig())
    pipe.unet.set_attn_processor(procs)             # or pipe.transformer.set_attn_processor(procs)
    image = pipe("a red circle", num_inference_steps=20).images[0]
    pipe.unet.set_attn_processor(stock_processors(pipe.unet))   # back to Diffusers' own processors
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .controller import Controller, _StockDriver
from .families import STOCK_PROCESSORS, family_of
from .install import _geometry_hook, _plan, default_latent_hw, denoisers

__all__ = ["Processors", "processors", "stock_processors"]


class Processors(dict):
    """The `{key: processor}` dict for `set_attn_processor`, plus the `controller` that drives them
    (its `stores` hold what a technique records, e.g. `procs.controller.stores["attention"]`)."""

    controller: Controller


def processors(
    target: Any,
    *configs: Any,
    model: str | None = None,
    controller: Controller | None = None,
    latent_hw: tuple[int, int] | None = None,
) -> Processors:
    """`{processor key: processor}` for `denoiser.set_attn_processor(...)` with `configs` installed.

    `target` is a pipeline (its `unet` / `transformer`, or the attribute named by `model=`, e.g.
    "transformer_2") or a denoiser model. Layers no config selects keep their current processor.
    For a pipeline, the controller is driven from the pipeline's own calls (as `apply` does); for a
    bare model nobody announces steps, so processors that need the step raise on their first call.
    Pass one `controller=` to both calls for a pipeline with two denoisers (Wan 2.2).
    """
    if not configs:
        raise ValueError("processors(pipe, *configs) needs at least one technique config, e.g. SageConfig()")
    name, net = _one_denoiser(target, model)
    ctrl = controller if controller is not None else Controller()
    hw = latent_hw or default_latent_hw(net)
    plan = _plan(net, configs, ctrl, hw)
    uses_res = any(getattr(getattr(c, "layers", None), "resolutions", ()) for c in configs)
    _PlainDriver(ctrl, None if isinstance(target, torch.nn.Module) else target, net, hw if uses_res else None)
    procs = Processors(
        {key: plan.get(key.removesuffix(".processor"), proc) for key, proc in net.attn_processors.items()}
    )
    procs.controller = ctrl
    return procs


def stock_processors(model: torch.nn.Module) -> dict[str, Any]:
    """Diffusers' default processor for every attention layer of `model`, for `set_attn_processor`.

    One line restores any family: `pipe.unet.set_attn_processor(stock_processors(pipe.unet))`.
    """
    out = {}
    for key, proc in model.attn_processors.items():
        module = model.get_submodule(key.removesuffix(".processor"))
        out[key] = STOCK_PROCESSORS[family_of(module, proc)]()
    return out


def _one_denoiser(target: Any, model: str | None) -> tuple[str, torch.nn.Module]:
    nets = denoisers(target, (model,) if model else None)
    if len(nets) > 1:
        names = [n for n, _ in nets]
        raise ValueError(
            f"{type(target).__name__} has {len(names)} denoisers {names}; call processors(pipe, ..., "
            f"model={names[0]!r}) once per denoiser, passing the same controller= to both."
        )
    return nets[0]


class _PlainDriver:
    """The hooks `apply` holds for its block, held instead while our processors stay installed."""

    def __init__(self, ctrl: Controller, pipe: Any, net: torch.nn.Module, selected_hw: Any) -> None:
        self.ctrl, self.net = ctrl, net
        self.stock = _StockDriver(ctrl, pipe) if pipe is not None else None
        if self.stock is not None:
            self.stock.install()
        self.geometry = _geometry_hook(ctrl, selected_hw)
        # one hook, registered after the stock driver's: removing hooks from inside a hook is safe
        # only for the hooks that already ran in this forward
        self.handles = [net.register_forward_pre_hook(self._pre_forward, with_kwargs=True)]

    def _pre_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Tell the controller the call's geometry; remove every hook once none of this
        controller's processors is installed any more."""
        if not any(_drives(p, self.ctrl) for p in module.attn_processors.values()):
            self.remove()
            return
        self.geometry(module, args, kwargs)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        if self.stock is not None:
            self.stock.remove()
            self.stock = None


def _drives(proc: Any, ctrl: Controller) -> bool:
    parts: Sequence[Any] = getattr(proc, "parts", None) or [proc]
    return any(getattr(p, "controller", None) is ctrl for p in parts)
