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

Two techniques on one layer compose (`compose`): `wants` is any-of; q/k/v, logits and probs edits
run in install order, each only on the calls its own processor wants; at most one of them may
choose the kernel, and a kernel cannot be combined with logits/probs edits on the same layer
(ValueError at install time: put them on different layers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from .controller import Controller
from .families import ADAPTERS, DISPATCH_FAMILIES, Projected
from .kernels import Attend, explicit_attention, sdpa
from .sites import Site

Tensor = torch.Tensor
Path = Literal["auto", "explicit"]  # auto: explicit softmax only where a hook needs it; explicit: always


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

    def __init__(self, site: Site, controller: Controller, *, path: Path = "auto") -> None:
        if path not in ("auto", "explicit"):
            raise ValueError(f"path must be 'auto' or 'explicit', got {path!r}")
        if site.family not in ADAPTERS:
            raise ValueError(
                f"no adapter for family {site.family!r} of {site.name}; known: {sorted(ADAPTERS)}"
            )
        self.site, self.controller, self.path = site, controller, path
        self._project = ADAPTERS[site.family]

    # -- hooks ------------------------------------------------------------------------------------
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
        cross = encoder_hidden_states is not None
        forced = self.path == "explicit"
        if not forced and not self.wants(call):
            return p.finish(self._with_added(self._fast(p.q, p.k, p.v, p.mask, cross), p, None))
        if self._parallel_config is not None:
            raise ValueError(
                f"{type(self).__name__} on {self.site.name}: context parallelism only reaches the "
                "stock fast path; disable parallelism or leave this layer out of the selection."
            )
        q, k, v = self.edit_qkv(p.q, p.k, p.v, call)
        kern = self.kernel(call)
        if forced or self.edits_scores(call):
            out = explicit_attention(
                q,
                k,
                v,
                mask=p.mask,
                edit_logits=lambda s: self.edit_logits(s, call),
                edit_probs=lambda a: self.edit_probs(a, call),
            )
        elif kern is not None:
            out = kern(q, k, v, mask=p.mask, scale=None)
        else:
            out = self._fast(q, k, v, p.mask, cross)
        return p.finish(self._with_added(out, p, kern, q=q))

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
    """Two or more technique processors on one layer, combined by the rule in the module docstring."""

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
        scorers = [type(p).__name__ for p in parts if p.may_edit_scores()]
        if len(kernels) > 1:
            raise ValueError(
                f"{first.site.name}: {kernels} each choose the attention kernel; install them on "
                "different layers (Select) or build one kernel that does both."
            )
        if kernels and scorers:
            raise ValueError(
                f"{first.site.name}: {kernels[0]} chooses the kernel but {scorers} edit logits/probs "
                "(explicit softmax); install them on different layers."
            )
        self.parts, self.names = list(parts), names

    def wants(self, call: CallInfo) -> bool:
        return any(p.wants(call) for p in self.parts)

    def _active(self, call: CallInfo) -> list[ControlledProcessor]:
        return [p for p in self.parts if p.wants(call)]

    def edit_qkv(self, q: Tensor, k: Tensor, v: Tensor, call: CallInfo) -> tuple[Tensor, Tensor, Tensor]:
        for p in self._active(call):
            q, k, v = p.edit_qkv(q, k, v, call)
        return q, k, v

    def edit_logits(self, logits: Tensor, call: CallInfo) -> Tensor:
        for p in self._active(call):
            logits = p.edit_logits(logits, call)
        return logits

    def edit_probs(self, probs: Tensor, call: CallInfo) -> Tensor:
        for p in self._active(call):
            probs = p.edit_probs(probs, call)
        return probs

    def kernel(self, call: CallInfo) -> Attend | None:
        for p in self._active(call):
            if (kern := p.kernel(call)) is not None:
                return kern
        return None

    def edits_scores(self, call: CallInfo) -> bool:
        return any(p.edits_scores(call) for p in self._active(call))

    def may_edit_scores(self) -> bool:
        return any(p.may_edit_scores() for p in self.parts)

    def __repr__(self) -> str:
        return f"ComposedProcessor({self.site.name!r}, {self.names})"


def compose(existing: ControlledProcessor, new: ControlledProcessor) -> ComposedProcessor:
    """Combine two technique processors on one layer (existing first); raises on a kernel conflict."""
    if existing.site.name != new.site.name:
        raise ValueError(
            f"cannot compose processors of different layers: {existing.site.name} vs {new.site.name}"
        )
    return ComposedProcessor([existing, new])
