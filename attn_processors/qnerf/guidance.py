"""Soft query injection as one gradient step on the latent (paper §3.3) -- pure functions.

Paper -> function:
- distance between a view's current and rendered queries, summed over layers
  ``sum_l || q^v(l) - q^v_ren(l) ||_2``                                   -> :func:`query_distance`
- the guidance step ``z_t^v <- z_t^v - alpha grad_z sum_l ||...||``        -> :func:`guidance_step`
  (``steps`` repeats it; the paper takes one)

Per-layer normalisation (ours; the paper gives the un-normalised sum): each layer's distance is
divided by the norm of its rendered queries, so the 1280-, 640- and 320-channel layers weigh alike
and ``alpha`` does not depend on the model's query scale. Views add up (each view's gradient is its
own), layers are averaged.

>>> import torch
>>> q = {"a": torch.ones(1, 4, 2)}
>>> float(query_distance(q, {"a": torch.ones(1, 4, 2)}))
0.0
>>> round(float(query_distance(q, {"a": 2 * torch.ones(1, 4, 2)})), 3)     # ||1 - 2|| / ||2||
0.5
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

Tensor = torch.Tensor


def query_distance(live: Mapping[str, Tensor], rendered: Mapping[str, Tensor], eps: float = 1e-8) -> Tensor:
    """sum over views of mean over layers of ||q - q_ren||_F / ||q_ren||_F; each map (b, N, C)."""
    missing = sorted(set(rendered) - set(live))
    if missing or not rendered:
        raise ValueError(f"no current queries for layers {missing[:3]} (have {sorted(live)[:3]}); the "
                         "guidance forward must reach every query layer")
    terms = []
    for name, target in rendered.items():
        q = live[name].float()  # (b, N, C)
        if q.shape != target.shape:
            raise ValueError(f"{name}: current queries {tuple(q.shape)} vs rendered {tuple(target.shape)}")
        target = target.to(q.device)
        diff = (q - target).flatten(1).norm(dim=1)  # (b,)
        terms.append(diff / (target.flatten(1).norm(dim=1) + eps))
    return torch.stack(terms).mean(0).sum()


def guidance_step(z: Tensor, alpha: float, loss_of: Callable[[Tensor], Tensor], steps: int = 1
                  ) -> tuple[Tensor, float | None]:
    """(z after ``steps`` moves ``z <- z - alpha * d loss_of(z) / dz``, the loss before the first);
    alpha = 0 returns z itself, untouched.

    The paper takes one step; ``steps > 1`` (ours) repeats it with a fresh gradient each time, because
    one large step overshoots on a curved loss while several small ones keep lowering it.
    ``loss_of`` runs the guidance forward on a leaf copy of ``z`` (grad enabled here).
    """
    if steps < 1:
        raise ValueError(f"steps={steps}; give the number of gradient moves per guided step, >= 1")
    if alpha == 0:
        return z, None
    first: float | None = None
    for _ in range(steps):
        zg = z.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_of(zg)
            (grad,) = torch.autograd.grad(loss, zg)
        first = float(loss.detach()) if first is None else first
        z = (z - alpha * grad.to(z.dtype)).detach()
    return z, first
