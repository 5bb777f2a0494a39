"""Install technique processors on selected layers and restore the previous ones, even on error.

    >>> with apply(pipe, StoreConfig(layers=Select(kinds=("cross",)))) as ctrl:    # doctest: +SKIP
    ...     image = pipe("a red cat").images[0]
    >>> maps = ctrl.stores["attention"]                                              # doctest: +SKIP

`apply` finds the denoiser(s) (`unet`, `transformer`, `transformer_2`; never the VAE or text
encoders unless `models=` names them), builds `Site`s, asks each config's registered installer for
processors on the layers its `layers: Select` picks, composes with processors already ours on a
layer (see processor.compose), installs only those layers, and restores the exact previous
processor objects on exit. It also hooks each denoiser's forward so processors know the latent size
and the video token grid of the current call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .controller import Controller
from .families import input_geometry
from .processor import ControlledProcessor, compose
from .registry import installer_for, register_technique
from .sites import Predicate, Select, Site, build_sites, select

DENOISERS = ("unet", "transformer", "transformer_2")


def denoisers(target: Any, models: Sequence[str] | None = None) -> list[tuple[str, torch.nn.Module]]:
    """(attribute name, model) of the networks to install on: the model itself, or a pipeline's
    `unet` / `transformer` / `transformer_2` (or the attributes named in `models`, e.g. ("vae",))."""
    if isinstance(target, torch.nn.Module):
        if models:
            raise ValueError("models= names pipeline attributes; pass the pipeline, not a model")
        return [("model", target)]
    names = tuple(models) if models else DENOISERS
    found = [(n, m) for n in names if isinstance(m := getattr(target, n, None), torch.nn.Module)]
    missing = [n for n in (models or ()) if n not in dict(found)]
    if missing or not found:
        raise ValueError(
            f"{type(target).__name__} has no attention model named {missing or list(names)}; "
            "pass a pipeline with a unet/transformer, or a denoiser model itself."
        )
    return found


def default_latent_hw(model: torch.nn.Module) -> tuple[int, int] | None:
    """The latent size a pipeline uses by default (config.sample_size), for resolution selection."""
    size = getattr(getattr(model, "config", None), "sample_size", None)
    if isinstance(size, int):
        return size, size
    if isinstance(size, Sequence) and len(size) == 2:
        return int(size[0]), int(size[1])
    return None


def processors_for(
    model: torch.nn.Module,
    make: Callable[[Site], Any],
    where: Predicate | None = None,
    *,
    latent_hw: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """A complete `{key: processor}` dict for `model.set_attn_processor(...)`: `make(site)` on the
    selected layers, the current processor everywhere else."""
    chosen = {s.name for s in select(model, where, latent_hw=latent_hw)}
    sites = {s.key: s for s in build_sites(model)}
    return {
        key: make(sites[key]) if sites[key].name in chosen else proc
        for key, proc in model.attn_processors.items()
    }


def _plan(
    model: torch.nn.Module, configs: Sequence[Any], ctrl: Controller, latent_hw: tuple[int, int] | None
) -> dict[str, ControlledProcessor]:
    """{site name: processor} for one model, composed with what is already installed."""
    sites = build_sites(model)
    current = model.attn_processors
    plan: dict[str, ControlledProcessor] = {}
    for config in configs:
        installer = installer_for(config)
        chosen = select(sites, getattr(config, "layers", None), latent_hw=latent_hw)
        made = installer(config, chosen, ctrl)
        unknown = set(made) - {s.name for s in chosen}
        if unknown:
            raise ValueError(
                f"installer for {type(config).__name__} returned layers it was not given: "
                f"{sorted(unknown)[:3]}"
            )
        for name, proc in made.items():
            prev = plan.get(name, current[f"{name}.processor"])
            plan[name] = compose(prev, proc) if getattr(prev, "_controlled", False) else proc
    return plan


@contextlib.contextmanager
def apply(
    target: Any,
    *configs: Any,
    controller: Controller | None = None,
    models: Sequence[str] | None = None,
    latent_hw: tuple[int, int] | None = None,
) -> Iterator[Controller]:
    """Install the techniques `configs` on `target` (pipeline or model) for the `with` block.

    Yields the controller. Without `controller=`, a new one is made and, for a pipeline, driven by
    `Controller.attach(pipe)`; pass your own controller when your loop calls `begin_step` itself.
    `latent_hw` is the latent size resolution selectors use (default: the model's sample_size).
    """
    if not configs:
        raise ValueError("apply(target, *configs) needs at least one technique config")
    nets = denoisers(target, models)
    ctrl = controller if controller is not None else Controller()
    saved = [(m, dict(m.attn_processors)) for _, m in nets]
    uses_res = any(getattr(getattr(c, "layers", None), "resolutions", ()) for c in configs)
    with contextlib.ExitStack() as stack:
        try:
            for _, m in nets:
                hw = latent_hw or default_latent_hw(m)
                plan = _plan(m, configs, ctrl, hw)
                stack.callback(
                    m.register_forward_pre_hook(
                        _geometry_hook(ctrl, hw if uses_res else None), with_kwargs=True
                    ).remove
                )
                current = m.attn_processors
                for name, proc in plan.items():
                    _inherit_backend(proc, current[f"{name}.processor"])
                    m.get_submodule(name).set_processor(proc)
            if controller is None and not isinstance(target, torch.nn.Module):
                stack.enter_context(ctrl.attach(target))
            yield ctrl
        finally:
            for m, procs in saved:
                m.set_attn_processor(dict(procs))  # the exact previous objects; it pops, so a fresh dict


def _inherit_backend(proc: Any, prev: Any) -> None:
    """Keep the attention backend / context-parallel config the replaced processor was given
    (model.set_attention_backend, enable_parallelism), so installing a technique never drops them."""
    for attr in ("_attention_backend", "_parallel_config"):
        value = getattr(prev, attr, None)
        if value is not None and getattr(proc, attr, None) is None:
            setattr(proc, attr, value)


def _geometry_hook(ctrl: Controller, selected_hw: tuple[int, int] | None) -> Callable[..., None]:
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        geo = input_geometry(module, args, kwargs)
        if (
            selected_hw is not None
            and geo["latent_hw"] is not None
            and tuple(geo["latent_hw"]) != selected_hw
        ):
            raise ValueError(
                f"layers were selected by resolution for a {selected_hw[0]}x{selected_hw[1]} latent, "
                f"but this call has {geo['latent_hw'][0]}x{geo['latent_hw'][1]}; pass "
                f"latent_hw={tuple(geo['latent_hw'])} to apply(...)."
            )
        ctrl.observe(geo["latent_hw"], geo["grid"])

    return hook


# -- a core technique: our processor with no control (identity / explicit-path checks, debugging) --
@dataclass(frozen=True)
class Passthrough:
    """Install the bare `ControlledProcessor`: stock results; `path="explicit"` forces the
    explicit-softmax path on every selected layer (used by the identity tests)."""

    layers: Select = Select()
    path: Literal["auto", "explicit"] = "auto"  # auto: SDPA/dispatch fast path; explicit: fp32 softmax


@register_technique(Passthrough)
def _install_passthrough(config: Passthrough, sites: Sequence[Site], ctrl: Controller) -> Mapping[str, Any]:
    return {s.name: ControlledProcessor(s, ctrl, path=config.path) for s in sites}
