"""Deterministic DDIM inversion that keeps every intermediate latent (Song et al. 2021; Mokady et al.
2023; MasaCtrl's ``invert``), with an optional ControlNet.

Users of MasaCtrl-style editing report that results drift from the source image when only z_T is
kept (DDIM inversion error, worse with few steps); feeding the source branch the *inverted latent of
each step* removes that drift (MasaCtrl's ``ref_intermediate_latents``). So :func:`ddim_invert`
returns all of them: ``latents[i]`` is the latent before sampling step ``i`` and ``latents[-1]`` the
clean latent, for the same ``timesteps`` the sampler will run.

    >>> from attn_processors.testing.tiny import tiny_pipeline
    >>> pipe = tiny_pipeline("sd15")
    >>> pipe.scheduler.set_timesteps(4)
    >>> text = pipe.encode_prompt("a red box", "cpu", 1, False)[0]
    >>> inv = ddim_invert(pipe.unet, pipe.scheduler, torch.zeros(1, 4, 8, 8), text)
    >>> len(inv.latents), inv.timesteps
    (5, [751, 501, 251, 1])

Update rule (deterministic, eta = 0, either direction):
``z_to = sqrt(a_to) x0 + sqrt(1 - a_to) eps`` with ``x0 = (z_from - sqrt(1 - a_from) eps) / sqrt(a_from)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Tensor = torch.Tensor


@dataclass
class Inversion:
    """The DDIM-inverted trajectory: ``latents[i]`` before sampling step i (at ``timesteps[i]``)."""

    timesteps: list[int]  # the sampler's timesteps, decreasing
    latents: list[Tensor]  # len(timesteps) + 1; the last is the clean latent

    @property
    def noise(self) -> Tensor:
        """z_T: the latent the sampler starts from."""
        return self.latents[0]


def alpha(scheduler: Any, t: int) -> Tensor:
    """abar_t as a 0-d fp64 tensor; t < 0 is the scheduler's final alpha (after the last step)."""
    if t < 0:
        return torch.as_tensor(float(scheduler.final_alpha_cumprod), dtype=torch.float64)
    return scheduler.alphas_cumprod[int(t)].double()


def ddim_update(z: Tensor, eps: Tensor, a_from: Tensor, a_to: Tensor) -> Tensor:
    """z at noise level a_from -> z at a_to along the DDIM ODE (eps-prediction, eta = 0)."""
    a_from, a_to = a_from.to(z.dtype), a_to.to(z.dtype)
    x0 = (z - (1 - a_from) ** 0.5 * eps) / a_from ** 0.5
    return a_to ** 0.5 * x0 + (1 - a_to) ** 0.5 * eps


def previous_timestep(timesteps: list[int], i: int) -> int:
    """The level sampling step i lands on: the next timestep, -1 (final alpha) after the last."""
    return timesteps[i + 1] if i + 1 < len(timesteps) else -1


def predict_eps(unet: Any, z: Tensor, t: int, text: Tensor, controlnet: Any = None,
                control: Tensor | None = None, conditioning_scale: float = 1.0) -> Tensor:
    """The UNet's noise prediction, with the ControlNet's residuals when one and its image are given."""
    down, mid = None, None
    if controlnet is not None and control is not None:
        down, mid = controlnet(z, t, encoder_hidden_states=text, controlnet_cond=control,
                               conditioning_scale=conditioning_scale, return_dict=False)
    return unet(z, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                mid_block_additional_residual=mid, return_dict=False)[0]


@torch.no_grad()
def ddim_invert(unet: Any, scheduler: Any, z0: Tensor, text: Tensor, *, controlnet: Any = None,
                control: Tensor | None = None, conditioning_scale: float = 1.0,
                before_call: Callable[[int, int], None] | None = None) -> Inversion:
    """Invert the clean latents ``z0`` (B, C, h, w) with the prompt embeddings ``text`` (no CFG) over
    ``scheduler.timesteps`` (call ``set_timesteps`` first). ``before_call(i, t)`` runs before each
    denoiser call (a pipeline announces the step to its controller there)."""
    timesteps = [int(t) for t in scheduler.timesteps]
    if not timesteps:
        raise ValueError("the scheduler has no timesteps; call scheduler.set_timesteps(n) first")
    if text.shape[0] != z0.shape[0]:
        raise ValueError(f"{text.shape[0]} prompt embeddings for {z0.shape[0]} latents; give one per latent")
    latents = [z0]
    z = z0
    for i in reversed(range(len(timesteps))):
        t = timesteps[i]
        if before_call is not None:
            before_call(i, t)
        eps = predict_eps(unet, z, t, text, controlnet, control, conditioning_scale)  # eps at the target t
        z = ddim_update(z, eps, alpha(scheduler, previous_timestep(timesteps, i)), alpha(scheduler, t))
        latents.append(z)
    return Inversion(timesteps, latents[::-1])
