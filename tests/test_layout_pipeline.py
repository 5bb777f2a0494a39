"""LayoutToImagePipeline on a tiny SD-architecture model: identity with control off, redistribution
invariants inside a real UNet, guidance effect, reproducibility, layer choice and bad input."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from attn_processors.core import Controller, apply, build_sites
from attn_processors.layout.technique import STORE, LayoutConfig, LayoutProcessor, layout_factor
from pipelines.layout_to_image import LayoutToImagePipeline, layout_panel
from worlds.shapes.tokenizer import build_tokenizer

PROMPT = "a red circle and a blue square"
PHRASES = ["red circle", "blue square"]
BOXES = [(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)]


def tiny_components(seed: int = 0) -> dict:
    """SD-1.x classes at toy size: latent 16x16, cross-attention at latent/1, /2, /4 (down and up)."""
    torch.manual_seed(seed)
    tok = build_tokenizer()
    unet = UNet2DConditionModel(block_out_channels=(32, 32, 64, 64), layers_per_block=1,
                                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
                                sample_size=16)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        max_position_embeddings=tok.model_max_length,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id))
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                        sample_size=32)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet.eval(), text_encoder=text.eval(), tokenizer=tok, vae=vae.eval(), scheduler=sched)


@pytest.fixture(scope="module")
def pipes():
    comps = tiny_components()
    stock = StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    ours = LayoutToImagePipeline.from_pipe(stock)
    ours.set_progress_bar_config(disable=True)
    return stock, ours


def test_control_off_equals_stock_pipeline(pipes):
    stock, ours = pipes
    kw = dict(num_inference_steps=4, guidance_scale=7.5, output_type="np")
    ref = stock(PROMPT, generator=torch.Generator().manual_seed(3), **kw).images
    plain = ours(PROMPT, mode="none", generator=torch.Generator().manual_seed(3), **kw).images
    off = ours(PROMPT, boxes=BOXES, phrases=PHRASES, mode="none", generator=torch.Generator().manual_seed(3),
               **kw).images
    assert abs(plain - ref).max() <= 1e-5
    assert abs(off - ref).max() <= 1e-5  # processors installed, inactive: stock fast path
    # processors are restored afterwards: a stock call is unchanged
    again = stock(PROMPT, generator=torch.Generator().manual_seed(3), **kw).images
    assert abs(again - ref).max() == 0


def test_redistribution_inside_the_unet(pipes):
    """At the layout cross layers of redistributed steps, every layout token has zero attention outside
    its box and rows sum to 1; at later steps and other layers the maps are untouched."""
    _, ours = pipes
    unet = ours.unet
    cfg = ours.layout_config(PROMPT, PHRASES, BOXES, redistribute_last_step=0)
    seen: dict[tuple[str, int], torch.Tensor] = {}
    orig = LayoutProcessor._redistribute

    def spy(self, probs, call):
        out = orig(self, probs, call)
        seen[(self.site.name, call.step)] = out
        return out

    LayoutProcessor._redistribute = spy
    try:
        ours(PROMPT, layout=cfg, mode="redistribution", num_inference_steps=3, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    finally:
        LayoutProcessor._redistribute = orig
    sites = build_sites(unet)
    factor = layout_factor(sites, None)
    cross = {s.name for s in sites if s.kind == "cross" and s.res_factor == factor}
    assert {name for name, _ in seen} == cross and {step for _, step in seen} == {0}
    hw = (16 // factor, 16 // factor)
    masks = cfg.masks(hw)
    for probs in seen.values():  # (B, H, N, K)
        assert (probs.sum(-1) - 1).abs().max() <= 1e-6
        for j, group in enumerate(cfg.token_groups):
            for t in group:
                assert (probs[..., t][..., masks[j] == 0] == 0).all()


def test_uncond_flag_limits_rows(pipes):
    _, ours = pipes
    unet = ours.unet
    ctrl = Controller()
    base = ours.layout_config(PROMPT, PHRASES, BOXES)
    for flag in (True, False):
        cfg = LayoutConfig(**{**base.__dict__, "redistribute_uncond": flag})
        with apply(unet, cfg, controller=ctrl):
            proc = next(p for p in unet.attn_processors.values() if isinstance(p, LayoutProcessor)
                        and p.site.kind == "cross")
            probs = torch.softmax(torch.randn(2, 2, (16 // proc.site.res_factor) ** 2, 16), -1)
            ctrl.begin_run(1, (16, 16))
            ctrl.begin_step(0, 999)
            ctrl.mode = "denoise"
            ctrl.set_branch(("uncond", "cond"))
            from attn_processors.core.processor import CallInfo
            call = CallInfo(proc.site, ctrl, 2, 2, 8, probs.shape[2], 16, 0, None, ctrl.row_labels(2),
                            (16 // proc.site.res_factor,) * 2, None)
            out = proc.edit_probs(probs, call)
        assert not torch.equal(out[1], probs[1])
        assert torch.equal(out[0], probs[0]) is (not flag)


def test_layer_choice_by_relative_resolution(pipes):
    _, ours = pipes
    sites = build_sites(ours.unet)
    assert layout_factor(sites, None) == 4  # up_blocks.1: latent / 4, the "16x16 at 512 px" layers
    assert layout_factor(sites, 2) == 2
    with pytest.raises(ValueError, match="cross-attention at latent"):
        layout_factor(sites, 3)
    with apply(ours.unet, ours.layout_config(PROMPT, PHRASES, BOXES), controller=Controller()):
        procs = {k.removesuffix(".processor"): p for k, p in ours.unet.attn_processors.items()
                 if isinstance(p, LayoutProcessor)}
    loss = sorted(n for n, p in procs.items() if p.is_loss_layer)
    assert loss == ["up_blocks.1.attentions.0.transformer_blocks.0.attn1",
                    "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
                    "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
                    "up_blocks.1.attentions.1.transformer_blocks.0.attn2"]
    assert sorted(n for n, p in procs.items() if not p.is_loss_layer) == [
        "down_blocks.2.attentions.0.transformer_blocks.0.attn2"]


def _in_box_ratio(maps: torch.Tensor, cfg: LayoutConfig) -> float:
    """Mean over phrases of (attention mass inside the box) / (total), maps (n, h, w)."""
    m = cfg.masks(tuple(maps.shape[1:])).reshape(maps.shape)
    return float(((maps * m).flatten(1).sum(1) / maps.flatten(1).sum(1)).mean())


def test_guidance_reduces_the_loss_and_is_reproducible(pipes):
    """Latent guidance (the paper's loss-guided update of z_t): 6 updates at the first step reduce the
    CSG loss on >= 7/8 seeds and raise the phrases' in-box attention (next CFG forward) by >= 0.02 on
    average (tiny random net: large step size; measured: loss drops 1.6-2.5 from ~10, in-box gain
    +0.019..+0.029, 8/8 seeds)."""
    _, ours = pipes
    cfg = ours.layout_config(PROMPT, PHRASES, BOXES, guided_steps=1, iterations=6, scale_factor=100.0)
    drops, gains = [], []
    for seed in range(8):
        ratio = {}
        for mode in ("none", "guidance"):
            out = ours(PROMPT, layout=cfg, mode=mode, num_inference_steps=1, output_type="latent",
                       generator=torch.Generator().manual_seed(seed), return_attention_maps=True)
            ratio[mode] = _in_box_ratio(out.attention_maps, cfg)
        assert [(s, i) for s, i, _ in out.losses] == [(0, i) for i in range(6)]
        drops.append(out.losses[0][2] - out.losses[-1][2])
        gains.append(ratio["guidance"] - ratio["none"])
    assert sum(d > 0 for d in drops) >= 7, drops
    assert sum(g > 0 for g in gains) >= 7 and sum(gains) / 8 >= 0.02, gains
    kw = dict(boxes=BOXES, phrases=PHRASES, num_inference_steps=3, output_type="latent",
              layout_params=dict(guided_steps=2, iterations=2, scale_factor=50.0, res_factor=2))
    a = ours(PROMPT, generator=torch.Generator().manual_seed(5), **kw)
    b = ours(PROMPT, generator=torch.Generator().manual_seed(5), **kw)
    c = ours(PROMPT, generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a.images, b.images) and a.losses == b.losses
    assert not torch.equal(a.images, c.images)
    # stopping guidance forwards after the last loss layer changes neither loss nor gradient
    kw["layout_params"] = {**kw["layout_params"], "early_exit": False}
    d = ours(PROMPT, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.allclose(a.images, d.images, atol=1e-6) and a.losses == d.losses


def test_guidance_leaves_parameter_flags_as_it_found_them(pipes):
    """Guidance freezes the UNet's parameters (only the latent needs a gradient) and restores each
    flag afterwards, also when the call fails part-way."""
    _, ours = pipes
    unet = ours.unet
    unet.conv_in.weight.requires_grad_(False)  # a user's own choice must survive too
    kw = dict(boxes=BOXES, phrases=PHRASES, num_inference_steps=2, output_type="latent",
              layout_params=dict(guided_steps=1, iterations=1, scale_factor=50.0))
    before = {n: q.requires_grad for n, q in unet.named_parameters()}
    try:
        ours(PROMPT, generator=torch.Generator().manual_seed(0), **kw)
        assert {n: q.requires_grad for n, q in unet.named_parameters()} == before

        def fail(*args):
            assert not any(q.requires_grad for q in unet.parameters())  # frozen during the run
            raise RuntimeError("stop")

        with pytest.raises(RuntimeError, match="stop"):
            ours(PROMPT, generator=torch.Generator().manual_seed(0), callback_on_step_end=fail, **kw)
        assert {n: q.requires_grad for n, q in unet.named_parameters()} == before
    finally:
        unet.conv_in.weight.requires_grad_(True)


def test_attention_maps_and_panel(pipes):
    _, ours = pipes
    out = ours(PROMPT, boxes=BOXES, phrases=PHRASES, mode="redistribution", num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), return_attention_maps=True)
    assert out.attention_maps.shape == (2, 4, 4)
    # redistributed at every step here: phrase maps vanish outside their boxes
    assert out.attention_maps[0, 2:, :].abs().max() == 0 and out.attention_maps[0, :2, :2].min() > 0
    panel = layout_panel(ours, PROMPT, PHRASES, BOXES, num_inference_steps=2, size=64,
                         layout_params=dict(iterations=1, guided_steps=1))
    assert panel.size == (136, 82)


def test_from_pretrained_roundtrip(pipes, tmp_path):
    stock, _ = pipes
    stock.save_pretrained(tmp_path)
    pipe = LayoutToImagePipeline.from_pretrained(tmp_path)
    assert isinstance(pipe.unet, UNet2DConditionModel) and not pipe.is_xl


def test_bad_input_raises(pipes):
    _, ours = pipes
    with pytest.raises(ValueError, match="2 boxes for 1 phrases"):
        ours(PROMPT, boxes=BOXES, phrases=PHRASES[:1])
    with pytest.raises(ValueError, match="outside"):
        ours(PROMPT, boxes=[(0, 0, 2, 0.5), BOXES[1]], phrases=PHRASES)
    with pytest.raises(ValueError, match="empty"):
        ours(PROMPT, boxes=[(0.5, 0, 0.5, 0.5), BOXES[1]], phrases=PHRASES)
    with pytest.raises(ValueError, match=r"not found.*tokens"):
        ours(PROMPT, boxes=BOXES, phrases=["green triangle", "blue square"])
    with pytest.raises(ValueError, match="at most 16"):
        ours(", ".join(["a red circle"] * 6), boxes=BOXES[:1], phrases=["red circle"])
    with pytest.raises(ValueError, match="mode="):
        ours(PROMPT, boxes=BOXES, phrases=PHRASES, mode="boxes")
    with pytest.raises(ValueError, match="needs boxes"):
        ours(PROMPT, mode="full")
    with pytest.raises(ValueError, match="image_hw"):
        ours.layout_config(PROMPT, PHRASES, [(0, 0, 32, 32), (32, 32, 64, 64)], boxes_in_pixels=True)
    cfg = ours.layout_config(PROMPT, PHRASES, [(0, 0, 32, 32), (32, 32, 64, 64)], boxes_in_pixels=True,
                             image_hw=(64, 64))
    assert cfg.boxes == tuple(BOXES)
    assert STORE == "layout"


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(height=-64), r"height=-64; give a positive multiple of 2 pixels .* e\.g\. height=32"),
    (dict(width=33), r"width=33; give a positive multiple of 2 pixels"),
    (dict(height=0), r"height=0; give a positive multiple"),
    (dict(num_inference_steps=0), r"num_inference_steps=0; give a positive integer number of denoising"),
    (dict(num_inference_steps=-5), r"num_inference_steps=-5; give a positive integer"),
    (dict(num_inference_steps=2.5), r"num_inference_steps=2\.5; give a positive integer"),
    (dict(guidance_scale=float("nan")), r"guidance_scale=nan; give a finite number"),
    (dict(phrases="red circle", boxes=BOXES[:1]),
     r"phrases='red circle' is one string; give a list with one phrase per box, "
     r"e\.g\. phrases=\['red circle'\]"),
    (dict(layout_params={"keep": 0.3}),
     r"unknown LayoutConfig parameters \['keep'\]; use some of \[.*'keep_fraction'"),
    (dict(layout_params={"on_empty": "skip"}), r"on_empty='skip'; use one of \('repair', 'error'\)"),
    (dict(output_type="numpy"), r"output_type='numpy'; use one of \('pil', 'np', 'pt', 'latent'\)"),
])
def test_bad_call_arguments_name_the_value_and_the_fix(pipes, kwargs, message):
    """Each raises one ValueError before any UNet work (no negative-dimension RuntimeError, no
    ZeroDivisionError in the scheduler, no image from -5 steps)."""
    _, ours = pipes
    call = dict(boxes=BOXES, phrases=PHRASES, output_type="latent")
    with pytest.raises(ValueError, match=message):
        ours(PROMPT, generator=torch.Generator().manual_seed(0), **{**call, **kwargs})


def test_layout_config_options_are_named_choices():
    base = dict(boxes=((0.0, 0.0, 0.5, 0.5),), token_groups=((1,),))
    assert LayoutConfig(**base).keep_fraction == 0.5 and LayoutConfig(**base).on_empty == "repair"
    with pytest.raises(ValueError, match=r"loss_places=\('middle',\); give one or more of \('down', 'mid'"):
        LayoutConfig(**base, loss_places=("middle",))
    with pytest.raises(ValueError, match=r"keep_fraction=1\.5 must be a fraction in \(0, 1\]"):
        LayoutConfig(**base, keep_fraction=1.5)
    with pytest.raises(ValueError, match=r"guided_steps=-1 must be >= 0"):
        LayoutConfig(**base, guided_steps=-1)
    with pytest.raises(TypeError, match="keep"):
        LayoutConfig(**base, keep=0.5)  # the old name is gone: keep_fraction


def test_sdxl_identity_and_layout_run():
    from attn_processors.testing.tiny import tiny_pipeline

    stock = tiny_pipeline("sdxl")
    stock.set_progress_bar_config(disable=True)
    ours = LayoutToImagePipeline.from_pipe(stock)
    ours.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=2, height=64, width=64, guidance_scale=5.0, output_type="np")
    ref = stock(PROMPT, generator=torch.Generator().manual_seed(1), **kw).images
    off = ours(PROMPT, boxes=BOXES, phrases=PHRASES, mode="none", generator=torch.Generator().manual_seed(1),
               **kw).images
    assert ours.is_xl and abs(off - ref).max() <= 1e-5
    assert layout_factor(build_sites(ours.unet), None) == 2  # SDXL-shaped: coarsest up cross level
    out = ours(PROMPT, boxes=BOXES, phrases=PHRASES, mode="full", generator=torch.Generator().manual_seed(1),
               layout_params=dict(guided_steps=1, iterations=1), **kw)
    assert len(out.losses) == 1 and abs(out.images - ref).max() > 0


def test_real_architectures_pick_the_reference_layers():
    """SD 1.x at full size (meta device, no weights): redistribution on the 16x16-at-512px cross layers
    (down_blocks.2 x2, up_blocks.1 x3), losses on up_blocks.1 self+cross, as the official code.
    SDXL: its latent/4 level (32x32 at 1024 px) incl. the mid block; losses on up_blocks.0."""
    from attn_processors.layout.technique import _install_layout

    with torch.device("meta"):
        sd = UNet2DConditionModel(cross_attention_dim=768)
        xl = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, use_linear_projection=True)
    cfg = LayoutConfig(boxes=((0.0, 0.0, 0.5, 0.5),), token_groups=((2,),))
    expected = {
        sd: ({"down_blocks.2.attentions.0", "down_blocks.2.attentions.1"}, {"up_blocks.1.attentions.0",
             "up_blocks.1.attentions.1", "up_blocks.1.attentions.2"}, 8),
        xl: ({"down_blocks.2.attentions.0", "down_blocks.2.attentions.1", "mid_block.attentions.0"},
             {"up_blocks.0.attentions.0", "up_blocks.0.attentions.1", "up_blocks.0.attentions.2"}, 90),
    }
    for model, (redist_only, loss, count) in expected.items():
        sites = build_sites(model)
        assert layout_factor(sites, None) == 4
        procs = _install_layout(cfg, sites, Controller())
        blocks = {n.split(".transformer_blocks")[0]: p.is_loss_layer for n, p in procs.items()}
        assert {b for b, is_loss in blocks.items() if not is_loss} == redist_only
        assert {b for b, is_loss in blocks.items() if is_loss} == loss and len(procs) == count


def test_stock_pipeline_with_apply_equals_redistribution_mode(pipes):
    """`with apply(stock_pipe, LayoutConfig)` (controller driven by the stock loop) redistributes exactly
    as our pipeline's mode="redistribution"."""
    stock, ours = pipes
    cfg = ours.layout_config(PROMPT, PHRASES, BOXES)
    kw = dict(num_inference_steps=3, guidance_scale=7.5, output_type="np")
    with apply(stock, cfg):
        a = stock(PROMPT, generator=torch.Generator().manual_seed(2), **kw).images
    b = ours(PROMPT, layout=cfg, mode="redistribution", generator=torch.Generator().manual_seed(2),
             **kw).images
    plain = stock(PROMPT, generator=torch.Generator().manual_seed(2), **kw).images
    assert abs(a - b).max() <= 1e-6 and abs(a - plain).max() > 1e-4
