"""The Hourglass schedule, resampling counts and explicit-timestep DDIM (Zero-to-Hero §4.5, App. 8.5).

Diffusers' ``DDIMScheduler.step`` takes ``prev = t - num_train // num_steps`` (uniform spacing), so it
cannot run the Hourglass list; these pure functions take the (t, t_prev) pair explicitly.

Paper -> function:
- Hourglass: 10 / 6 / 10 uniform steps on [800, 1000) / [200, 800) / [0, 200)  -> :func:`hourglass_timesteps`
- per-step resampling, R = 5 on t in [800, 1000]                                -> :func:`resample_counts`
- DDIM update  z_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) eps + s n       -> :func:`ddim_step`
- re-noise     z_t = sqrt(a_t / a_prev) z_prev + sqrt(1 - a_t / a_prev) n        -> :func:`renoise`

>>> ts = hourglass_timesteps()
>>> len(ts), ts[:2], ts[9:12], ts[-1]
(26, [999, 979], [819, 799, 699], 19)
>>> sum(resample_counts(ts, 5, (800, 1000)))          # network evaluations: 10 x 5 + 16
66
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensor = torch.Tensor


def hourglass_timesteps(
    stage_steps: Sequence[int] = (10, 6, 10), bounds: Sequence[int] = (200, 800), num_train: int = 1000
) -> list[int]:
    """Strictly decreasing timesteps, uniform inside each stage [hi_k, lo_k): dense early and late.

    Stage k covers [lo, hi) with n_k steps t = hi - 1 - j * (hi - lo) / n_k, j = 0..n_k-1 (integer
    division), e.g. 999, 979, ..., 819 | 799, 699, ..., 299 | 199, 179, ..., 19 for the defaults. The paper
    gives the stage sizes and intervals, not the integers; this list is one faithful choice.
    """
    edges = [num_train, *sorted(bounds, reverse=True), 0]
    if len(stage_steps) != len(edges) - 1:
        raise ValueError(f"stage_steps={tuple(stage_steps)} needs one count per stage: "
                         f"{len(edges) - 1} stages for bounds={tuple(bounds)}")
    out: list[int] = []
    for n, hi, lo in zip(stage_steps, edges[:-1], edges[1:], strict=True):
        if n < 1 or n > hi - lo:
            raise ValueError(f"stage [{lo}, {hi}) cannot hold {n} distinct steps; give 1..{hi - lo}")
        out += [hi - 1 - j * (hi - lo) // n for j in range(n)]
    return out


def uniform_timesteps(num_steps: int, num_train: int = 1000, steps_offset: int = 1) -> list[int]:
    """DDIMScheduler's "leading" spacing: (0, r, 2r, ...) reversed + offset, r = num_train // num_steps."""
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"num_steps={num_steps} must be in 1..{num_train}")
    ratio = num_train // num_steps
    return [j * ratio + steps_offset for j in reversed(range(num_steps))]


def previous_timesteps(timesteps: Sequence[int]) -> list[int]:
    """t_prev of each step: the next sampled timestep, -1 after the last (the final alpha)."""
    return [*timesteps[1:], -1]


def in_range(t: float, bounds: Sequence[float] | None) -> bool:
    """Whether timestep ``t`` lies in the closed interval ``bounds`` = (lo, hi); None is never."""
    return bounds is not None and bounds[0] <= t <= bounds[1]


def resample_counts(timesteps: Sequence[int], iterations: int, bounds: Sequence[float] | None) -> list[int]:
    """Evaluations per step: R on the resampling interval, 1 elsewhere (their sum is the NFE)."""
    return [iterations if in_range(t, bounds) else 1 for t in timesteps]


def alpha_at(alphas_cumprod: Tensor, t: int, final_alpha: float) -> Tensor:
    """abar_t as a 0-d fp64 tensor; t < 0 gives the final alpha (DDIM's ``final_alpha_cumprod``)."""
    return alphas_cumprod[t].double() if t >= 0 else torch.tensor(final_alpha, dtype=torch.float64)


def ddim_step(z: Tensor, eps: Tensor, a_t: Tensor, a_prev: Tensor, eta: float = 0.0,
              noise: Tensor | None = None) -> Tensor:
    """One DDIM update z_t -> z_prev for epsilon prediction (Song et al. Eq. 12), any (t, t_prev).

    x0 = (z - sqrt(1 - a_t) eps) / sqrt(a_t); s = eta sqrt((1 - a_prev)/(1 - a_t)) sqrt(1 - a_t/a_prev);
    z_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) eps + s noise. Computed as DDIMScheduler does
    (same operation order, z's dtype) so a uniform list reproduces it to float rounding.
    """
    a_t, a_prev = a_t.to(z.dtype), a_prev.to(z.dtype)
    x0 = (z - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * var ** 0.5
    out = a_prev ** 0.5 * x0 + (1 - a_prev - std ** 2) ** 0.5 * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise= (a tensor shaped like z)")
        out = out + std * noise
    return out


def renoise(z_prev: Tensor, a_t: Tensor, a_prev: Tensor, noise: Tensor) -> Tensor:
    """Forward-process jump z_prev -> z_t, q(z_t | z_prev) (RePaint jump 1; §4.3 resampling)."""
    ratio = (a_t / a_prev).to(z_prev.dtype)
    return ratio ** 0.5 * z_prev + (1 - ratio) ** 0.5 * noise
