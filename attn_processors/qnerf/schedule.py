"""Progressive interval consolidation, the "zipper" (paper §3.4, Fig. 4), as a pure event list.

Denoising runs in intervals of 2 tau steps. In interval k:

1. steps i .. i+tau-1 are *kept* steps, query-guided by QNeRF_{k-1} (``"guided"``; in the first
   interval no field exists yet: ``"plain"``);
2. the latent before step i+tau is cached (``"cache"``);
3. steps i+tau .. i+2tau-1 run free (``"free"``), the last of them extracting the queries of every
   view (``"extract"``);
4. QNeRF_k is fitted on them (``"fit"``) and the latent rewinds to the cache (``"rewind"``): the next
   interval starts at i+tau, guided by QNeRF_k.

Every kept step is guided at most once; each step after the first tau runs twice (once free, once
kept). Steps from ``until`` on are kept and unguided after one last guided interval (ours).

>>> [f"{e.kind} {e.step}" for e in interval_events(4, 1)][:8]
['plain 0', 'cache 1', 'extract 1', 'fit 1', 'rewind 1', 'guided 1', 'cache 2', 'extract 2']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

Tensor = torch.Tensor
Kind = Literal[
    "plain",  # a kept step with no field yet (first interval) or past `until`
    "guided",  # a kept step, query-guided by the last fitted field
    "cache",  # keep the latent before `step` (the rewind point)
    "free",  # an unguided step whose result is thrown away at the rewind
    "extract",  # a free step that also extracts every view's queries
    "fit",  # fit the next field on the extracted queries (of step `step`)
    "rewind",  # back to the latent cached before `step`
]
STEPS: tuple[str, ...] = ("plain", "guided", "free", "extract")  # the kinds that run a denoising step


@dataclass(frozen=True)
class Event:
    kind: Kind
    step: int  # the denoising step index the event belongs to


def interval_events(num_steps: int, tau: int, until: int | None = None) -> Iterator[Event]:
    """The events of a run of ``num_steps`` steps with ``tau`` guided and ``tau`` free steps per interval."""
    if num_steps < 1 or tau < 1:
        raise ValueError(f"num_steps={num_steps}, tau={tau}; give num_steps >= 1 and tau >= 1")
    stop = num_steps if until is None else min(until, num_steps)
    guided, i = False, 0
    while i < num_steps:
        for s in range(i, min(i + tau, num_steps)):
            yield Event("guided" if guided else "plain", s)
        free = range(i + tau, min(i + 2 * tau, num_steps))
        if not free or i + tau >= stop:  # nothing left to consolidate: the rest are kept steps
            for s in range(i + tau, num_steps):
                yield Event("plain", s)
            return
        yield Event("cache", free[0])
        for s in free:
            yield Event("extract" if s == free[-1] else "free", s)
        yield Event("fit", free[-1])
        yield Event("rewind", free[0])
        guided, i = True, i + tau


def run_events(z: Tensor, events: Iterator[Event] | list[Event], step: Callable[[Tensor, Event], Tensor],
               fit: Callable[[Event], None]) -> Tensor:
    """Drive the events: ``step(z, event)`` denoises one step, ``fit(event)`` fits the field;
    ``cache`` / ``rewind`` keep and restore the latent (a clone, so a rewind is bit-exact)."""
    cached: Tensor | None = None
    for event in events:
        if event.kind in STEPS:
            z = step(z, event)
        elif event.kind == "cache":
            cached = z.clone()
        elif event.kind == "rewind":
            if cached is None:
                raise ValueError(f"rewind at step {event.step} before any cache")
            z = cached.clone()
        else:
            fit(event)
    return z
