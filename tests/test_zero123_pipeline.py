"""Our Zero-1-to-3 pipeline on a tiny random-weight model saved in the public checkpoint layout:
loading (explicit scheduler, never the folder's betas), save/load round trip, the plain sampler vs
Diffusers' DDIMScheduler, Zero-to-Hero off -> identity, NFE, the plain Diffusers path, batching."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler

from attn_processors.core import apply, processors, stock_processors
from attn_processors.testing.tiny_zero123 import WRONG_BETAS, save_tiny_zero123
from attn_processors.zero_to_hero import ZeroToHeroConfig
from pipelines.zero123 import Zero123Pipeline, zero123_scheduler

POSES = [(10.0, 90.0, 0.0), (-15.0, 200.0, 0.1)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_zero123(tmp_path_factory.mktemp("zero123"))


@pytest.fixture(scope="module")
def pipe(folder):
    p = Zero123Pipeline.from_pretrained(folder, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))


def _run(pipe, image, poses=POSES, seed=0, **kw):
    kw.setdefault("output_type", "latent")
    return pipe(image, poses, generator=torch.Generator().manual_seed(seed), **kw)


def test_loads_the_public_layout_with_an_explicit_scheduler(folder, pipe):
    saved = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert saved["beta_start"] == WRONG_BETAS["beta_start"]  # the converted checkpoints' bug
    cfg = pipe.scheduler.config
    assert (cfg.beta_start, cfg.beta_end, cfg.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    torch.testing.assert_close(pipe.scheduler.alphas_cumprod, zero123_scheduler().alphas_cumprod)
    assert pipe.unet.config.in_channels == 8 and pipe.cc_projection.config.in_channel == 36


def test_a_wrong_scheduler_is_refused(pipe):
    bad = DDIMScheduler(beta_start=0.02, beta_end=0.085, beta_schedule="scaled_linear")
    with pytest.raises(ValueError, match=r"'beta_start': 0.02.*leave scheduler out, or pass zero123_sch"):
        Zero123Pipeline(pipe.vae, pipe.image_encoder, pipe.unet, pipe.cc_projection, scheduler=bad)


@torch.no_grad()
def _ddim_reference(pipe, image, steps, seed, guidance=3.0):
    """Plain Zero-1-to-3 sampling with Diffusers' DDIMScheduler (the community pipeline's loop)."""
    x = pipe.prepare_image(image, [])
    tokens, latent = pipe.condition(x, torch.tensor(POSES, dtype=torch.float64))
    n = len(POSES)
    latent = latent.expand(n, -1, -1, -1)
    sched = zero123_scheduler()
    sched.set_timesteps(steps)
    z = torch.randn((n, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    tok2, lat2 = torch.cat([torch.zeros_like(tokens), tokens]), torch.cat([torch.zeros_like(latent), latent])
    for t in sched.timesteps:
        inp = torch.cat([sched.scale_model_input(torch.cat([z, z]), t), lat2], 1)
        eps_u, eps_c = pipe.unet(inp, t, encoder_hidden_states=tok2).sample.chunk(2)
        z = sched.step(eps_u + guidance * (eps_c - eps_u), t, z).prev_sample
    return z


def test_plain_sampler_equals_ddim_scheduler_and_z2h_off_is_identity(pipe, image):
    ref = _ddim_reference(pipe, image, 8, seed=3)
    plain = _run(pipe, image, seed=3, num_inference_steps=8)
    sched = zero123_scheduler()
    sched.set_timesteps(8)
    assert plain.nfe == 8 and plain.timesteps == sched.timesteps.tolist()
    torch.testing.assert_close(plain.images, ref, atol=1e-5, rtol=0)
    off = _run(pipe, image, seed=3, z2h=ZeroToHeroConfig.plain(8))
    torch.testing.assert_close(off.images, ref, atol=1e-5, rtol=0)
    # filtering installed and active on every layer, but a no-op (alpha_c = 1, R = 1): the explicit fp32
    # softmax path equals SDPA to float rounding (latents here reach |z| ~ 20: 1e-6 relative)
    noop = ZeroToHeroConfig(msa=False, resample_iterations=1, alpha_c=1.0, schedule="uniform", num_steps=8,
                            crossstep_range=(0, 1000), instep_range=(0, 1000))
    torch.testing.assert_close(_run(pipe, image, seed=3, z2h=noop).images, ref, atol=1e-5, rtol=1e-6)


def test_z2h_runs_66_network_evaluations_on_26_steps(pipe, image):
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(int(a[1])))
    try:
        out = _run(pipe, image, z2h=ZeroToHeroConfig())
    finally:
        hook.remove()
    assert out.nfe == 66 == len(calls) and len(out.timesteps) == 26
    assert calls[:5] == [999] * 5 and calls[50:] == out.timesteps[10:]
    assert out.images.shape == (2, 4, 8, 8) and torch.isfinite(out.images).all()
    base = _run(pipe, image, z2h=ZeroToHeroConfig(amf=False, msa=False))  # hourglass + resampling alone
    assert (out.images - base.images).abs().max() > 1e-4  # the attention edits change the sample


def test_plain_diffusers_path_and_apply_equal_the_z2h_argument(pipe, image):
    cfg = ZeroToHeroConfig(resample_iterations=2)
    want = _run(pipe, image, z2h=cfg).images
    procs = processors(pipe.unet, cfg)
    pipe.unet.set_attn_processor(procs)
    try:
        torch.testing.assert_close(_run(pipe, image).images, want, atol=0, rtol=0)
        with pytest.raises(ValueError, match="already installed on this UNet; call without z2h="):
            _run(pipe, image, z2h=cfg)
    finally:
        pipe.unet.set_attn_processor(stock_processors(pipe.unet))
    with apply(pipe, cfg):  # a stock-pipeline driver is attached too; the loop's labels still win
        torch.testing.assert_close(_run(pipe, image).images, want, atol=0, rtol=0)


def test_targets_are_independent_rows_of_one_batch(pipe, image):
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    both = pipe(image, POSES, latents=z, num_inference_steps=4, output_type="latent").images
    one = pipe(image, POSES[1:], latents=z[1:], num_inference_steps=4, output_type="latent").images
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=0)


def test_save_load_round_trip(pipe, image, tmp_path):
    pipe.save_pretrained(tmp_path)
    for part in ("unet", "vae", "image_encoder", "cc_projection", "scheduler", "feature_extractor"):
        assert (tmp_path / part).is_dir(), part
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["cc_projection"] == ["pipeline_zero1to3", "CCProjection"]
    again = Zero123Pipeline.from_pretrained(tmp_path, local_files_only=True)
    again.set_progress_bar_config(disable=True)
    for a, b in zip(pipe.unet.state_dict().values(), again.unet.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(_run(again, image, num_inference_steps=3).images,
                               _run(pipe, image, num_inference_steps=3).images, atol=1e-4, rtol=0)
    out = _run(again, image, num_inference_steps=2, output_type="pil")
    assert len(out.images) == 2 and out.images[0].size == (16, 16)
