"""Per-run state that processors read: step, timestep, branch labels, geometry, mode and stores.

The pipeline tells the controller where it is; processors only ask (prompt-to-prompt's controller,
with the loop announcing each step explicitly). Our pipelines call the verbs on visible lines:

    >>> ctrl = Controller()
    >>> ctrl.begin_run(num_steps=2, latent_hw=(64, 64))
    >>> for i, t in enumerate([999, 499]):
    ...     ctrl.begin_step(i, t)
    ...     ctrl.set_branch(("uncond", "cond"))        # the rows of the batched CFG call
    >>> ctrl.end_run()

`Controller.attach(pipe)` drives the same verbs from a *stock* Diffusers pipeline: steps are counted
by `scheduler.step` calls (exact for Wan's two B=1 calls per step and for PNDM's repeated
timesteps), the run starts at `scheduler.set_timesteps`, and batch rows are labelled by matching
the denoiser's `encoder_hidden_states` rows against what `pipe.encode_prompt` returned.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch

from .kernels import warn_once

Tensor = torch.Tensor
_MISSING = object()


class Controller:
    """Run/step/branch state shared by the processors of one `apply(...)` (or one pipeline)."""

    def __init__(self, mode: str = "denoise") -> None:
        self.mode = mode  # "denoise" | "guide" | ... : a technique's named phase, set by its pipeline
        self.stores: dict[str, Any] = {}  # technique name -> recorded data (attention maps, queries, ...)
        # counts of this run (cleared by begin_run): which path each call took per technique
        # ("sage.kernel", "sage.stock", ...) and kernel choices / SDPA fallbacks ("sage.fallback.mask")
        self.stats: Counter[str] = Counter()
        self.step: int | None = None
        self.timestep: float | None = None
        self.num_steps: int | None = None
        self.latent_hw: tuple[int, int] | None = None
        self.grid: tuple[int, int, int] | None = None  # (frames, h, w) tokens of the current denoiser call
        self.branch: tuple[str | None, ...] | None = (
            None  # label per chunk of batch rows, e.g. ("uncond", "cond")
        )
        self.in_run = False
        self.loop_driven = False  # a pipeline's own loop announces steps and branches (see driven_by_loop)

    # -- verbs the pipeline (or `attach`) calls -------------------------------------------------
    def begin_run(self, num_steps: int | None = None, latent_hw: tuple[int, int] | None = None) -> None:
        """Start a sampling run of `num_steps` on a latent of `latent_hw` (h, w)."""
        self.in_run, self.num_steps, self.step, self.timestep = True, num_steps, None, None
        self.stats.clear()
        if latent_hw is not None:
            self.latent_hw = (int(latent_hw[0]), int(latent_hw[1]))

    def begin_step(self, index: int, timestep: float | Tensor) -> None:
        """Announce denoising step `index` (0-based) at scheduler timestep `timestep`."""
        if isinstance(timestep, Tensor):
            timestep = float(timestep.flatten()[0])
        self.step, self.timestep = int(index), float(timestep)

    def set_branch(self, labels: tuple[str | None, ...] | None) -> None:
        """Label the batch rows of the next denoiser call, one label per equal chunk:
        ("uncond", "cond") for a batched CFG call, ("cond",) for a single-branch call."""
        self.branch = None if labels is None else tuple(labels)

    def end_run(self) -> None:
        self.in_run = False

    def observe(self, latent_hw: tuple[int, int] | None, grid: tuple[int, int, int] | None) -> None:
        """Geometry of the current denoiser call (set by the forward pre-hook `apply` installs)."""
        if latent_hw is not None:
            self.latent_hw = (int(latent_hw[0]), int(latent_hw[1]))
        self.grid = grid

    def row_labels(self, batch: int) -> tuple[str | None, ...] | None:
        """Label of each of `batch` rows (each chunk label repeated batch // len(branch) times)."""
        if not self.branch or batch % len(self.branch):
            return None
        per = batch // len(self.branch)
        return tuple(lab for lab in self.branch for _ in range(per))

    @contextlib.contextmanager
    def driven_by_loop(self) -> Iterator[Controller]:
        """For a pipeline whose loop announces steps and branches itself: meanwhile the drivers of
        stock pipelines (`attach`, `processors(pipe, ...)`) leave this controller alone, so installing
        a technique on such a pipeline with `apply(pipe, ...)` cannot relabel its rows."""
        previous, self.loop_driven = self.loop_driven, True
        try:
            yield self
        finally:
            self.loop_driven = previous

    # -- driving from a stock pipeline ----------------------------------------------------------
    @contextlib.contextmanager
    def attach(self, pipe: Any) -> Iterator[Controller]:
        """Drive this controller from a stock Diffusers pipeline for the duration of the block.

        Wraps `scheduler.set_timesteps` (a run starts), `scheduler.step` (a step ends),
        `pipe.encode_prompt` (which embeddings are cond / uncond) and registers a forward pre-hook
        on every denoiser (step + branch announcement). Everything is removed on exit.
        """
        driver = _StockDriver(self, pipe)
        try:
            driver.install()
            yield self
        finally:
            driver.remove()
            self.end_run()


class _StockDriver:
    """The hooks behind `Controller.attach`; one instance per attached pipeline."""

    def __init__(self, ctrl: Controller, pipe: Any) -> None:
        self.ctrl, self.pipe = ctrl, pipe
        self.sched = pipe.scheduler
        self.denoisers = [
            m
            for m in (getattr(pipe, n, None) for n in ("unet", "transformer", "transformer_2"))
            if isinstance(m, torch.nn.Module)
        ]
        if not self.denoisers:
            raise ValueError(f"{type(pipe).__name__} has no unet/transformer/transformer_2 to attach to.")
        self.handles: list[Any] = []
        self.patched: list[tuple[Any, str, Any]] = []  # (object, method name, watcher)
        self.pending_run = False
        self.steps_done = 0  # scheduler.step calls since set_timesteps
        self.announced = -1
        self.embeds: dict[str, list[Tensor]] = {"cond": [], "uncond": []}
        self.denoised = False  # the denoiser ran since the last encode_prompt

    def install(self) -> None:
        self._patch(self.sched, "set_timesteps", self._after_set_timesteps)
        self._patch(self.sched, "step", self._after_step)
        if callable(getattr(self.pipe, "encode_prompt", None)):
            self._patch(self.pipe, "encode_prompt", self._after_encode)
        for m in self.denoisers:
            self.handles.append(m.register_forward_pre_hook(self._pre_forward, with_kwargs=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for obj, name, after in self.patched:
            _unwatch(obj, name, after)
        self.handles, self.patched = [], []

    def _patch(self, obj: Any, name: str, after: Any) -> None:
        _watch(obj, name, after)
        self.patched.append((obj, name, after))


    def _after_set_timesteps(self, out: Any, args: tuple, kwargs: dict) -> None:
        self.ctrl.end_run()
        self.pending_run, self.steps_done, self.announced = True, 0, -1

    def _after_step(self, out: Any, args: tuple, kwargs: dict) -> None:
        self.steps_done += 1

    def _after_encode(self, out: Any, args: tuple, kwargs: dict) -> None:
        """Remember cond/uncond embeddings. Pipelines whose encode_prompt takes `negative_prompt`
        return (prompt_embeds, negative_prompt_embeds, ...); the others (Flux) are called once for the
        prompt and, with true CFG, again for the negative prompt."""
        if not isinstance(out, tuple) or not isinstance(out[0], Tensor):
            return
        if self.denoised:  # a new generation: forget the previous prompts
            self.embeds, self.denoised = {"cond": [], "uncond": []}, False
        if "negative_prompt" in inspect.signature(self.pipe.encode_prompt).parameters:
            self.embeds["cond"].append(out[0])
            if len(out) > 1 and isinstance(out[1], Tensor):
                self.embeds["uncond"].append(out[1])
        else:
            self.embeds["uncond" if self.embeds["cond"] else "cond"].append(out[0])

    def _pre_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ctrl = self.ctrl
        if ctrl.loop_driven:
            return  # the pipeline's own loop announces (Controller.driven_by_loop)
        self.denoised = True
        if self.pending_run or not ctrl.in_run:
            n = len(self.sched.timesteps) if getattr(self.sched, "timesteps", None) is not None else None
            ctrl.begin_run(num_steps=n)
            self.pending_run = False
        i = self.steps_done
        if i != self.announced:
            ts = getattr(self.sched, "timesteps", None)
            t = (
                ts[i]
                if ts is not None and i < len(ts)
                else (args[1] if len(args) > 1 else kwargs.get("timestep"))
            )
            ctrl.begin_step(i, t)
            self.announced = i
        ehs = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        ctrl.set_branch(self._labels(ehs))

    def _labels(self, ehs: Tensor | None) -> tuple[str | None, ...] | None:
        """Label each row of the denoiser's text embeddings by which encode_prompt output it equals."""
        if not isinstance(ehs, Tensor) or ehs.device.type == "meta":
            return None
        labels = []
        for row in ehs:
            hits = [
                lab
                for lab, ts in self.embeds.items()
                if any(r.shape == row.shape and torch.equal(r.to(row.dtype), row) for t in ts for r in t)
            ]
            labels.append(hits[0] if len(hits) == 1 else None)
        if None in labels:
            warn_once(
                f"branch:{type(self.pipe).__name__}",
                f"Controller.attach could not tell cond from uncond rows for {type(self.pipe).__name__} "
                "(embeddings not from encode_prompt, or prompt == negative prompt); those rows are "
                "labelled None. Call controller.set_branch(...) from your loop to label them.",
            )
        return tuple(labels)


_WATCHERS = "_attn_processors_watchers"  # attribute of our wrapper: callbacks run after the method


def _watch(obj: Any, name: str, after: Any) -> None:
    """Run `after(out, args, kwargs)` after every `obj.name(...)` call.

    One wrapper per (object, method) holds every watcher, so drivers can be removed in any order
    (nested `apply` blocks, or plain-path processors replaced while another set is installed)."""
    current = obj.__dict__.get(name, _MISSING)
    if current is not _MISSING and hasattr(current, _WATCHERS):
        getattr(current, _WATCHERS).append(after)
        return
    original = getattr(obj, name)
    watchers = [after]

    @functools.wraps(original)  # keeps the signature: retrieve_timesteps inspects set_timesteps
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        for watcher in list(watchers):
            watcher(out, args, kwargs)
        return out

    setattr(wrapped, _WATCHERS, watchers)
    wrapped._attn_processors_previous = current  # type: ignore[attr-defined]
    setattr(obj, name, wrapped)


def _unwatch(obj: Any, name: str, after: Any) -> None:
    """Remove one watcher; the last one out puts back what was there before the first came."""
    current = obj.__dict__.get(name, _MISSING)
    watchers = getattr(current, _WATCHERS, None)
    if watchers is None:
        return  # someone replaced the method since; leave theirs alone
    if after in watchers:
        watchers.remove(after)
    if not watchers:
        previous = current._attn_processors_previous
        if previous is _MISSING:
            obj.__dict__.pop(name, None)  # back to the class method
        else:
            setattr(obj, name, previous)
