"""StyleTransferPipeline end to end on a tiny SD model (every mode, determinism, no injection gives the
content back, stage 2 with m = 0 / m = 1, the text route, bad input) and once on the shipped shapes
model; Canny edges on a synthetic square."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from attn_processors.style import StyleConfig
from attn_processors.testing.tiny import WORDS, tiny_clip_tokenizer, tiny_pipeline
from pipelines.colour_keep import keep_content_colours
from pipelines.style_transfer import StyleTransferPipeline, canny_edges

SHAPES = Path(__file__).resolve().parents[1] / "assets" / "shapes-sd"
STEPS = 6


@pytest.fixture(scope="module")
def pipe():
    sd = tiny_pipeline("sd15")
    tok = tiny_clip_tokenizer(WORDS + ("outline", "style"))
    return StyleTransferPipeline(sd.vae, sd.text_encoder, tok, sd.unet, sd.scheduler)


def _scene(fill, size: int = 32, outline: bool = False) -> Image.Image:
    im = Image.new("RGB", (size, size), (255, 255, 255) if outline else (220, 220, 220))
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    if outline:
        ImageDraw.Draw(im).ellipse(box, outline=fill, width=max(1, size // 32))
    else:
        ImageDraw.Draw(im).rectangle(box, fill=fill)
    return im


@pytest.fixture(scope="module")
def images():
    return _scene((200, 30, 30)), _scene((30, 30, 200), outline=True)


@pytest.fixture(scope="module")
def runs(pipe, images):
    """{mode: StyleResult} at seed 3, made once per module."""
    content, style = images
    return {m: pipe(content, style, config=StyleConfig(mode=m), seed=3, num_inference_steps=STEPS)
            for m in ("illusign", "style_id", "kv_swap", "style_aligned")}


@pytest.mark.parametrize("mode", ["illusign", "style_id", "kv_swap", "style_aligned"])
def test_every_mode_changes_the_output_and_without_injection_gives_its_start_image(pipe, images, runs, mode):
    """With the swap and AdaIN off, swap guidance adds nothing and the stored noises give back the
    image the output starts from (the content; IlluSign: the content's edges)."""
    content, style = images
    res = runs[mode]
    assert res.image.size == (32, 32) and res.latent.shape == (1, 4, 16, 16)
    assert res.config == StyleConfig(mode=mode).resolved()
    assert res.style.xts.shape == (STEPS + 1, 1, 4, 16, 16)
    off = StyleConfig(mode=mode, steps=(0.0, 0.0), adain_steps=(0.0, 0.0), adain_init=False)
    plain = pipe(content, style, config=off, seed=3, num_inference_steps=STEPS)
    start = pipe.encode([canny_edges(content) if mode == "illusign" else content])
    assert float(((plain.latent - start) ** 2).mean()) <= 1e-5
    assert (res.latent - plain.latent).abs().max() > 1e-3


def test_classifier_free_guidance_runs_each_half_with_its_own_donors(pipe, images):
    """guidance_scale > 1: the uncond and cond halves are two row groups; without injection the
    output is still the content."""
    content, style = images
    off = StyleConfig(mode="kv_swap", steps=(0.0, 0.0))
    res = pipe(content, style, config=off, guidance_scale=3.0, num_inference_steps=4)
    assert float(((res.latent - pipe.encode([content])) ** 2).mean()) <= 1e-5
    on = pipe(content, style, config=StyleConfig(mode="kv_swap"), guidance_scale=3.0, num_inference_steps=4)
    assert (on.latent - res.latent).abs().max() > 1e-3


def test_same_seed_same_picture(pipe, images, runs):
    content, style = images
    again = pipe(content, style, config=StyleConfig(mode="illusign"), seed=3, num_inference_steps=STEPS)
    assert np.array_equal(np.asarray(again.image), np.asarray(runs["illusign"].image))
    assert torch.equal(again.latent, runs["illusign"].latent)
    kept = pipe(content, style, config=StyleConfig(mode="illusign"), seed=3, num_inference_steps=STEPS,
                keep_colours=True)  # the same picture, its strokes recoloured from the content
    assert torch.equal(kept.latent, runs["illusign"].latent)
    assert np.array_equal(np.asarray(kept.image), np.asarray(keep_content_colours(again.image, content)))


def test_stage2_masks_select_the_start_or_the_end(pipe, images):
    content, style = images
    start = pipe(content, style, seed=0, num_inference_steps=4)
    end = pipe(_scene((30, 200, 30)), style, seed=0, num_inference_steps=4)
    start_only = np.asarray(pipe.combine(start, end, mode="start"))
    end_only = np.asarray(pipe.combine(start, end, mode="end"))
    assert not np.array_equal(start_only, end_only)
    assert np.array_equal(np.asarray(pipe.combine(start, end, mask=0.0, mode="query")), start_only)
    ones = np.ones((32, 32))
    assert np.array_equal(np.asarray(pipe.combine(start, end, mask=ones, mode="query")), end_only)
    hands = [np.zeros((32, 32)), np.zeros((32, 32))]
    hands[0][:8, :8] = 1
    fused = pipe.combine(start, end, hands, mode="max")  # m_dis + hand masks
    assert fused.size == (32, 32)
    with pytest.raises(ValueError, match="different num_inference_steps"):
        pipe.combine(start, dataclasses.replace(end, num_inference_steps=5))


def test_text_route_and_bad_input(pipe, images):
    content, style = images
    ref = pipe.text_route("a red square", "outline", seed=0, num_inference_steps=3)
    assert ref.size == (32, 32)
    with pytest.raises(ValueError, match=r"does not know the style word\(s\) \['hatched'\]"):
        pipe.text_route("a red square", "hatched")
    with pytest.raises(ValueError, match="one style word"):
        pipe.text_route("a red square", "very bold")
    with pytest.raises(ValueError, match="style image is missing"):
        pipe(content, None)
    with pytest.raises(ValueError, match="content=ndarray"):
        pipe(np.zeros((32, 32, 3)), style)
    with pytest.raises(ValueError, match=r"does not know: \['zebra'\]"):
        pipe(content, style, prompt="a zebra", num_inference_steps=2)


def test_canny_of_a_square_is_a_closed_black_contour_on_white():
    im = Image.new("RGB", (64, 64), (255, 255, 255))
    ImageDraw.Draw(im).rectangle((16, 16, 47, 47), fill=(200, 40, 40))
    edges = np.asarray(canny_edges(im))[..., 0]
    assert set(np.unique(edges).tolist()) == {0, 255}
    ink = edges == 0
    assert ink.mean() < 0.1 and edges[0, 0] == 255 and edges[32, 32] == 255
    _, n_white = ndimage.label(~ink)  # 4-connected paper regions: outside and the square's inside
    assert n_white == 2
    ys, xs = np.nonzero(ink)
    assert ys.min() >= 14 and ys.max() <= 49 and xs.min() >= 14 and xs.max() <= 49  # on the border
    assert not np.asarray(canny_edges(Image.new("RGB", (64, 64), (90, 90, 90)))).min() < 255  # flat: none


@pytest.mark.slow
def test_shipped_model_runs_end_to_end():
    from worlds.shapes.render import SceneObject
    from worlds.shapes.styles import render_styled

    pipe = StyleTransferPipeline.from_pretrained(SHAPES)
    scene = [SceneObject("red", "circle", (0.2, 0.2, 0.6, 0.6))]
    content = Image.fromarray(render_styled(scene, "flat"))
    style = Image.fromarray(render_styled([SceneObject("blue", "square", (0.3, 0.3, 0.8, 0.8))], "outline"))
    res = pipe(content, style, prompt="a red circle", num_inference_steps=10)
    assert res.image.size == (64, 64) and res.edges is not None
    with pytest.raises(ValueError, match=r"\['outline', 'style'\]"):
        pipe.text_route("a red circle", "outline")  # the shipped model never saw style words
    assert torch.isfinite(res.latent).all()
