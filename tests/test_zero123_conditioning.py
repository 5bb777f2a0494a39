"""Zero-1-to-3 conditioning in our pipeline: the pose vector (the original formula and the 3D world's
convention), the cc_projection token, the unscaled input latent, zeroed unconditional inputs, CLIP
preprocessing against an independent bicubic (align_corners=True) implementation, and bad input."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch

from attn_processors.testing.tiny_zero123 import save_tiny_zero123
from pipelines.zero123 import CLIP_MEAN, CLIP_STD, Zero123Pipeline, check_poses, clip_preprocess, pose_vectors


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = save_tiny_zero123(tmp_path_factory.mktemp("z123"))
    p = Zero123Pipeline.from_pretrained(folder, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


def _image(mode="RGB", size=(16, 16), seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    return PIL.Image.fromarray(pixels, "RGBA").convert(mode)


def test_pose_vector_is_the_original_formula():
    poses = [(10.0, 90.0, 0.1), (-30.0, -135.0, -0.2), (0.0, 0.0, 0.0)]
    got = pose_vectors(check_poses(poses))
    for row, (x, y, z) in zip(got.tolist(), poses, strict=True):  # zero123/gradio_new.py sample_model
        want = [math.radians(x), math.sin(math.radians(y)), math.cos(math.radians(y)), z]
        assert row == pytest.approx(want, abs=1e-12)
    assert got[2].tolist() == [0.0, 0.0, 1.0, 0.0]  # the identity pose of the source branch


def test_pose_vector_matches_the_3d_worlds_convention():
    from worlds.shapes3d.models import pose_embedding
    from worlds.shapes3d.scene import View

    src, tgt = View(elevation=20.0, azimuth=30.0, radius=2.4), View(elevation=35.0, azimuth=300.0, radius=2.2)
    triple = ((90 - tgt.elevation) - (90 - src.elevation), tgt.azimuth - src.azimuth, tgt.radius - src.radius)
    ours = pose_vectors(check_poses([triple]))[0].float()
    torch.testing.assert_close(ours, pose_embedding(src, tgt).float())


def _bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """(n_out, n_in) cubic-convolution weights (Keys, a = -0.75) with align_corners=True sampling."""
    def w(x):
        x = abs(x)
        return (a + 2) * x**3 - (a + 3) * x**2 + 1 if x <= 1 else (a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
                                                                     if x < 2 else 0.0)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        s = i * (n_in - 1) / (n_out - 1)
        f = math.floor(s)
        for j in range(f - 1, f + 3):
            m[i, min(max(j, 0), n_in - 1)] += w(s - j)
    return m


def test_clip_preprocessing_is_bicubic_align_corners_then_clip_normalisation(pipe):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    m = _bicubic_matrix(16, 32)
    resized = np.einsum("oi,cij,pj->cop", m, x[0].double().numpy(), m)  # (3, 32, 32)
    want = (((resized + 1) / 2) - np.array(CLIP_MEAN)[:, None, None]) / np.array(CLIP_STD)[:, None, None]
    got = clip_preprocess(x, 32)
    np.testing.assert_allclose(got[0].double().numpy(), want, atol=1e-5, rtol=0)
    seen = []
    hook = pipe.image_encoder.register_forward_pre_hook(lambda mod, a, kw: seen.append(a[0] if a else kw[
        "pixel_values"]), with_kwargs=True)
    try:
        pipe.condition(x, check_poses([(0.0, 0.0, 0.0)]))
    finally:
        hook.remove()
    np.testing.assert_allclose(seen[0][0].double().numpy(), want, atol=1e-5, rtol=0)


@torch.no_grad()
def test_projection_token_and_unscaled_input_latent(pipe):
    x = pipe.prepare_image(_image(), [])
    poses = check_poses([(10.0, 90.0, 0.0), (-5.0, 45.0, 0.1)])
    tokens, latent = pipe.condition(x, poses)
    embeds = pipe.image_encoder(clip_preprocess(x, 32)).image_embeds  # (1, 32)
    w, b = pipe.cc_projection.projection.weight, pipe.cc_projection.projection.bias
    for i, vec in enumerate(pose_vectors(poses).float()):
        want = w @ torch.cat([embeds[0], vec]) + b  # [embedding (32), pose (4)] -> token (32)
        torch.testing.assert_close(tokens[i, 0], want, atol=1e-5, rtol=0)
    assert tokens.shape == (2, 1, 32)
    torch.testing.assert_close(latent, pipe.vae.encode(x).latent_dist.mode(), atol=0, rtol=0)  # no 0.18215


@torch.no_grad()
def test_unconditional_rows_are_zeroed_and_rows_are_labelled(pipe):
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a, kw: seen.append((a[0].clone(), kw[
        "encoder_hidden_states"].clone())), with_kwargs=True)
    try:
        pipe(_image(), [(10.0, 90.0, 0.0), (0.0, 180.0, 0.0)], num_inference_steps=2, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    sample, ehs = seen[0]
    assert sample.shape == (4, 8, 8, 8) and ehs.shape == (4, 1, 32)  # [uncond x 2, cond x 2]
    assert not sample[:2, 4:].any() and not ehs[:2].any()  # zero latent and zero token
    _, latent = pipe.condition(pipe.prepare_image(_image(), []), check_poses([(0.0, 0.0, 0.0)]))
    torch.testing.assert_close(sample[2:, 4:], latent.expand(2, -1, -1, -1), atol=0, rtol=0)
    torch.testing.assert_close(sample[2:, :4], sample[:2, :4], atol=0, rtol=0)  # same noisy latent per half


def test_non_rgb_and_resized_images_are_converted_with_a_note(pipe):
    for mode, note in (("RGBA", "composited on white"), ("L", "mode L: converted to RGB"),
                       ("P", "converted to RGB")):
        notes = []
        x = pipe.prepare_image(_image(mode), notes)
        assert x.shape == (1, 3, 16, 16) and any(note in n for n in notes), (mode, notes)
    transparent = PIL.Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    assert torch.allclose(pipe.prepare_image(transparent, []), torch.ones(1, 3, 16, 16))  # white background
    notes = []
    assert pipe.prepare_image(_image(size=(40, 40)), notes).shape == (1, 3, 16, 16)
    assert notes == ["input image 40x40: resized (bicubic) to 16x16"]
    out = pipe(_image("RGBA"), [(0.0, 30.0, 0.0)], num_inference_steps=1, output_type="latent")
    assert out.notes == ["input image mode RGBA: composited on white to RGB"]


@pytest.mark.parametrize("image, message", [
    (_image(size=(16, 12)), "input image is 16x12; Zero-1-to-3 takes a square view"),
    (torch.zeros(4, 16, 16), r"image tensor of shape \(4, 16, 16\); give \(3, 16, 16\)"),
    (torch.zeros(3, 32, 32), r"image tensor of shape \(3, 32, 32\)"),
    (torch.full((3, 16, 16), 200.0), r"values span \[200, 200\]; give values in \[-1, 1\]"),
    ("cat.png", "image of type str; give a PIL image"),
])
def test_bad_images_are_rejected_clearly(pipe, image, message):
    with pytest.raises(ValueError, match=message):
        pipe.prepare_image(image, [])


@pytest.mark.parametrize("poses, message", [
    ([(200.0, 0.0, 0.0)], r"poses\[0\] d polar = 200.0 outside \[-180.0, 180.0\]"),
    ([(0.0, 10.0, 0.0), (0.0, 400.0, 0.0)], r"poses\[1\] d azimuth = 400.0 outside \[-360.0, 360.0\]"),
    ([(0.0, 0.0, 5.0)], r"poses\[0\] d radius = 5.0 outside \[-1.0, 1.0\]"),
    ([(float("nan"), 0.0, 0.0)], r"poses\[0\] d polar = nan"),
    ((10.0, 90.0, 0.0), r"is one pose; give a list of .* e.g. poses=\[\(10.0, 90.0, 0.0\)\]"),
    ([(1.0, 2.0)], "give a non-empty list of"),
    ([], "give a non-empty list of"),
])
def test_bad_poses_raise_value_errors_naming_them(pipe, poses, message):
    with pytest.raises(ValueError, match=message):
        pipe(_image(), poses, num_inference_steps=1)
