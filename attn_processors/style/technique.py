"""Style injection as processors on the core's hooks (IlluSign and its peers, `StyleConfig.mode`).

The pipeline (pipelines/style_transfer.py) runs every donor as a row of the same batch and labels
the rows "<role>.<group>" (`rows.row_labels`); it sets `controller.mode` to "swap" for the
injected pass of stage 1, "fuse" for stage 2, anything else for the plain pass. Processors only ask:

- `edit_qkv` (stage 1, paper §3.2 "Q_geo = gamma Q_img + delta Q_edges; K, V <- style"): the output
  rows' Q is fused (`maths.fuse_queries`), their K, V replaced by the style row's (StyleAligned:
  concatenated, Q and K AdaIN'd, `maths.adain`); on refresh steps they take the edges row's Q, K, V.
- `edit_logits`: StyleID's temperature on the output rows. `edit_probs`: the attention contrast.
- stage 2 ("fuse"): the queries are blended by m (`fusion`) in `edit_qkv`; for the probability-blend
  modes (mean / max / min) `edit_qkv` gives the output Q1 and keeps A2 = softmax(Q2 Ks^T) for this
  call only, and `edit_probs` blends it into the output rows' A1.

Donor rows are never changed (StyleAligned's other rows see their own K/V twice, which leaves softmax
attention unchanged up to rounding), so their trajectories stay those of their inversions.

    >>> from attn_processors.core import Controller, apply
    >>> with apply(pipe.unet, StyleConfig(), controller=ctrl):       # doctest: +SKIP
    ...     ...   # the loop of pipelines/style_transfer.py
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.controller import Controller
from ..core.processor import CallInfo, ControlledProcessor, Need
from ..core.registry import register_technique
from ..core.sites import Site
from .config import StyleConfig, default_sites
from .fusion import PROB_MODES, blend_probs, combine_masks, dissimilarity, resize_mask, softmax_probs
from .maths import adain, contrast, fuse_queries
from .rows import groups

STORE = "style"  # key of the StyleState in controller.stores
SWAP, FUSE = "swap", "fuse"  # controller.mode of the injected passes of stage 1 and stage 2
Tensor = torch.Tensor
Rows = Mapping[int, Mapping[str, int]]  # {group: {role: batch row}}


@dataclass
class StyleState:
    """What the stage-2 loop announces, read by every processor of one controller.

    `mask`: an explicit blend mask m [G or 1, h, w] (any resolution; resized nearest per layer) that
    overrides m_dis and the hands; `hands`: hand masks m1, m2 [G or 1, h, w]. `edits` counts
    (step, layer, what) for tests and reports.
    """

    mask: Tensor | None = None
    hands: tuple[Tensor, ...] = ()
    edits: Counter[tuple[int, str, str]] = field(default_factory=Counter)

    def begin_run(self, mask: Tensor | None = None, hands: Sequence[Tensor] = ()) -> None:
        self.mask, self.hands, self.edits = mask, tuple(hands), Counter()


def _needed_roles(config: StyleConfig, phase: str, step: int, num_steps: int) -> set[str]:
    """Donor rows a group must have for this call (raises later, naming them, when absent)."""
    if phase == FUSE:
        return {"q1", "q2", "style"}
    if config.refresh(step, num_steps):
        return {"edges"}
    roles = {"style"}
    if config.w_img != 0:
        roles.add("content")
    if config.edge_stream == "edges" and config.w_edge != 0:
        roles.add("edges")
    return roles


class StyleProcessor(ControlledProcessor):
    """One self-attention layer: the output rows attend to the style (stage 1) or a fusion (stage 2)."""

    stats_key = "style"

    def __init__(self, site: Site, controller: Controller, config: StyleConfig) -> None:
        super().__init__(site, controller)
        self.config = config.resolved()
        self.state: StyleState = controller.stores.setdefault(STORE, StyleState())
        # stage-2 probability modes: (the call, {output row: (A2, m)}), made by edit_qkv and read by
        # edit_probs within that same call; nothing survives the call
        self._pending: tuple[CallInfo, dict[int, tuple[Tensor, Tensor]]] | None = None

    def needs(self) -> tuple[Need, ...]:
        return ("step", "branch")

    # -- which calls ------------------------------------------------------------------------------
    def _groups(self, call: CallInfo) -> dict[int, dict[str, int]]:
        """{group: {role: row}} of the groups with an output row; checks their donors."""
        found = {g: r for g, r in groups(call.labels or ()).items() if "out" in r}
        need = _needed_roles(self.config, call.mode, call.step or 0, self._num_steps(call))
        for g, r in found.items():
            if missing := sorted(need - set(r)):
                raise ValueError(
                    f"{self.site.name}: StyleConfig(mode={self.config.mode!r}) in the {call.mode!r} pass "
                    f"needs rows {[f'{m}.{g}' for m in missing]} beside 'out.{g}' (got {call.labels}); "
                    "label the batch with attn_processors.style.row_labels")
        return found

    def _num_steps(self, call: CallInfo) -> int:
        n = call.controller.num_steps
        if n is None:
            raise ValueError(f"{self.site.name}: the run length is unknown; call "
                             "controller.begin_run(num_steps=...) before the loop")
        return n

    def wants(self, call: CallInfo) -> bool:
        if call.mode not in (SWAP, FUSE) or call.step is None:
            return False
        if not self.config.active(call.step, self._num_steps(call)):
            return False
        return bool(self._groups(call))

    def edits_scores(self, call: CallInfo) -> bool:
        """The explicit softmax only where contrast, temperature or a probability blend acts."""
        c = self.config
        if call.mode == FUSE:
            return c.stage2 in PROB_MODES or c.contrast != 1.0
        return c.temperature != 1.0 or c.contrast != 1.0

    def may_edit_scores(self) -> bool:
        return True

    # -- hooks ------------------------------------------------------------------------------------
    def edit_qkv(self, q: Tensor, k: Tensor, v: Tensor, call: CallInfo) -> tuple[Tensor, Tensor, Tensor]:
        rows = self._groups(call)
        if call.mode == FUSE:
            return self._fuse_qkv(q, k, v, call, rows)
        if self.config.mode == "style_aligned":
            return self._shared_qkv(q, k, v, call, rows)
        q, k, v = q.clone(), k.clone(), v.clone()  # (B, H, N, D); inputs stay untouched
        step, n = call.step or 0, self._num_steps(call)
        for r in rows.values():
            o = r["out"]
            if self.config.refresh(step, n):  # structure refresh: the output follows the edges row
                e = r["edges"]
                q[o], k[o], v[o] = q[e], k[e], v[e]
                self._note(call, "refresh")
                continue
            if self.config.w_img != 0 or self.config.edge_stream == "edges":
                stream = q[r["edges"]] if self.config.edge_stream == "edges" else q[o]
                img = q[r["content"]] if self.config.w_img != 0 else torch.zeros_like(stream)
                q[o] = fuse_queries(img, stream, self.config.w_img, self.config.w_edge)
            k[o], v[o] = k[r["style"]], v[r["style"]]
            self._note(call, "swap")
        return q, k, v

    def _shared_qkv(self, q: Tensor, k: Tensor, v: Tensor, call: CallInfo, rows: Rows
                    ) -> tuple[Tensor, Tensor, Tensor]:
        """StyleAligned: each output row attends to [own K ++ style K]; every other row to its own K
        twice (the same softmax attention). AdaIN over tokens per head and channel on Q and K."""
        q = q.clone()
        k2, v2 = torch.cat([k, k], dim=2), torch.cat([v, v], dim=2)  # (B, H, 2N, D)
        n = k.shape[2]
        for r in rows.values():
            o, s = r["out"], r["style"]
            k_o = k[o]
            if self.config.adain_qk:
                q[o] = adain(q[o], q[s], dim=(1,))  # (H, N, D): statistics over the N tokens
                k_o = adain(k[o], k[s], dim=(1,))
            k2[o, :, :n], k2[o, :, n:], v2[o, :, n:] = k_o, k[s], v[s]
            self._note(call, "share")
        return q, k2, v2

    def _fuse_qkv(self, q: Tensor, k: Tensor, v: Tensor, call: CallInfo, rows: Rows
                  ) -> tuple[Tensor, Tensor, Tensor]:
        """Stage 2: Q_out = (1 - m) Q1 + m Q2 (or Q1 / Q2 alone); K, V <- style. Probability modes:
        Q_out = Q1, and A2 with m kept for `edit_probs`."""
        q, k, v = q.clone(), k.clone(), v.clone()
        pending: dict[int, tuple[Tensor, Tensor]] = {}
        for g, r in rows.items():
            q1, q2 = q[r["q1"]][None], q[r["q2"]][None]  # (1, H, N, D)
            if self.config.stage2 in PROB_MODES:
                fused = q1
                m = self.blend_mask(q1, q2, call, g)  # (1, N)
                pending[r["out"]] = (softmax_probs(q2, k[r["style"]][None]), m)  # A2 (1, H, N, N)
            elif self.config.stage2 == "start":
                fused = q1
            elif self.config.stage2 == "end":
                fused = q2
            else:
                m = self.blend_mask(q1, q2, call, g)[:, None, :, None]  # (1, 1, N, 1)
                fused = (1 - m) * q1 + m * q2
            q[r["out"]] = fused[0]
            k[r["out"]], v[r["out"]] = k[r["style"]], v[r["style"]]
            self._note(call, "fuse")
        self._pending = (call, pending) if pending else None
        return q, k, v

    def blend_mask(self, q1: Tensor, q2: Tensor, call: CallInfo, group: int = 0) -> Tensor:
        """Stage-2 m [1, N] at this layer: the announced mask, else clip(m_dis + m1 + m2, 0, 1)."""
        hw = call.hw or _square(q1.shape[2], self.site.name)
        pick = (lambda m: m[group:group + 1] if m.dim() == 3 and m.shape[0] > 1 else m)  # noqa: E731
        if self.state.mask is not None:
            return resize_mask(pick(self.state.mask), hw).to(q1.dtype)
        m_dis = dissimilarity(q1, q2, self.config.tau_sim)
        return combine_masks(m_dis, *(resize_mask(pick(h), hw).to(q1.dtype) for h in self.state.hands))

    def edit_logits(self, logits: Tensor, call: CallInfo) -> Tensor:  # [B, H, Nq, Nk] fp32
        if call.mode != SWAP or self.config.temperature == 1.0:
            return logits
        out = [r["out"] for r in self._groups(call).values()]
        logits = logits.clone()
        logits[out] = logits[out] * self.config.temperature
        return logits

    def edit_probs(self, probs: Tensor, call: CallInfo) -> Tensor:  # [B, H, Nq, Nk] fp32
        pending, self._pending = self._pending, None
        fuse = call.mode == FUSE and self.config.stage2 in PROB_MODES
        if not fuse and self.config.contrast == 1.0:
            return probs
        out = [r["out"] for r in self._groups(call).values()]
        probs = probs.clone()
        if fuse:
            if pending is None or pending[0] is not call:
                raise RuntimeError(f"{self.site.name}: stage-2 probabilities without this call's A2")
            for row, (a2, m) in pending[1].items():  # A = (1 - m) A1 + m blend(A1, A2)
                probs[row] = blend_probs(probs[row][None], a2, m, self.config.stage2)[0]
        if self.config.contrast != 1.0:
            probs[out] = contrast(probs[out], self.config.contrast, self.config.contrast_mode)
        return probs

    def _note(self, call: CallInfo, what: str) -> None:
        self.state.edits[(call.step or 0, self.site.name, what)] += 1


def _square(n: int, name: str) -> tuple[int, int]:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{name}: cannot tell the token grid of {n} tokens; call "
                         "controller.begin_run(latent_hw=(h, w)) with the latent size")
    return side, side


@register_technique(StyleConfig)
def _install(config: StyleConfig, sites: Sequence[Site], ctrl: Controller) -> Mapping[str, Any]:
    ctrl.stores.setdefault(STORE, StyleState())
    chosen = ([s for s in sites if s.kind == "self"] if config.layers is not None
              else default_sites(config.mode, sites))
    if not chosen:
        raise ValueError(f"StyleConfig(mode={config.mode!r}, layers={config.layers!r}) picks no "
                         "self-attention layer of this model; widen `layers` (cross-attention is never "
                         "changed), e.g. Select(places=('up',), kinds=('self',))")
    return {s.name: StyleProcessor(s, ctrl, config) for s in chosen}
