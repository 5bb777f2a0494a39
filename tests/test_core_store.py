"""AttentionStore and token heatmaps: what is recorded, where, in which layout; rendering."""

import pytest
import torch
from PIL import Image

from attn_processors.core import Select, apply
from attn_processors.core.store import AttentionStore, StoreConfig, attention_maps, render_token_heatmaps
from attn_processors.testing.tiny import denoiser_inputs, tiny_denoiser


@torch.no_grad()
def test_store_records_cross_maps_per_layer_and_step_only_where_asked():
    model = tiny_denoiser("sd15")
    kw = denoiser_inputs("sd15", model)
    ref = model(**kw)[0]
    cfg = StoreConfig(layers=Select(kinds=("cross",)), steps=(1,), aggregate="steps")
    with apply(model, cfg) as ctrl:
        ctrl.begin_run(2, latent_hw=(16, 12))
        for i in range(2):
            ctrl.begin_step(i, 900 - 400 * i)
            ctrl.set_branch(("uncond", "cond"))
            out = model(**kw)[0]
    assert (out - ref).abs().max() <= 1e-5  # recording does not change the result
    store: AttentionStore = ctrl.stores["attention"]
    cross = [s for s in model.attn_processors if "attn2" in s]
    assert sorted(store.by_step) == sorted((k.removesuffix(".processor"), 1) for k in cross)
    rec = store.by_step[("down_blocks.0.attentions.0.transformer_blocks.0.attn2", 1)]
    assert rec.probs.dtype == torch.float16 and rec.probs.device.type == "cpu"
    assert rec.probs.shape == (1, 16 * 12, 8) and rec.grid == (1, 16, 12)  # cond row only, 8 text tokens
    # text mask of denoiser_inputs: row 1 (cond) attends to all 8 tokens, rows sum to 1
    assert torch.allclose(rec.probs.float().sum(-1), torch.ones(1, 192), atol=2e-3)
    maps = store.token_maps()
    assert maps.shape == (8, 16, 12)


@torch.no_grad()
def test_store_running_mean_and_joint_block_for_flux():
    model = tiny_denoiser("flux")
    kw = denoiser_inputs("flux", model)
    with apply(model, StoreConfig()) as ctrl:
        for i in range(3):
            ctrl.begin_step(i, 1.0 - i / 3)
            ctrl.set_branch(("cond",))
            model(**kw)
    store = ctrl.stores["attention"]
    assert set(store.mean) == {"transformer_blocks.0.attn", "single_transformer_blocks.0.attn"}
    assert all(n == 3 for n in store.counts.values())
    for rec in store.mean.values():  # image queries (4x4) over the 8 text keys
        assert rec.kind == "cross" and rec.grid == (1, 4, 4) and rec.probs.shape == (1, 16, 8)
        assert (rec.probs.sum(-1) < 1).all()  # the text block of a joint softmax: a part of each row


def test_render_token_heatmaps_puts_heat_where_attention_is():
    image = Image.new("RGB", (64, 64), "gray")
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = 1.0  # token 0 looks at the top-left
    maps[1, 3, 3] = 1.0  # token 1 at the bottom-right
    tiles = render_token_heatmaps(image, maps, ["cat", "car"], label=False)
    assert [t.size for t in tiles] == [(128, 128)] * 2  # small images are enlarged for readability
    tl, br = tiles[0].getpixel((2, 2)), tiles[0].getpixel((125, 125))
    assert tl[0] > tl[2] and br[2] > br[0]  # red (hot) top-left, blue (cold) bottom-right
    with pytest.raises(ValueError, match="tokens"):
        render_token_heatmaps(image, maps, ["cat"])


def test_attention_maps_on_tiny_sd15(tiny_pipe_cache, tmp_path):
    pipe = tiny_pipe_cache("sd15")
    result = attention_maps(pipe, "a red cat on the blue car", num_inference_steps=2, height=32, width=24)
    assert result.tokens == ["a", "red", "cat", "on", "the", "blue", "car"]
    assert result.maps.shape == (7, 16, 12) and len(result.heatmaps) == 7
    paths = result.save(tmp_path)
    assert len(paths) == 9 and all(p.exists() and p.stat().st_size > 0 for p in paths)
    assert Image.open(paths[1]).width > Image.open(paths[0]).width  # the grid holds image + 7 maps


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(aggregate="bogus"), r"aggregate='bogus' is not one of \('mean', 'steps'\)"),
        (dict(branch="cnd"), r"branch='cnd' is not one of \('cond', 'uncond', None\)"),
        (dict(steps=(1, -2)), r"steps must be a tuple of step indices >= 0 .*\(1, -2\)"),
        (dict(steps=(1.5,)), r"steps must be a tuple of step indices >= 0"),
        (dict(steps=3), r"steps must be a tuple of step indices >= 0 .*got 3"),
        (dict(layers=("cross",)), r"layers must be a Select .*\('cross',\)"),
        (dict(name=""), "name must be a non-empty string"),
    ],
)
def test_store_config_rejects_bad_values_naming_the_allowed_ones(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StoreConfig(**kwargs)


def test_store_config_accepts_each_allowed_value():
    assert StoreConfig(aggregate="steps", branch="uncond", steps=[0, 3]).steps == (0, 3)
    assert StoreConfig(branch=None).branch is None


@torch.no_grad()
def test_store_uncond_branch_records_the_uncond_row():
    model = tiny_denoiser("sd15")
    kw = denoiser_inputs("sd15", model)
    recorded = {}
    for branch in ("cond", "uncond", None):
        with apply(model, StoreConfig(layers=Select(kinds=("cross",)), branch=branch)) as ctrl:
            ctrl.begin_run(1, latent_hw=(16, 12))
            ctrl.begin_step(0, 900)
            ctrl.set_branch(("uncond", "cond"))
            model(**kw)
        recorded[branch] = next(iter(ctrl.stores["attention"].mean.values())).probs
    assert recorded["cond"].shape[0] == recorded["uncond"].shape[0] == 1 and recorded[None].shape[0] == 2
    assert torch.equal(recorded[None][0], recorded["uncond"][0])  # row 0 is the uncond half
    assert torch.equal(recorded[None][1], recorded["cond"][0])
