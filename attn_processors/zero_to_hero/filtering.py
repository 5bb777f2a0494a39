"""Attention Map Filtering (Zero-to-Hero §4.2-4.3, App. 8.5) as pure functions on pre-softmax logits.

Notation: M_{t,r} is the pre-softmax self-attention map (scaled Q K^T) of the r-th network evaluation
at timestep t (r = 1..R_t), M~ the filtered map that replaces it, H the per-layer history.

Paper -> function:
- in-step pooling f(M_{t,r}, {M~_{t,k}}_{k<r}) = min(M_{t,r}, M~_{t,1}, ..., M~_{t,r-1})  -> :func:`pool`
- cross-step blend M~_{t,r} = a_c f(...) + (1 - a_c) H_{t+1}                             -> :func:`blend`
- history after the last iteration H_t = a_h M~_{t,R} + (1 - a_h) H_{t+1}; H_T = M~_{T,R}
                                                                          -> :func:`update_history`
- one evaluation, all of the above in order                                              -> :func:`filter_map`

Every map is [B, H, Nq, Nk] fp32, filtered per batch row and per head (never averaged across heads
or rows). "mean" pooling is the alternative the paper tried (min was best early on).

>>> import torch
>>> m1, m2 = torch.tensor([1.0, 4.0]), torch.tensor([3.0, 2.0])
>>> step = FilterStep(instep=True, crossstep=True, last=False)
>>> out1, run, hist = filter_map(m1, None, None, step, 0.2, 0.5)        # first ever map: kept as is
>>> out2, run, hist = filter_map(m2, run, hist, FilterStep(True, True, True), 0.2, 0.5)
>>> out2.tolist(), hist.tolist()                                        # min(m2, m1), no history yet
([1.0, 2.0], [1.0, 2.0])
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

Tensor = torch.Tensor
Pooling = Literal[
    "min",  # element-wise minimum over the step's maps so far (the paper's choice)
    "mean",  # running mean over the step's maps so far (an alternative the paper tried)
]


class FilterStep(NamedTuple):
    """Which parts of the filter act on this evaluation."""

    instep: bool  # t in the in-step pooling interval (paper: [800, 1000])
    crossstep: bool  # t in the cross-step averaging interval (paper: [600, 1000])
    last: bool  # r == R_t: the last resampling iteration of the step (H is updated only then)


def pool(m: Tensor, run: Tensor | None, count: int, pooling: Pooling = "min") -> Tensor:
    """In-step pooling f: M against the step's earlier filtered maps (`run`, pooled over `count` maps).

    min:  f = min(M_{t,r}, run) with run = min_k<r M~_{t,k};  mean: f = (count * run + M) / (count + 1).
    """
    if run is None:
        return m
    if pooling == "min":
        return torch.minimum(m, run)
    return (run * count + m) / (count + 1)


def blend(f: Tensor, history: Tensor | None, alpha_c: float) -> Tensor:
    """Cross-step averaging M~ = a_c f + (1 - a_c) H_{t+1}; without a history yet, f itself (H_T init)."""
    if history is None:
        return f
    return alpha_c * f + (1 - alpha_c) * history


def update_history(refined: Tensor, history: Tensor | None, alpha_h: float) -> Tensor:
    """H_t = a_h M~_{t,R} + (1 - a_h) H_{t+1}; the first history is the map itself (H_T = M~_{T,R})."""
    if history is None:
        return refined
    return alpha_h * refined + (1 - alpha_h) * history


def accumulate(run: Tensor | None, refined: Tensor, count: int, pooling: Pooling = "min") -> Tensor:
    """The step's pooled filtered maps after adding M~_{t,r} (what the next iteration pools against)."""
    if run is None:
        return refined
    if pooling == "min":
        return torch.minimum(run, refined)
    return (run * count + refined) / (count + 1)


def filter_map(
    m: Tensor,
    run: Tensor | None,
    history: Tensor | None,
    step: FilterStep,
    alpha_c: float,
    alpha_h: float,
    count: int = 1,
    pooling: Pooling = "min",
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One evaluation's filter: (M~ that replaces M, the step's pooled maps, the history after it).

    `run` is None at the first iteration of a step (r = 1); `count` is how many maps it pools.
    Outside both intervals M is returned unchanged and nothing is kept. The history blend applies in
    the cross-step interval; the in-step pool only in the in-step interval.
    """
    if not (step.instep or step.crossstep):
        return m, None, history
    f = pool(m, run, count, pooling) if step.instep else m
    refined = blend(f, history, alpha_c) if step.crossstep else f
    run = accumulate(run, refined, count, pooling) if step.instep else None
    if step.last and step.crossstep:
        history = update_history(refined, history, alpha_h)
    return refined, run, history
