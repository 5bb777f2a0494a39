"""Edit-friendly DDPM inversion: replaying the stored noises without injection reproduces the inverted
latents (latent MSE <= 1e-5) on the tiny UNet, with and without CFG and from a later start step, on
a scheduler whose last step has no noise, and on the shipped shapes model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler

from attn_processors.testing.tiny import tiny_denoiser
from pipelines.edit_friendly_inversion import Inversion, ddpm_step, invert, reconstruct

SHAPES = Path(__file__).resolve().parents[1] / "assets" / "shapes-sd"
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)


@pytest.fixture(scope="module")
def tiny():
    unet = tiny_denoiser("sd15")
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 8, unet.config.cross_attention_dim, generator=g)
    uncond = torch.zeros_like(emb)

    def eps(x, t, scale: float = 1.0):
        with torch.no_grad():
            if scale == 1.0:
                return unet(x, t, encoder_hidden_states=emb.expand(len(x), -1, -1)).sample
            e = torch.cat([uncond.expand(len(x), -1, -1), emb.expand(len(x), -1, -1)])
            u, c = unet(torch.cat([x, x]), t, encoder_hidden_states=e).sample.chunk(2)
            return u + scale * (c - u)

    return eps, torch.randn(2, 4, 8, 8, generator=g)  # 8x8 latents keep the test fast


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


@pytest.mark.parametrize("cfg_scale", [1.0, 3.5])
def test_tiny_unet_inversion_reconstructs_x0(tiny, cfg_scale):
    eps, x0 = tiny
    sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **BETAS)
    sched.set_timesteps(8)
    model = lambda x, t: eps(x, t, cfg_scale)  # noqa: E731
    inv = invert(model, x0, sched, generator=torch.Generator().manual_seed(1))
    assert inv.xts.shape == (9, 2, 4, 8, 8) and inv.zs.shape == (8, 2, 4, 8, 8)
    assert _mse(reconstruct(model, inv, sched), x0) <= 1e-5
    assert _mse(reconstruct(model, inv, sched, start=3), x0) <= 1e-5  # a partly noised start (skip)
    # the noise maps carry the image: replaying other noises lands elsewhere
    other = Inversion(inv.timesteps, inv.xts, torch.randn_like(inv.zs))
    assert _mse(reconstruct(model, other, sched), x0) > 1e-2


def test_each_image_keeps_its_own_trajectory(tiny):
    eps, x0 = tiny
    sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **BETAS)
    sched.set_timesteps(8)
    inv = invert(eps, x0, sched, generator=torch.Generator().manual_seed(2))
    one = inv.rows(1)
    assert torch.equal(one.xts[:, 0], inv.xts[:, 1]) and torch.equal(Inversion.cat([one]).zs, one.zs)
    a = sched.alphas_cumprod.double()
    x = inv.xts[3]
    step = ddpm_step(x, eps(x, inv.timesteps[3]), a[inv.timesteps[3]], a[inv.timesteps[4]], inv.zs[3])
    assert _mse(step, inv.xts[4]) <= 1e-10  # one replayed step lands on the stored next latent


def test_a_last_step_without_noise_still_reconstructs(tiny):
    """set_alpha_to_one: sigma of the last step is 0; its residual is stored with sigma taken as 1."""
    eps, x0 = tiny
    sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **BETAS)
    sched.set_timesteps(6)
    inv = invert(eps, x0, sched, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(inv.zs).all()
    assert _mse(reconstruct(eps, inv, sched), x0) <= 1e-5


def test_shipped_model_inversion_reconstructs_x0():
    from PIL import Image

    from pipelines.style_transfer import StyleTransferPipeline
    from worlds.shapes.render import SceneObject
    from worlds.shapes.styles import render_styled

    pipe = StyleTransferPipeline.from_pretrained(SHAPES)
    scenes = [render_styled([SceneObject("red", "circle", (0.2, 0.2, 0.6, 0.6))], "flat"),
              render_styled([SceneObject("blue", "square", (0.3, 0.4, 0.8, 0.9))], "flat")]
    x0 = pipe.encode([Image.fromarray(s) for s in scenes])
    inv = pipe.invert(x0, "a red circle", seed=0, num_inference_steps=10, guidance_scale=3.5)
    for start in (0, 3):
        mse = _mse(pipe.reconstruct(inv, "a red circle", start=start, guidance_scale=3.5), x0)
        assert mse <= 1e-5, mse
