"""CSG guidance losses on aggregated attention maps, as pure functions (the paper's method section:
selective sampling, intra-token loss, inter-token and self-attention constraints, latent update).

Paper / reference code -> function:
  selective sampling (top-k in box, a random part kept) -> :func:`selection_sizes`, :func:`selective_sample`
  intra-token loss  (1 - S_in/(S_in+S_out))^2      -> :func:`cross_terms` (``intra``)
  inter-token constraint relu(M - mu + margin)^2   -> :func:`cross_terms` (``inter``)
  self-attention constraint on s = S @ m           -> :func:`self_terms`
  L = w_c (sum intra + w_i sum inter) + w_s sum self -> :func:`csg_loss`
  step size eta_i = scale * sqrt(linspace(1, .5, T))[i] -> :func:`step_sizes`

Shapes: ``A`` (N, K) cross-attention probabilities (N query cells, K text positions), ``S`` (N, N)
self-attention probabilities (rows = queries), ``masks`` (n, N) 0/1 float, one per layout object.
An object is a *group* of text positions (a multi-token phrase); its cross-attention column is the
mean of its tokens' columns, which for one token is exactly the reference's column.

Randomness: every random draw goes through a ``PermSource`` ``(loss, position, k) -> perm of 0..k-1``
called in the reference's order (cross positions 0..n-1, then self positions 0..n-1), so tests can
inject recorded permutations and runs use the caller's ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

PermSource = Callable[[str, int, int], torch.Tensor]


@dataclass(frozen=True)
class LossWeights:
    """Hard-coded in the reference (``generate.py``): L = cross*(intra + inter*inter) + self*self."""

    cross: float = 5.0
    inter: float = 50.0
    self: float = 5.0


@dataclass(frozen=True)
class SamplingParams:
    """Selective sampling and hinge (reference ``config.py``). ``keep_fraction`` is the reference's
    ``dropout``: despite that name, the fraction of the top-k cells kept."""

    topk_coef: float = 0.8
    keep_fraction: float = 0.5
    margin: float = 0.1


@dataclass
class LossTerms:
    """Per-object unweighted terms (n,) and weighted totals (scalars, differentiable)."""

    intra: torch.Tensor
    inter: torch.Tensor  # zeros when fewer than two objects (no inter-token term)
    self_: torch.Tensor
    loss_cross: torch.Tensor
    loss_self: torch.Tensor
    total: torch.Tensor
    selected: list[torch.Tensor]  # cross-loss selected cells per object (diagnostic)


def generator_perms(generator: torch.Generator | None = None) -> PermSource:
    """Permutations from ``generator`` (the global RNG when None, as the reference)."""

    def draw(loss: str, position: int, k: int) -> torch.Tensor:
        return torch.randperm(k, generator=generator, device=generator.device if generator else "cpu")

    return draw


def identity_perms(loss: str, position: int, k: int) -> torch.Tensor:
    """No randomness: keep the first r of the top-k cells (useful with a keep fraction of 1 and in tests)."""
    return torch.arange(k)


def selection_sizes(n_cells: int, topk_coef: float, keep_fraction: float) -> tuple[int, int]:
    """k = max(1, floor(|m| * topk_coef)), r = max(1, round_half_even(k * keep_fraction)), in float32.

    float32 matters: the reference multiplies float32 tensors, and float64 can move r or k by one.
    """
    k = max(1, int(torch.floor(torch.tensor(float(n_cells), dtype=torch.float32) * topk_coef)))
    r = max(1, int(torch.round(torch.tensor(float(k), dtype=torch.float32) * keep_fraction)))
    return k, min(r, k)


def selective_sample(
    v: torch.Tensor, mask: torch.Tensor, k: int, r: int, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Selective sampling on a score vector v (N,) and mask (N,) -> (s_in, s_out, selected cells (r,)).

    s_in: sum of r randomly kept values among the k largest in-box values (kept = ``perm[:r]``).
    s_out: sum of the r largest out-of-box values (zeroed in-box entries fill up if too few cells).
    """
    top = torch.topk(v * mask, k)  # descending in-box values, (k,)
    keep = perm[:r].to(top.indices.device)
    s_in = top.values[keep].sum()
    s_out = torch.topk(v * (1.0 - mask), r).values.sum()
    return s_in, s_out, top.indices[keep]


def ratio_term(s_in: torch.Tensor, s_out: torch.Tensor) -> torch.Tensor:
    """(1 - S_in / (S_in + S_out))^2: 0 when all sampled mass is inside the box."""
    return (1.0 - s_in / (s_in + s_out)) ** 2


def object_columns(A: torch.Tensor, groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """(N, K) maps -> (N, n): per object, the mean of its tokens' columns."""
    return torch.stack([A[:, list(g)].mean(-1) for g in groups], dim=-1)


def cross_terms(
    A: torch.Tensor,
    masks: torch.Tensor,
    groups: Sequence[Sequence[int]],
    params: SamplingParams,
    perms: PermSource,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Intra-token terms (n,), inter-token terms (n,) and the selected cells of each object.

    inter_j = relu(M_j - mu_j + margin)^2 with mu_j the mean of object j's own column over its
    selected cells P_j and M_j the largest such mean of any other object's column on P_j.
    """
    cols = object_columns(A, groups)  # (N, n)
    n = cols.shape[1]
    intra, inter, selected = [], [], []
    for j in range(n):
        k, r = selection_sizes(int(masks[j].sum()), params.topk_coef, params.keep_fraction)
        s_in, s_out, cells = selective_sample(cols[:, j], masks[j], k, r, perms("cross", j, k))
        intra.append(ratio_term(s_in, s_out))
        selected.append(cells)
        if n >= 2:
            means = cols[cells].mean(0)  # (n,) each object's mean on P_j
            others = torch.cat([means[:j], means[j + 1:]])
            inter.append(torch.relu(others.max() - means[j] + params.margin) ** 2)
    zero = A.new_zeros(n)
    return torch.stack(intra), (torch.stack(inter) if inter else zero), selected


def self_terms(
    S: torch.Tensor, masks: torch.Tensor, params: SamplingParams, perms: PermSource
) -> torch.Tensor:
    """Self-attention constraint terms (n,): selective sampling on s = S @ m_j (mass each query
    cell sends into box j); queries outside the box should not attend into it."""
    out = []
    for j in range(masks.shape[0]):
        k, r = selection_sizes(int(masks[j].sum()), params.topk_coef, params.keep_fraction)
        s = S @ masks[j]  # (N,)
        s_in, s_out, _ = selective_sample(s, masks[j], k, r, perms("self", j, k))
        out.append(ratio_term(s_in, s_out))
    return torch.stack(out)


def csg_loss(
    A: torch.Tensor,
    S: torch.Tensor | None,
    masks: torch.Tensor,
    groups: Sequence[Sequence[int]],
    params: SamplingParams = SamplingParams(),
    weights: LossWeights = LossWeights(),
    perms: PermSource | None = None,
) -> LossTerms:
    """The guidance loss L = w_cross (sum intra + w_inter sum inter) + w_self sum self.

    ``S=None`` (or ``weights.self == 0``) skips the self-attention term. Draws happen cross first,
    then self, as in the reference.
    """
    if masks.shape[0] != len(groups):
        raise ValueError(f"{masks.shape[0]} masks for {len(groups)} token groups; give one mask per object")
    if bool((masks.sum(-1) == 0).any()):
        raise ValueError("an object mask is empty; build masks with check_masks() to repair or reject it")
    perms = perms or generator_perms(None)
    masks = masks.to(A.dtype)
    intra, inter, selected = cross_terms(A, masks, groups, params, perms)
    loss_cross = weights.cross * (intra.sum() + weights.inter * inter.sum())
    if S is not None and weights.self != 0:
        self_ = self_terms(S, masks.to(S.dtype), params, perms)
    else:
        self_ = A.new_zeros(masks.shape[0])
    loss_self = weights.self * self_.sum()
    return LossTerms(intra, inter, self_, loss_cross, loss_self, loss_cross + loss_self, selected)


def step_sizes(num_timesteps: int, scale_factor: float) -> torch.Tensor:
    """eta_i = scale_factor * sqrt(linspace(1.0, 0.5, T)) (A&E / CSG schedule), shape (T,)."""
    return scale_factor * torch.sqrt(torch.linspace(1.0, 0.5, num_timesteps))
