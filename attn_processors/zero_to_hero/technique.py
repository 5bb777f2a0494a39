"""Zero-to-Hero's two attention edits as processors on the core's hooks (§4.2-4.4).

- Attention map filtering (AMF) on ``edit_logits``: the pre-softmax self-attention map of each
  evaluation is replaced by its filtered version (``filtering.filter_map``) in the same forward
  pass (ours: the paper says the filter acts on the pre-softmax maps, not which pass uses them).
- Mutual self-attention (MSA) on ``edit_qkv``: in the chosen decoder layers, on the MSA range, each
  target row takes the K/V of the source row of its CFG half (``mutual.swap_kv``). Where both act,
  the filter sees the logits of the swapped K (ours).

The pipeline (pipelines/zero123.py) announces the step and timestep (``controller.begin_step``), the
row labels (``controller.set_branch(mutual.branch_labels(...))``) and the resampling iteration
(``controller.stores["zero_to_hero"].begin_iter(r, R_t)``); processors only ask.

    >>> from attn_processors.core import apply
    >>> with apply(pipe.unet, ZeroToHeroConfig(), controller=ctrl):       # doctest: +SKIP
    ...     ...   # the explicit-timestep loop of pipelines/zero123.py
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.controller import Controller
from ..core.processor import CallInfo, ControlledProcessor
from ..core.registry import register_technique
from ..core.sites import Site
from .config import ZeroToHeroConfig
from .filtering import FilterStep, filter_map
from .mutual import SOURCE, TARGET, source_pairs, swap_kv
from .schedule import in_range

STORE = "zero_to_hero"  # key of the ZeroToHeroState in controller.stores
Tensor = torch.Tensor


@dataclass
class ZeroToHeroState:
    """Per-run filter state shared by the processors of one controller.

    ``run[layer]``: the step's pooled filtered maps; ``history[layer]``: H; both [B, H, Nq, Nk] fp32
    (two extra logit tensors per filtered layer; at a 32x32 latent, 8 heads and a batch of 4 that is
    about 128 MB per full-resolution layer each). ``edits`` counts (step, layer, "amf" | "msa").
    """

    iteration: int = 0  # r, 0-based, within the current step
    iterations: int = 1  # R_t of the current step
    run: dict[str, Tensor] = field(default_factory=dict)
    history: dict[str, Tensor] = field(default_factory=dict)
    edits: Counter[tuple[int, str, str]] = field(default_factory=Counter)

    def begin_run(self) -> None:
        """Forget every map and count (a new sample)."""
        self.iteration, self.iterations = 0, 1
        self.run, self.history, self.edits = {}, {}, Counter()

    def begin_iter(self, r: int, iterations: int) -> None:
        """Announce resampling iteration ``r`` (0-based) of ``iterations`` at the current step."""
        if not 0 <= r < iterations:
            raise ValueError(f"iteration r={r} outside 0..{iterations - 1}")
        if r == 0:
            self.run = {}  # a new step: nothing pooled yet
        self.iteration, self.iterations = r, iterations


def msa_sites(sites: Sequence[Site], factors: Sequence[int]) -> list[Site]:
    """Decoder self-attention layers at latent / f for f in ``factors`` (§4.4: the 16x16 and 32x32
    decoder layers of Zero-1-to-3; encoder layers excluded)."""
    return [s for s in sites if s.place == "up" and s.kind == "self" and s.res_factor in factors]


def amf_sites(sites: Sequence[Site], config: ZeroToHeroConfig) -> list[Site]:
    """Self-attention layers picked by ``config.amf_layers`` (cross-attention has one key: §4.1)."""
    return [s for s in sites if s.kind == "self" and config.amf_layers.matches(s)]


class ZeroToHeroProcessor(ControlledProcessor):
    """One self-attention layer: AMF (if ``amf``) and/or MSA (if ``msa``), each on its range."""

    stats_key = "z2h"

    def __init__(self, site: Site, controller: Controller, config: ZeroToHeroConfig, amf: bool, msa: bool
                 ) -> None:
        super().__init__(site, controller)
        self.config, self.amf, self.msa = config, amf, msa
        self.state: ZeroToHeroState = controller.stores.setdefault(STORE, ZeroToHeroState())

    def _filter_step(self, call: CallInfo) -> FilterStep | None:
        t = call.timestep
        if not self.amf or t is None:
            return None
        step = FilterStep(in_range(t, self.config.instep_range), in_range(t, self.config.crossstep_range),
                          self.state.iteration == self.state.iterations - 1)
        return step if step.instep or step.crossstep else None

    def _msa_on(self, call: CallInfo) -> bool:
        return self.msa and call.timestep is not None and in_range(call.timestep, self.config.msa_range)

    def wants(self, call: CallInfo) -> bool:
        return self._filter_step(call) is not None or self._msa_on(call)

    def edits_scores(self, call: CallInfo) -> bool:
        return self._filter_step(call) is not None

    def edit_qkv(self, q: Tensor, k: Tensor, v: Tensor, call: CallInfo) -> tuple[Tensor, Tensor, Tensor]:
        if not self._msa_on(call):
            return q, k, v
        pairs = source_pairs(call.labels or ())
        if not pairs:
            raise ValueError(
                f"mutual self-attention on {self.site.name} needs rows labelled '{SOURCE}.<half>' and "
                f"'{TARGET}.<half>' (got {call.labels}); run it from pipelines/zero123.py, or set msa=False")
        self.state.edits[(call.step, self.site.name, "msa")] += 1
        k, v = swap_kv(k, v, pairs)  # (B, H, N, D): target rows <- their source row
        return q, k, v

    def edit_logits(self, logits: Tensor, call: CallInfo) -> Tensor:  # [B, H, Nq, Nk] fp32, pre-softmax
        step = self._filter_step(call)
        if step is None:
            return logits
        rows = self._rows(call, logits.shape[0])
        name, s = self.site.name, self.state
        m = logits[rows]  # (b, H, Nq, Nk): the filtered rows
        hist = s.history.get(name)
        if hist is not None and hist.shape != m.shape:
            raise ValueError(f"{name}: the batch changed within a run ({tuple(hist.shape)} -> "
                             f"{tuple(m.shape)}); call state.begin_run() before a new sample")
        refined, run, hist = filter_map(m, s.run.get(name), hist, step, self.config.alpha_c,
                                        self.config.alpha_h, count=s.iteration, pooling=self.config.pooling)
        if run is not None:
            s.run[name] = run
        if hist is not None:
            s.history[name] = hist
        s.edits[(call.step, name, "amf")] += 1
        if len(rows) == logits.shape[0]:
            return refined
        out = logits.clone()
        out[rows] = refined
        return out

    def _rows(self, call: CallInfo, batch: int) -> list[int]:
        if self.config.filter_rows == "all":
            return list(range(batch))
        labels = call.labels
        if labels is None:
            raise ValueError(f"filter_rows='target' on {self.site.name} needs labelled rows; "
                             "run it from pipelines/zero123.py or use filter_rows='all'")
        return [i for i, lab in enumerate(labels) if lab is not None and lab.startswith(TARGET + ".")]


@register_technique(ZeroToHeroConfig)
def _install(config: ZeroToHeroConfig, sites: Sequence[Site], ctrl: Controller) -> Mapping[str, Any]:
    ctrl.stores.setdefault(STORE, ZeroToHeroState())
    amf = {s.name for s in amf_sites(sites, config)} if config.amf else set()
    msa = {s.name for s in msa_sites(sites, config.msa_res_factors)} if config.msa else set()
    if config.amf and not amf:
        raise ValueError(f"amf_layers={config.amf_layers!r} picks no self-attention layer; widen it or "
                         "set amf=False")
    if config.msa and not msa:
        have = sorted({s.res_factor for s in sites if s.place == "up" and s.kind == "self"})
        raise ValueError(f"msa_res_factors={config.msa_res_factors}: this UNet has decoder self-attention at "
                         f"latent / {have} only; pick from those or set msa=False")
    return {s.name: ZeroToHeroProcessor(s, ctrl, config, s.name in amf, s.name in msa)
            for s in sites if s.name in amf | msa}
