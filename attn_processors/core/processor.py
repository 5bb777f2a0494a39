"""ControlledProcessor: the one attention `__call__`; techniques override a few hooks.

How a technique builds on it (a runnable sketch; see attn_processors/core/store.py for a real one):

    import torch
    from dataclasses import dataclass
    from attn_processors.core import (CallInfo, ControlledProcessor, Select, apply, register_technique)

    class TemperatureProcessor(ControlledProcessor):
        '''Sharpen cross-attention in the first `until` steps: S' = S / tau.'''
        def __init__(self, site, controller, tau: float, until: int):
            super().__init__(site, controller)
            self.tau, self.until = tau, until

        def wants(self, call: CallInfo) -> bool:      # False -> the exact stock fast path
            return call.step is not None and call.step < self.until

        def edit_logits(self, logits, call):          # [B, H, Nq, Nk] fp32, pre-softmax
            return logits / self.tau                  # (overriding it turns on the explicit path)

    @dataclass(frozen=True)
    class TemperatureConfig:
        tau: float = 0.5
        until: int = 10
        layers: Select = Select(kinds=("cross",))      # which layers; `apply` selects them

    @register_technique(TemperatureConfig)
    def _install(config, sites, controller):          # -> {site.name: processor}
        return {s.name: TemperatureProcessor(s, controller, config.tau, config.until) for s in sites}

    with apply(pipe, TemperatureConfig(tau=0.5)) as ctrl:   # stock pipe: ctrl is driven for you
        image = pipe("a red cat", num_inference_steps=20).images[0]

Hooks (all optional; each receives a `CallInfo` with site, step, timestep, branch labels per batch
row, text token count/position, token grid):
- `wants(call) -> bool`: False runs the exact stock computation (SDPA, or `dispatch_attention_fn`
  with this processor's `_attention_backend` / `_parallel_config` for Wan and Flux).
- `edit_qkv(q, k, v, call) -> (q, k, v)`: [B, H, N, D] after the family's norms and RoPE.
- `edit_logits(logits, call)` / `edit_probs(probs, call)`: [B, H, Nq, Nk] fp32; overriding either
  runs the explicit-softmax path on the calls this processor wants, and only there.
- `kernel(call) -> attend | None`: an `attend(q, k, v, *, mask=None, scale=None)` kernel to use
  instead of SDPA.

Two techniques on one layer compose (`compose`), decided per call (docs/composition.md):
- the processors that `wants` the call are its active parts (none: the exact stock computation);
- if an active part edits logits/probs on it, the call takes the explicit-softmax path: every active
  part's q/k/v, logits and probs edits run in install order, and no kernel is chosen;
- otherwise the active parts' q/k/v edits run and the one kernel chooser among them (if any) computes
  attention; two kernel choosers on one layer raise at install time (compose kernels inside one
  technique instead, e.g. `TileSparseConfig(kernel=SageConfig(...))`).
A processor with a `stats_key` counts the path each call took for it in `controller.stats`
(`"<key>.path.stock" | ".path.kernel" | ".path.explicit" | ".path.sdpa"`), so a run's report is exact.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from .controller import Controller
from .families import ADAPTERS, DISPATCH_FAMILIES, Projected
from .kernels import Attend, explicit_attention, sdpa
from .sites import Site

Tensor = torch.Tensor
Need = Literal[
    "step",  # the denoising step (and run length): announced by the pipeline or `processors(pipe, ...)`
    "branch",  # the CFG branch label of each batch row ("cond" / "uncond")
    "grid",  # the (frames, h, w) token grid of a video denoiser's input
]
_HOW_TO_DRIVE = (
    "Build the processors with attn_processors.processors(pipe, config) and install them with "
    "pipe.unet.set_attn_processor(...) (or pipe.transformer...), or use `with apply(pipe, config):`; "
    "a loop of your own calls controller.begin_run(...), begin_step(i, t) and set_branch(...)."
)
_NO_ARGUMENTS = (
    "{name}() was called without its site and controller. Diffusers' IP-adapter loader "
    "(load_ip_adapter / unload_ip_adapter) re-creates every installed processor that way: restore "
    "the stock processors first (model.set_attn_processor(attn_processors.stock_processors(model))), "
    "load the adapter, then install the technique again. To build processors yourself use "
    "attn_processors.processors(pipe, config)."
)
Path = Literal["auto", "explicit"]  # auto: explicit softmax only where a hook needs it; explicit: always
Outcome = Literal[
    "stock",  # the processor did not want the call: the stock computation (for it)
    "explicit",  # fp32 softmax with the logits/probs edits
    "kernel",  # the processor's own kernel computed attention
    "sdpa",  # q/k/v edits only (or another part's kernel), then the stock kernel call
]


@dataclass(frozen=True)
class CallInfo:
    """Everything a hook may ask about the current attention call."""

    site: Site
    controller: Controller
    batch: int
    heads: int
    head_dim: int
    q_len: int
    kv_len: int
    text_len: int  # text tokens inside a joint sequence (CogVideoX/Flux first, SD3 last), else 0
    text_pos: str | None  # "first" | "last" | None
    labels: tuple[str | None, ...] | None  # branch label of each batch row, e.g. ("uncond", "cond")
    hw: tuple[int, int] | None  # spatial token grid of the queries (UNet layers), else None
    grid: tuple[int, int, int] | None  # (frames, h, w) tokens of the denoiser input (transformers)

    @property
    def step(self) -> int | None:
        return self.controller.step

    @property
    def timestep(self) -> float | None:
        return self.controller.timestep

    @property
    def mode(self) -> str:
        return self.controller.mode

    @property
    def frames(self) -> int | None:
        return None if self.grid is None else self.grid[0]

    @property
    def tokens_per_frame(self) -> int | None:
        return None if self.grid is None else self.grid[1] * self.grid[2]

    def rows(self, label: str) -> list[int]:
        """Batch rows carrying branch `label` (e.g. "cond"); raises if the branch is unknown."""
        if self.labels is None:
            raise ValueError(
                f"batch rows of {self.site.name} are unlabelled; the pipeline must call "
                "controller.set_branch(...) (Controller.attach does this for stock pipelines)."
            )
        return [i for i, lab in enumerate(self.labels) if lab == label]


@dataclass(frozen=True)
class Route:
    """How one call is computed, decided once per call: the path, the processors whose hooks run on it
    (install order), and the kernel with the processor that chose it."""

    path: Literal["stock", "explicit", "kernel", "sdpa"]
    active: tuple[ControlledProcessor, ...] = ()
    kernel: Attend | None = None
    chooser: ControlledProcessor | None = None

    def outcome(self, part: ControlledProcessor) -> Outcome:
        """What this call was for `part` (counted under its stats_key)."""
        if part not in self.active:
            return "stock"
        if self.path == "kernel":
            return "kernel" if part is self.chooser else "sdpa"
        return "sdpa" if self.path == "stock" else self.path


def route(parts: Sequence[ControlledProcessor], call: CallInfo) -> Route:
    """The per-call composition rule of the module docstring, for one or several processors."""
    active = tuple(p for p in parts if p.wants(call))
    if not active:
        return Route("stock")
    if any(p.edits_scores(call) for p in active):
        return Route("explicit", active)
    for p in active:
        if (kern := p.kernel(call)) is not None:
            return Route("kernel", active, kern, p)
    return Route("sdpa", active)


def _chain(parts: Sequence[ControlledProcessor], hook: str, call: CallInfo) -> Any:
    """`x -> part_n.hook(... part_1.hook(x, call) ..., call)`: score edits in install order."""

    def run(x: Tensor) -> Tensor:
        for part in parts:
            x = getattr(part, hook)(x, call)
        return x

    return run


def _overrides(obj: Any, name: str) -> bool:
    return getattr(type(obj), name) is not getattr(ControlledProcessor, name)


class ControlledProcessor:
    """Base attention processor: exact stock behaviour plus hooks a technique overrides.

    Works with `apply(...)` and directly: `model.set_attn_processor({s.key: P(s, ctrl) for s in
    build_sites(model)})`.
    """

    _attention_backend = None  # written by model.set_attention_backend(...)
    _parallel_config = None  # written by model.enable_parallelism(...)
    _controlled = True  # marks our processors for families.family_of
    stats_key: ClassVar[str | None] = None  # e.g. "sage": count each call's Outcome in controller.stats

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A technique's own `__init__` called with no arguments raises `_NO_ARGUMENTS` too."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def checked(self: ControlledProcessor, *args: Any, **kw: Any) -> None:
            if not args and not kw:
                raise TypeError(_NO_ARGUMENTS.format(name=cls.__name__))
            init(self, *args, **kw)

        cls.__init__ = checked  # type: ignore[method-assign]

    def __init__(
        self, site: Site | None = None, controller: Controller | None = None, *, path: Path = "auto"
    ) -> None:
        if site is None or controller is None:
            raise TypeError(_NO_ARGUMENTS.format(name=type(self).__name__))
        if path not in ("auto", "explicit"):
            raise ValueError(f"path must be 'auto' or 'explicit', got {path!r}")
        if site.family not in ADAPTERS:
            raise ValueError(
                f"no adapter for family {site.family!r} of {site.name}; known: {sorted(ADAPTERS)}"
            )
        self.site, self.controller, self.path = site, controller, path
        self._project = ADAPTERS[site.family]

    # -- hooks ------------------------------------------------------------------------------------
    def needs(self) -> tuple[Need, ...]:
        """What this processor cannot act without; a call that lacks it raises, never a silent no-op."""
        return ()

    def wants(self, call: CallInfo) -> bool:
        """Whether this call is changed at all; False -> the exact stock computation."""
        return True

    def edit_qkv(self, q: Tensor, k: Tensor, v: Tensor, call: CallInfo) -> tuple[Tensor, Tensor, Tensor]:
        return q, k, v

    def edit_logits(self, logits: Tensor, call: CallInfo) -> Tensor:
        return logits

    def edit_probs(self, probs: Tensor, call: CallInfo) -> Tensor:
        return probs

    def kernel(self, call: CallInfo) -> Attend | None:
        return None

    def edits_scores(self, call: CallInfo) -> bool:
        """Whether this call needs logits/probs (the explicit-softmax path)."""
        return self.may_edit_scores()

    def may_edit_scores(self) -> bool:
        """Whether this processor ever edits logits/probs (class-level; used to check composition)."""
        return any(_overrides(self, n) for n in ("edit_logits", "edit_probs", "edits_scores"))

    # -- the one call ----------------------------------------------------------------------------
    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        rotary_emb: Any = None,  # Wan and Flux pass RoPE positionally in this slot
        *,
        temb: Tensor | None = None,  # UNet spatial_norm (VAE)
        image_rotary_emb: Any = None,  # CogVideoX passes RoPE by this keyword
    ) -> Any:
        rope = rotary_emb if rotary_emb is not None else image_rotary_emb
        p = self._project(attn, hidden_states, encoder_hidden_states, attention_mask, rope, temb)
        call = self._call_info(p)
        self._require(call)
        cross = encoder_hidden_states is not None
        plan = self.route(call)
        self._count(plan)
        if plan.path == "stock":
            return p.finish(self._with_added(self._fast(p.q, p.k, p.v, p.mask, cross), p, None))
        if self._parallel_config is not None:
            raise ValueError(
                f"{type(self).__name__} on {self.site.name}: context parallelism only reaches the "
                "stock fast path; disable parallelism or leave this layer out of the selection."
            )
        q, k, v = p.q, p.k, p.v
        for part in plan.active:
            q, k, v = part.edit_qkv(q, k, v, call)
        if plan.path == "explicit":
            out = explicit_attention(
                q, k, v, mask=p.mask, edit_logits=_chain(plan.active, "edit_logits", call),
                edit_probs=_chain(plan.active, "edit_probs", call),
            )
        elif plan.kernel is not None:
            out = plan.kernel(q, k, v, mask=p.mask, scale=None)
        else:
            out = self._fast(q, k, v, p.mask, cross)
        return p.finish(self._with_added(out, p, plan.kernel, q=q))

    def _require(self, call: CallInfo) -> None:
        missing = [
            need for need in self.needs()
            if (need == "step" and call.step is None) or (need == "branch" and call.labels is None)
            or (need == "grid" and call.grid is None)
        ]
        if missing:
            raise ValueError(
                f"{type(self).__name__} on {self.site.name} cannot act: nobody told its controller the "
                f"{' and the '.join(missing)} of this call. {_HOW_TO_DRIVE}"
            )

    def route(self, call: CallInfo) -> Route:
        """How this call is computed (one decision per call; `wants` is asked once per processor)."""
        return Route("explicit", (self,)) if self.path == "explicit" else route((self,), call)

    def _count(self, plan: Route) -> None:
        if self.stats_key is not None:
            self.controller.stats[f"{self.stats_key}.path.{plan.outcome(self)}"] += 1

    def _fast(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, cross: bool, parallel: bool = True
    ) -> Tensor:
        """The stock kernel call on [B, H, N, D] (dispatch families get (B, N, H, D) views)."""
        if self.site.family not in DISPATCH_FAMILIES:
            return sdpa(q, k, v, mask=mask)
        # Wan passes its parallel config to self-attention only; Flux to every call.
        pc = self._parallel_config if parallel and (self.site.family == "flux" or not cross) else None
        out = dispatch_attention_fn(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            parallel_config=pc,
        )
        return out.transpose(1, 2)

    def _with_added(self, out: Tensor, p: Projected, kern: Attend | None, q: Tensor | None = None) -> Tensor:
        """Wan I2V: attention of the queries over the image K/V, added to the text attention output."""
        if p.added_kv is None:
            return out
        q = p.q if q is None else q
        k_img, v_img = p.added_kv
        extra = kern(q, k_img, v_img) if kern is not None else self._fast(q, k_img, v_img, None, True, False)
        return out + extra.to(out.dtype)

    def _call_info(self, p: Projected) -> CallInfo:
        b, h, nq, d = p.q.shape
        ctrl = self.controller
        hw = p.hw
        if hw is None and self.site.res_factor is not None and ctrl.latent_hw is not None:
            hw = self.site.resolution(ctrl.latent_hw)
            if hw[0] * hw[1] != nq:
                hw = None  # latent size announced for another model/size: do not guess
        text_len, text_pos, grid = p.text_len, p.text_pos, ctrl.grid
        if self.site.place == "single" and grid is not None and nq > grid[0] * grid[1] * grid[2]:
            # Flux single-stream blocks get [text, image] already concatenated: text = the rest
            text_len, text_pos = nq - grid[0] * grid[1] * grid[2], "first"
        return CallInfo(
            self.site, ctrl, b, h, d, nq, p.k.shape[2], text_len, text_pos, ctrl.row_labels(b), hw, grid
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.site.name!r}, path={self.path!r})"


class ComposedProcessor(ControlledProcessor):
    """Two or more technique processors on one layer, combined per call by the rule in the module
    docstring: `route` picks the active parts once per call and `__call__` runs their hooks."""

    def __init__(self, parts: Sequence[ControlledProcessor]) -> None:
        parts = [q for p in parts for q in (p.parts if isinstance(p, ComposedProcessor) else [p])]
        first = parts[0]
        super().__init__(
            first.site,
            first.controller,
            path="explicit" if any(p.path == "explicit" for p in parts) else "auto",
        )
        names = [type(p).__name__ for p in parts]
        kernels = [type(p).__name__ for p in parts if _overrides(p, "kernel")]
        if len(kernels) > 1:
            raise ValueError(
                f"{first.site.name}: {kernels} each choose the attention kernel, and a call runs one "
                "kernel. Compose them inside one technique, e.g. "
                "TileSparseConfig(kernel=SageConfig(...)) runs the Sage kernel on the tile-sparse kept "
                "keys; or install them on different layers (Select)."
            )
        self.parts, self.names = list(parts), names

    def route(self, call: CallInfo) -> Route:
        plan = route(self.parts, call)
        return Route("explicit", plan.active) if self.path == "explicit" else plan

    def _count(self, plan: Route) -> None:
        for part in self.parts:
            part._count(plan)

    def wants(self, call: CallInfo) -> bool:
        return any(p.wants(call) for p in self.parts)

    def needs(self) -> tuple[Need, ...]:
        return tuple(dict.fromkeys(n for p in self.parts for n in p.needs()))

    def may_edit_scores(self) -> bool:
        return any(p.may_edit_scores() for p in self.parts)

    def __repr__(self) -> str:
        return f"ComposedProcessor({self.site.name!r}, {self.names})"


def compose(existing: ControlledProcessor, new: ControlledProcessor) -> ComposedProcessor:
    """Combine two technique processors on one layer (existing first); raises when both choose kernels."""
    if existing.site.name != new.site.name:
        raise ValueError(
            f"cannot compose processors of different layers: {existing.site.name} vs {new.site.name}"
        )
    return ComposedProcessor([existing, new])
