"""Components of the 3D world's models: they build, run and save/reload with plain Diffusers calls offline."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionControlNetPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPVisionModelWithProjection

from worlds.shapes3d.models import (
    WORDS3D,
    CCProjection,
    build_cc_projection,
    build_controlnet,
    build_image_encoder,
    build_t2i_unet,
    build_text_encoder3d,
    build_tokenizer3d,
    build_world_vae,
    build_zero123_unet,
    condition_tokens,
    count_parameters,
    depth_control,
    pose_embedding,
    sample_scheduler,
    scene_caption,
)
from worlds.shapes3d.render import render
from worlds.shapes3d.scene import View, sample_scene


def _images(n: int = 2) -> torch.Tensor:
    scene = sample_scene(0, 2)
    rgb = torch.stack([render(scene.objects, v).rgb for v in scene.views[:n]])  # (n, 64, 64, 3)
    return rgb.permute(0, 3, 1, 2).float() / 127.5 - 1


def test_zero123_components_run_and_reload_bit_identically(tmp_path):
    torch.manual_seed(0)
    unet, enc, cc, vae = (m.eval() for m in (build_zero123_unet(), build_image_encoder(),
                                             build_cc_projection(), build_world_vae()))
    assert 3.0e6 < count_parameters(unet) < 3.5e6 and 0.5e6 < count_parameters(enc) < 0.8e6
    assert cc.projection.weight.shape == (128, 132)
    x = _images()
    views = sample_scene(0, 2).views
    poses = torch.stack([pose_embedding(views[0], views[1]), pose_embedding(views[1], views[0])])

    def forward(unet, enc, cc, vae) -> torch.Tensor:
        with torch.no_grad():
            src = vae.encode(x).latent_dist.mode()  # (2, 4, 16, 16)
            tokens = condition_tokens(enc, cc, x, poses)  # (2, 1, 128)
            noisy = torch.randn(src.shape, generator=torch.Generator().manual_seed(1))
            return unet(torch.cat([noisy, src], 1), torch.tensor([10, 500]), tokens).sample

    out = forward(unet, enc, cc, vae)
    assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all()
    for name, module in (("unet", unet), ("image_encoder", enc), ("cc_projection", cc), ("vae", vae)):
        module.save_pretrained(tmp_path / name)
    sample_scheduler().save_pretrained(tmp_path / "scheduler")
    again = (UNet2DConditionModel.from_pretrained(tmp_path / "unet"),
             CLIPVisionModelWithProjection.from_pretrained(tmp_path / "image_encoder"),
             CCProjection.from_pretrained(tmp_path / "cc_projection"),
             AutoencoderKL.from_pretrained(tmp_path / "vae"))
    assert torch.equal(forward(*again), out)
    assert again[2].config.in_channel == 132 and again[2].config.out_channel == 128
    sched = DDIMScheduler.from_pretrained(tmp_path / "scheduler")
    assert (sched.config.beta_schedule, sched.config.beta_start, sched.config.beta_end) == (
        "scaled_linear", 0.00085, 0.012)


def test_pose_embedding_convention():
    src = View(20, 30, 2.4)
    assert pose_embedding(src, src).tolist() == pytest.approx([0, 0, 1, 0], abs=1e-7)
    t = pose_embedding(src, View(30, 120, 2.0))
    # polar = 90 - elevation: the camera going up 10 degrees is a polar change of -10 degrees
    assert t.tolist() == pytest.approx([math.radians(-10), 1.0, 0.0, -0.4], abs=1e-6)


def test_depth_control_is_normalised_inverse_depth():
    out = render(sample_scene(0, 0).objects, View(20, 0, 2.4))
    ctrl = depth_control(out.depth)
    assert ctrl.shape == (3, 64, 64) and ctrl.max() == 1.0 and ctrl.min() >= 0
    assert (ctrl[0][torch.isinf(out.depth)] == 0).all()
    near, far = out.depth.argmin(), out.depth[torch.isfinite(out.depth)].argmax()
    assert ctrl[0].flatten()[near] == 1.0 and ctrl[0][torch.isfinite(out.depth)][far] < 0.5


def test_tokenizer_has_one_token_per_3d_word():
    tok = build_tokenizer3d()
    for word in WORDS3D:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1
    scene = sample_scene(0, 0)
    text = scene_caption(scene.objects)
    assert text.startswith("a ") and all(o.shape in text and o.colour in text for o in scene.objects)


def test_depth_controlnet_pipeline_runs_and_reloads_offline(tmp_path):
    torch.manual_seed(0)
    tok = build_tokenizer3d()
    unet = build_t2i_unet()
    controlnet = build_controlnet(unet)
    assert 1.4e6 < count_parameters(controlnet) < 1.8e6
    pipe = StableDiffusionControlNetPipeline(
        vae=build_world_vae(), text_encoder=build_text_encoder3d(tok), tokenizer=tok, unet=unet,
        controlnet=controlnet, scheduler=sample_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    depth = render(sample_scene(0, 0).objects, View(20, 0, 2.4)).depth
    control = depth_control(depth)[None]  # (1, 3, 64, 64)

    def run(p: StableDiffusionControlNetPipeline) -> torch.Tensor:
        return p("a red cube and a blue sphere", image=control, num_inference_steps=2, guidance_scale=4.0,
                 height=64, width=64, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images

    img = run(pipe)
    assert img.shape == (1, 3, 64, 64)
    pipe.save_pretrained(tmp_path / "sd3d")
    again = StableDiffusionControlNetPipeline.from_pretrained(tmp_path / "sd3d", local_files_only=True)
    again.set_progress_bar_config(disable=True)
    assert torch.equal(run(again), img)
    assert isinstance(ControlNetModel.from_pretrained(tmp_path / "sd3d" / "controlnet"), ControlNetModel)
