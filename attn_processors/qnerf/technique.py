"""QNeRF's attention edits as processors on the core's hooks (paper §3.2-3.3, MasaCtrl §3).

One processor per chosen decoder self-attention layer, on ``edit_qkv`` ([B, H, N, D]):

- query layers (``query_factors``): in the controller's ``"extract"`` and ``"guide"`` modes the
  queries of the ``target.cond`` rows go to the :class:`~.capture.QueryStore` as (b, N, H*D), which
  is ``attn.to_q(hidden_states)`` before the head split; q, k, v pass on unchanged;
- with ``hard_inject`` (the paper's ablation) in the ``"inject"`` mode, the target rows' queries are
  *replaced* by QNeRF's rendered ones (consistent, but off the model's manifold);
- K/V layers (``kv_factors``): with ``mutual`` on and from ``kv_start_step``, each target row takes
  its own view's source-row K/V (``mutual.swap_kv``).

The pipeline (pipelines/multiview_edit.py) announces the step (``controller.begin_step``), the rows
(``controller.set_branch(mutual.view_labels(...))``), the mode and the views of each call
(``controller.stores["qnerf"].begin_views``); processors only ask.

    >>> with apply(pipe.unet, QNeRFConfig(), controller=ctrl):          # doctest: +SKIP
    ...     ...   # the interval loop of pipelines/multiview_edit.py
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..core.controller import Controller
from ..core.processor import CallInfo, ControlledProcessor
from ..core.registry import register_technique
from ..core.sites import Site
from .capture import QueryStore
from .config import QNeRFConfig
from .mutual import SOURCE, TARGET, pair_rows, swap_kv

STORE = "qnerf"  # key of the QueryStore in controller.stores
CAPTURE_MODES = ("extract", "guide")  # controller modes in which query layers record
CAPTURE_ROWS = f"{TARGET}.cond"  # the rows whose queries are consolidated
INJECT_MODE = "inject"  # controller mode of a kept step whose target queries are replaced (ablation)
Tensor = torch.Tensor


def decoder_sites(sites: Sequence[Site], factors: Sequence[int]) -> list[Site]:
    """Decoder self-attention layers at latent / f for f in ``factors``: the QNeRF heads
    (``query_factors``) or the layers that take the source K/V (``kv_factors``)."""
    return [s for s in sites if s.place == "up" and s.kind == "self" and s.res_factor in factors]


class QNeRFProcessor(ControlledProcessor):
    """One decoder self-attention layer: query capture (if ``capture``) and/or source K/V (if ``kv``)."""

    stats_key = "qnerf"

    def __init__(self, site: Site, controller: Controller, config: QNeRFConfig, capture: bool, kv: bool
                 ) -> None:
        super().__init__(site, controller)
        self.config, self.capture, self.kv = config, capture, kv
        self.store: QueryStore = controller.stores[STORE]

    def _kv_on(self, call: CallInfo) -> bool:
        return (self.kv and self.config.mutual and call.step is not None
                and call.step >= self.config.kv_start_step and call.labels is not None
                and any(lab is not None and lab.startswith(TARGET) for lab in call.labels))

    def _capture_on(self, call: CallInfo) -> bool:
        return self.capture and call.mode in CAPTURE_MODES

    def _inject_on(self, call: CallInfo) -> bool:
        return self.capture and self.config.hard_inject and call.mode == INJECT_MODE

    def wants(self, call: CallInfo) -> bool:
        return self._capture_on(call) or self._kv_on(call) or self._inject_on(call)

    def edit_qkv(self, q: Tensor, k: Tensor, v: Tensor, call: CallInfo) -> tuple[Tensor, Tensor, Tensor]:
        if self._capture_on(call):
            rows = call.rows(CAPTURE_ROWS)
            if call.hw is None:
                raise ValueError(f"{self.site.name}: the query grid of this call is unknown; announce the "
                                 "latent size with controller.begin_run(..., latent_hw=(h, w))")
            self.store.record(self.site.name, q[rows].transpose(1, 2).flatten(2), call.mode, call.hw)
        if self._inject_on(call):
            labels = call.labels or ()
            rows = [i for i, lab in enumerate(labels) if lab is not None and lab.startswith(TARGET)]
            rendered = self.store.rendered_rows(self.site.name).to(q.device, q.dtype)  # (b, N, H*D)
            heads = rendered.unflatten(-1, (q.shape[1], q.shape[3])).transpose(1, 2)  # (b, H, N, D)
            if len(rows) % heads.shape[0]:
                raise ValueError(f"{self.site.name}: {len(rows)} target rows for {heads.shape[0]} views")
            q = q.clone()
            q[rows] = heads.repeat(len(rows) // heads.shape[0], 1, 1, 1)  # every CFG half of the views
        if self._kv_on(call):
            pairs = pair_rows(call.labels or ())
            if not pairs:
                raise ValueError(f"mutual self-attention on {self.site.name} needs '{SOURCE}.<half>' rows "
                                 f"beside the '{TARGET}.<half>' rows (got {call.labels}); set mutual=False")
            k, v = swap_kv(k, v, pairs)  # (B, H, N, D): target rows <- their view's source row
        return q, k, v


@register_technique(QNeRFConfig)
def _install(config: QNeRFConfig, sites: Sequence[Site], ctrl: Controller) -> Mapping[str, Any]:
    capture = [s.name for s in decoder_sites(sites, config.query_factors)]
    kv = {s.name for s in decoder_sites(sites, config.kv_factors)} if config.mutual else set()
    if not capture:
        have = sorted({s.res_factor for s in sites if s.place == "up" and s.kind == "self"})
        raise ValueError(f"query_factors={config.query_factors}: this UNet has decoder self-attention at "
                         f"latent / {have} only; pick from those")
    ctrl.stores[STORE] = QueryStore(layers=tuple(capture), early_exit=config.early_exit)
    return {s.name: QNeRFProcessor(s, ctrl, config, s.name in capture, s.name in kv)
            for s in sites if s.name in set(capture) | kv}
