"""Edit-friendly DDPM inversion (Huberman-Spiegelglas, Kulikov, Michaeli, CVPR 2024) with stored noises.

Each noisy latent x_t is drawn on its own, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) n_t with independent n_t
(not a DDIM trajectory), and the noise map z_t that makes one DDPM step (eta = 1) land exactly on the
next one is stored:

    z_t = (x_{t-1} - mu(x_t, eps(x_t))) / sigma_t          x_{t-1} = mu + sigma_t z_t

Replaying the steps with the same eps and the stored z_t reproduces the trajectory and x0 (exact up
to rounding, the acceptance bar is latent MSE <= 1e-5). Style transfer keeps every donor on its own
stored trajectory and gives the output row the z_t of the image it starts from.

    >>> import torch
    >>> from diffusers import DDIMScheduler
    >>> sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    >>> sched.set_timesteps(10)
    >>> eps_model = lambda x, t: 0.1 * x                      # any deterministic noise predictor
    >>> x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> inv = invert(eps_model, x0, sched, generator=torch.Generator().manual_seed(1))
    >>> x = reconstruct(eps_model, inv, sched)
    >>> float(((x - x0) ** 2).mean()) < 1e-10
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Tensor = torch.Tensor
EpsModel = Callable[[Tensor, Tensor], Tensor]  # (x_t [B, C, H, W], t) -> predicted noise [B, C, H, W]


@dataclass(frozen=True)
class Inversion:
    """One batch of images inverted over `timesteps` (descending, the denoising order).

    xts[i] is the latent at timesteps[i] for i < T and xts[T] the end of the last step (x0);
    zs[i] the noise of the step from timesteps[i] to the next. Rows are images.
    """

    timesteps: Tensor  # [T] long
    xts: Tensor  # [T + 1, B, C, H, W]
    zs: Tensor  # [T, B, C, H, W]

    def rows(self, index: int | list[int]) -> Inversion:
        """The inversion of some images only (a view of the same tensors)."""
        idx = [index] if isinstance(index, int) else list(index)
        return Inversion(self.timesteps, self.xts[:, idx], self.zs[:, idx])

    @staticmethod
    def cat(parts: list[Inversion]) -> Inversion:
        """Images of several inversions over the same timesteps, in order."""
        if any(not torch.equal(p.timesteps, parts[0].timesteps) for p in parts):
            raise ValueError("inversions over different timesteps cannot share a batch; invert with the "
                             "same num_inference_steps")
        return Inversion(parts[0].timesteps, torch.cat([p.xts for p in parts], 1),
                         torch.cat([p.zs for p in parts], 1))


def alphas(scheduler: Any, timesteps: Tensor) -> tuple[Tensor, Tensor]:
    """(a_t, a_prev) per step, float64: alphas_cumprod at each timestep and at the next one (the
    scheduler's final_alpha_cumprod after the last), as DDIM's uniform spacing defines them."""
    ac = scheduler.alphas_cumprod.to(torch.float64)
    final = torch.as_tensor(getattr(scheduler, "final_alpha_cumprod", ac[0]), dtype=torch.float64)
    a_t = ac[timesteps.long()]
    a_prev = torch.cat([a_t[1:], final.reshape(1)])
    return a_t, a_prev


def _coefficients(a_t: Tensor, a_prev: Tensor) -> tuple[float, float, float, float, float]:
    """(sqrt(a_t), sqrt(1 - a_t), sqrt(a_prev), sqrt(1 - a_prev - sigma^2), sigma) for eta = 1.

    A step that ends at a_prev = 1 (a scheduler with set_alpha_to_one) has sigma = 0 and could not
    store its residual; there sigma is taken as 1 (the residual is added as it is), so x0 is still
    reproduced. SD's schedulers (final alpha = alphas_cumprod[0] < 1) never need this.
    """
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    sigma = float(var.sqrt()) if var > 0 else 1.0
    return (float(a_t.sqrt()), float((1 - a_t).sqrt()), float(a_prev.sqrt()),
            float((1 - a_prev - var).clamp_min(0).sqrt()), sigma)


def step_mean(x_t: Tensor, eps: Tensor, a_t: Tensor, a_prev: Tensor) -> tuple[Tensor, float]:
    """DDPM posterior mean mu(x_t, eps) and sigma_t (eta = 1), in DDIM's parametrisation."""
    sa, s1a, sp, dir_coef, sigma = _coefficients(a_t, a_prev)
    x0 = (x_t - s1a * eps) / sa
    return sp * x0 + dir_coef * eps, sigma


def ddpm_step(x_t: Tensor, eps: Tensor, a_t: Tensor, a_prev: Tensor, z: Tensor) -> Tensor:
    """x_{t-1} = mu(x_t, eps) + sigma_t z: one step with a stored noise map z."""
    mu, sigma = step_mean(x_t, eps, a_t, a_prev)
    return mu + sigma * z


@torch.no_grad()
def invert(eps_model: EpsModel, x0: Tensor, scheduler: Any, *, generator: torch.Generator | None = None
           ) -> Inversion:
    """Invert latents x0 [B, C, H, W] over `scheduler.timesteps` (call set_timesteps first).

    Every step's eps comes from `eps_model` on the whole batch at once, as the replay computes it, so
    the replay sees the same numbers.
    """
    ts = scheduler.timesteps
    if ts is None or len(ts) == 0:
        raise ValueError("scheduler has no timesteps; call scheduler.set_timesteps(num_inference_steps)")
    a_t, a_prev = alphas(scheduler, ts)
    x0 = x0.float()
    noise = torch.randn((len(ts), *x0.shape), generator=generator, dtype=x0.dtype).to(x0.device)
    xts = torch.empty((len(ts) + 1, *x0.shape), dtype=x0.dtype, device=x0.device)
    for i in range(len(ts)):
        xts[i] = float(a_t[i].sqrt()) * x0 + float((1 - a_t[i]).sqrt()) * noise[i]
    xts[-1] = x0
    zs = torch.empty((len(ts), *x0.shape), dtype=x0.dtype, device=x0.device)
    for i, t in enumerate(ts):
        eps = eps_model(xts[i], t)
        mu, sigma = step_mean(xts[i], eps, a_t[i], a_prev[i])
        zs[i] = (xts[i + 1] - mu) / sigma
        xts[i + 1] = mu + sigma * zs[i]  # what the replay computes: no rounding drift between steps
    return Inversion(ts.clone(), xts, zs)


@torch.no_grad()
def reconstruct(eps_model: EpsModel, inversion: Inversion, scheduler: Any, start: int = 0) -> Tensor:
    """Replay the stored noises from step `start` (x = xts[start]) to the end: returns x0 [B, C, H, W]."""
    a_t, a_prev = alphas(scheduler, inversion.timesteps)
    x = inversion.xts[start].clone()
    for i in range(start, len(inversion.timesteps)):
        x = ddpm_step(x, eps_model(x, inversion.timesteps[i]), a_t[i], a_prev[i], inversion.zs[i])
    return x
