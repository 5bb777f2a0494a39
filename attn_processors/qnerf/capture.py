"""Where the queries go: the store the processors write and the pipeline reads (paper §3.2).

The query of a layer is ``attn.to_q(hidden_states)`` of its self-attention, before the head split:
(views, N_l, C_l) with N_l = h_l * w_l tokens. Two modes keep it differently:

- ``"extract"``: detached, fp16, on the CPU (a 512-px SD 1.5 view is 13.8 MB per extraction, so a
  scene of hundreds of views lives in host memory, not on the accelerator); views arrive in
  minibatches, each announced with :meth:`QueryStore.begin_views`;
- ``"guide"``: fp32 with its autograd graph, for one minibatch, cleared by the next
  :meth:`QueryStore.begin_views`; once every query layer has written, the forward may stop
  (:class:`GuidanceForwardDone`), since nothing later changes the loss or its gradient.

>>> import torch
>>> store = QueryStore(layers=("a",))
>>> store.begin_views([1, 0], total=2)
>>> store.record("a", torch.ones(2, 4, 3), mode="extract", hw=(2, 2))
>>> store.queries("a").shape, store.queries("a").dtype
(torch.Size([2, 4, 3]), torch.float16)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

Tensor = torch.Tensor


class GuidanceForwardDone(Exception):
    """Raised by the last query layer of a guidance forward; the pipeline catches it."""


@dataclass
class QueryStore:
    """Queries per layer: extracted (CPU fp16, all views) and live (graph, current minibatch)."""

    layers: tuple[str, ...]  # the query layers, in network order
    early_exit: bool = True
    hw: dict[str, tuple[int, int]] = field(default_factory=dict)  # token grid of each layer
    live: dict[str, Tensor] = field(default_factory=dict)  # layer -> (b, N, C) with graph
    rendered: dict[str, Tensor] = field(default_factory=dict)  # layer -> (V, N, C): QNeRF's queries
    _extracted: dict[str, dict[int, Tensor]] = field(default_factory=dict)  # layer -> view -> (N, C)
    _views: tuple[int, ...] = ()
    _count: int = 0  # views of the scene

    def begin_views(self, views: Sequence[int], total: int) -> None:
        """The next denoiser call carries scene views ``views`` (in row order) of ``total``."""
        bad = [v for v in views if not 0 <= v < total]
        if bad or len(set(views)) != len(views):
            raise ValueError(f"views={list(views)}; give distinct view indices in 0..{total - 1}")
        self._views, self._count, self.live = tuple(int(v) for v in views), int(total), {}

    def clear(self) -> None:
        """Forget extracted and live queries (a new extraction); the rendered ones stay."""
        self._extracted, self.live = {}, {}

    def record(self, layer: str, q: Tensor, mode: str, hw: tuple[int, int]) -> None:
        """Keep ``q`` (b, N, C) of the announced views at ``layer``."""
        if q.shape[0] != len(self._views):
            raise ValueError(f"{layer}: {q.shape[0]} target rows for {len(self._views)} announced views; "
                             "call store.begin_views(...) with the views of this call")
        self.hw[layer] = hw
        if mode == "extract":
            per = self._extracted.setdefault(layer, {})
            for view, row in zip(self._views, q.detach().to("cpu", torch.float16), strict=True):
                per[view] = row
            return
        self.live[layer] = q
        if self.early_exit and all(name in self.live for name in self.layers):
            raise GuidanceForwardDone

    def queries(self, layer: str) -> Tensor:
        """(V, N, C) fp16 CPU: the extracted queries of every view of the scene at ``layer``."""
        per = self._extracted.get(layer, {})
        missing = [v for v in range(self._count) if v not in per]
        if missing:
            raise ValueError(f"{layer}: no extracted queries for views {missing[:5]}; run an extraction "
                             "step over every view first")
        return torch.stack([per[v] for v in range(self._count)])

    def maps(self) -> dict[str, Tensor]:
        """{layer: (V, h, w, C) fp16 CPU} of the extracted queries: the QNeRF targets."""
        return {name: self.queries(name).unflatten(1, self.hw[name]) for name in self.layers}

    def set_rendered(self, maps: dict[str, Tensor]) -> None:
        """Keep QNeRF's rendered maps {layer: (V, h, w, C)} as (V, N, C) fp32 guidance targets on the CPU
        (the pipeline moves one view batch at a time to the accelerator)."""
        self.rendered = {name: m.detach().flatten(1, 2).float().cpu() for name, m in maps.items()}

    def rendered_rows(self, layer: str) -> Tensor:
        """(b, N, C) fp32: QNeRF's rendered queries at ``layer`` for the announced views, in row order."""
        if layer not in self.rendered:
            raise ValueError(f"{layer}: no rendered queries yet; fit a field (set_rendered) before injecting")
        return self.rendered[layer][list(self._views)]

    def nbytes(self) -> int:
        """Bytes held by the extracted queries (the memory budget of one extraction)."""
        return sum(t.numel() * t.element_size() for per in self._extracted.values() for t in per.values())

