"""The multi-view edit pipeline on tiny SD-shaped components (3 views, 16x16 latents, 4 steps): DDIM
inversion keeps every latent and replays the source, the full consolidation loop with and without a
tiny ControlNet, alpha = 0 is the per-view edit, runs are deterministic, the shipped-folder layout
loads, and bad inputs (no poses, mismatched sizes, malformed transforms.json) name the file and frame."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import ControlNetModel

from attn_processors.qnerf import QNeRFConfig
from attn_processors.qnerf.cameras import Cameras, from_c2w, to_transforms
from attn_processors.testing.tiny import tiny_pipeline
from pipelines.ddim_inversion import alpha, ddim_invert, ddim_update, predict_eps, previous_timestep
from pipelines.multiview_edit import MultiViewEditPipeline, load_views

SIZE, VIEWS, STEPS = 16, 3, 4  # 16 px views: 8x8 latents (x2 VAE)
FAST = QNeRFConfig(tau=1, fit_iters=5, kv_start_step=1, alpha=5.0)


def look_at(azimuth: float, elevation: float = 20.0, radius: float = 2.5) -> torch.Tensor:
    """OpenGL camera-to-world (4, 4) of a camera on an orbit, looking at the origin, z up."""
    e, a = math.radians(elevation), math.radians(azimuth)
    pos = radius * torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)],
                                dtype=torch.float64)
    fwd = -pos / pos.norm()
    right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    right = right / right.norm()
    up = torch.linalg.cross(right, fwd)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -fwd, pos
    return c2w


def cameras(n: int = VIEWS, size: int = SIZE) -> Cameras:
    return from_c2w(torch.stack([look_at(120.0 * i) for i in range(n)]), fx=1.25 * size, fy=1.25 * size,
                    cx=size / 2, cy=size / 2, width=size, height=size)


@pytest.fixture(scope="module")
def parts():
    """Tiny SD-1.5-shaped components (a x2 VAE) and a tiny ControlNet."""
    sd = tiny_pipeline("sd15")
    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(sd.unet, conditioning_embedding_out_channels=(8, 16)).eval()
    return sd, controlnet


def make_pipe(parts, with_controlnet: bool) -> MultiViewEditPipeline:
    sd, controlnet = parts
    pipe = MultiViewEditPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer,
                                 unet=sd.unet, scheduler=sd.scheduler,
                                 controlnet=controlnet if with_controlnet else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def views(n: int = VIEWS, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1


def controls(n: int = VIEWS, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# -- inversion ------------------------------------------------------------------------------------
def test_inversion_keeps_every_latent_and_replays_to_the_source(parts):
    sd, controlnet = parts
    sd.scheduler.set_timesteps(STEPS)
    text = sd.encode_prompt("a red box", "cpu", 1, False)[0].expand(2, -1, -1)
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        inv = ddim_invert(sd.unet, sd.scheduler, z0, text, controlnet=controlnet, control=controls(2))
        assert len(inv.latents) == STEPS + 1 and torch.equal(inv.latents[-1], z0)
        assert inv.timesteps == [int(t) for t in sd.scheduler.timesteps] and inv.noise is inv.latents[0]
        # each inverted latent is one DDIM update of the one after it (the cleaner level)
        i = 1
        eps = predict_eps(sd.unet, inv.latents[i + 1], inv.timesteps[i], text, controlnet, controls(2))
        want = ddim_update(inv.latents[i + 1], eps, alpha(sd.scheduler, previous_timestep(inv.timesteps, i)),
                           alpha(sd.scheduler, inv.timesteps[i]))
        assert torch.equal(inv.latents[i], want)
    # with a noise prediction that does not depend on z, DDIM is exact: sampling back gives z0
    eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    inv = ddim_invert(lambda z, t, **kw: (eps,), sd.scheduler, z0, text)
    z = inv.noise
    for i, t in enumerate(inv.timesteps):
        a_prev = alpha(sd.scheduler, previous_timestep(inv.timesteps, i))
        z = ddim_update(z, eps, alpha(sd.scheduler, t), a_prev)
        assert torch.allclose(z, inv.latents[i + 1], atol=1e-5)
    with pytest.raises(ValueError, match="2 prompt embeddings for 1 latents"):
        ddim_invert(sd.unet, sd.scheduler, z0[:1], text)


# -- the full edit --------------------------------------------------------------------------------
@pytest.mark.parametrize("with_controlnet", [False, True])
def test_full_multiview_edit_runs_for_three_views(parts, with_controlnet):
    pipe = make_pipe(parts, with_controlnet)
    before = dict(pipe.unet.attn_processors)
    kw = dict(controls=controls(), source_controls=controls(seed=2)) if with_controlnet else {}
    kw.update(num_inference_steps=STEPS, view_batch=2, output_type="np")
    out = pipe(views(), cameras(), "a red box", "a blue box", qnerf=FAST,
               generator=torch.Generator().manual_seed(0), **kw)
    assert out.images.shape == (VIEWS, SIZE, SIZE, 3) and np.isfinite(out.images).all()
    st = out.stats
    # T=4, tau=1: 4 kept steps, 3 free/extract steps, 3 guided steps (one guidance forward each), 3 fits;
    # each per view batch (2 batches) plus 4 inversion calls per batch
    assert [f["step"] for f in st["fits"]] == [1, 2, 3]
    assert st["denoiser_calls"] == 2 * (4 + 4 + 3 + 3)
    assert len(st["guidance_loss"]) == 2 * 3 and all(g["loss"] > 0 for g in st["guidance_loss"])
    channels = sum(pipe.unet.get_submodule(n).to_q.out_features * (SIZE // 2) ** 2 for n in
                   ("up_blocks.1.attentions.0.transformer_blocks.0.attn1",
                    "up_blocks.1.attentions.1.transformer_blocks.0.attn1"))
    assert st["query_mb"] == pytest.approx(VIEWS * channels * 2 / 2**20)  # fp16, every view, 2 layers
    assert pipe.unet.attn_processors == before  # our processors are gone after the call
    if not with_controlnet:  # the field is seeded: a consolidated edit repeats bit for bit
        again = pipe(views(), cameras(), "a red box", "a blue box", qnerf=FAST,
                     generator=torch.Generator().manual_seed(0), **kw)
        assert np.array_equal(out.images, again.images)
    per_view = pipe(views(), cameras(), "a red box", "a blue box", qnerf=replace(FAST, alpha=0.0), **kw)
    assert per_view.stats["fits"] == [] and per_view.stats["denoiser_calls"] == 2 * (4 + 4)
    assert np.abs(out.images - per_view.images).max() > 2e-2  # consolidation changes the edit


def test_hard_injection_runs_the_schedule_without_gradient_steps(parts):
    pipe = make_pipe(parts, False)
    kw = dict(num_inference_steps=STEPS, output_type="latent", view_batch=3)
    hard_config = replace(FAST, alpha=0.0, hard_inject=True)
    hard = pipe(views(), cameras(), "a red box", "a blue box", qnerf=hard_config, **kw)
    per_view = pipe(views(), cameras(), "a red box", "a blue box", qnerf=replace(FAST, alpha=0.0), **kw)
    assert [f["step"] for f in hard.stats["fits"]] == [1, 2, 3] and hard.stats["guidance_loss"] == []
    assert (hard.images - per_view.images).abs().max() > 1e-3  # the rendered queries steer the kept steps


def test_fit_callback_sees_every_fit_and_its_maps_replace_the_renders(parts):
    pipe = make_pipe(parts, False)
    kw = dict(num_inference_steps=STEPS, output_type="latent", view_batch=3,
              qnerf=replace(FAST, alpha=0.0, hard_inject=True))
    seen = []

    def keep(step, extracted, rendered):
        seen.append((step, {n: (tuple(e.shape), tuple(rendered[n].shape)) for n, e in extracted.items()}))
        return dict(rendered)

    kept = pipe(views(), cameras(), "a red box", "a blue box", callback_on_fit=keep, **kw)
    plain = pipe(views(), cameras(), "a red box", "a blue box", **kw)
    assert [s for s, _ in seen] == [1, 2, 3] and torch.equal(kept.images, plain.images)
    assert all(e == r and e[0] == VIEWS for _, shapes in seen for e, r in shapes.values())
    zeros = pipe(views(), cameras(), "a red box", "a blue box",
                 callback_on_fit=lambda s, e, r: {n: torch.zeros_like(m) for n, m in r.items()}, **kw)
    assert (zeros.images - plain.images).abs().max() > 1e-3  # the returned maps are what is injected
    with pytest.raises(ValueError, match="callback_on_fit returned .* for layer"):
        pipe(views(), cameras(), "a red box", "a blue box",
             callback_on_fit=lambda s, e, r: {n: m[:1] for n, m in r.items()}, **kw)


def test_alpha_zero_is_the_deterministic_per_view_edit_with_masactrl(parts):
    pipe = make_pipe(parts, False)
    kw = dict(num_inference_steps=STEPS, output_type="latent", view_batch=3)
    off = QNeRFConfig(alpha=0.0, kv_start_step=1)
    per_view = pipe(views(), cameras(), "a red box", "a blue box", qnerf=off, **kw)
    again = pipe(views(), cameras(), "a red box", "a blue box", qnerf=off, **kw)
    assert torch.equal(per_view.images, again.images)  # same inputs -> bit-identical
    single = pipe(views()[:1], cameras().select([0]), "a red box", "a blue box", qnerf=off, **kw)
    assert (single.images[0] - per_view.images[0]).abs().max() < 2e-3  # views meet only through QNeRF
    late = pipe(views(), cameras(), "a red box", "a blue box", qnerf=replace(off, kv_start_step=99), **kw)
    assert (late.images - per_view.images).abs().max() > 2e-2  # the source K/V shape the edit


# -- loading --------------------------------------------------------------------------------------
def test_from_pretrained_loads_the_shipped_layout_with_its_controlnet(parts, tmp_path):
    sd, controlnet = parts
    sd.save_pretrained(tmp_path)
    controlnet.save_pretrained(tmp_path / "controlnet-depth")
    pipe = MultiViewEditPipeline.from_pretrained(tmp_path)
    assert isinstance(pipe.controlnet, ControlNetModel) and not pipe.unet.training
    for a, b in zip(pipe.controlnet.parameters(), controlnet.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="has no unet/config.json"):
        MultiViewEditPipeline.from_pretrained(tmp_path / "missing")


def _write_scene(folder: Path, sizes: list[int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"v{i}.png" for i in range(len(sizes))]
    for name, s in zip(names, sizes, strict=True):
        PIL.Image.new("RGB", (s, s), (200, 30, 30)).save(folder / name)
    path = folder / "transforms.json"
    path.write_text(json.dumps(to_transforms(cameras(len(sizes)), names)))
    return path


def test_load_views_reads_images_and_cameras(tmp_path):
    images, cams = load_views(_write_scene(tmp_path, [SIZE] * 3))
    assert images.shape == (3, 3, SIZE, SIZE) and len(cams) == 3
    assert images[:, 0].max() == pytest.approx(200 / 127.5 - 1)
    assert torch.allclose(cams.c2w, cameras().c2w)


# -- bad inputs -----------------------------------------------------------------------------------
def test_bad_inputs_name_the_file_and_frame(parts, tmp_path):
    path = _write_scene(tmp_path / "sizes", [SIZE, SIZE, 8])
    with pytest.raises(ValueError, match=r"transforms.json: frames\[2\] \(.*v2.png\) is 8x8 but the "
                                         r"cameras are 16x16"):
        load_views(path)
    path = _write_scene(tmp_path / "pose", [SIZE] * 2)
    data = json.loads(path.read_text())
    del data["frames"][1]["transform_matrix"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"transforms.json: frames\[1\] has no 'transform_matrix'"):
        load_views(path)
    pipe = make_pipe(parts, False)
    with pytest.raises(ValueError, match="3 views but 2 camera poses"):
        pipe(views(), cameras(2), "a red box", "a blue box")
    small = [PIL.Image.new("RGB", (SIZE, SIZE)), PIL.Image.new("RGB", (8, 8))]
    with pytest.raises(ValueError, match=r"images\[1\] is 8x8 but images\[0\] is 16x16"):
        pipe(small, cameras(2), "a red box", "a blue box")
    with pytest.raises(ValueError, match="controls were given but this pipeline has no ControlNet"):
        pipe(views(), cameras(), "a red box", "a blue box", controls=controls())
    with pytest.raises(ValueError, match=r"controls has shape \(3, 3, 8, 8\)"):
        pipe(views(), cameras(), "a red box", "a blue box", controls=torch.zeros(3, 3, 8, 8))
