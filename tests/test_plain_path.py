"""The plain Diffusers path: `set_attn_processor(processors(pipe, config))` gives the `apply` result.

Each technique runs on a *stock* Diffusers pipeline (StableDiffusionPipeline, WanPipeline) with the
shipped models, once through `with apply(pipe, config)` and once through the user's own call
`pipe.unet.set_attn_processor(processors(pipe, config))`; the outputs must be bit-identical, and the
techniques that change the picture must change it. `stock_processors` undoes it exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from attn_processors import Select, StoreConfig, apply
from attn_processors.core import ControlledProcessor, processors, stock_processors

ROOT = Path(__file__).resolve().parents[1]
SD_KW = dict(num_inference_steps=4, guidance_scale=4.0, output_type="np")
WAN_KW = dict(num_frames=5, height=32, width=32, num_inference_steps=4, guidance_scale=4.0, output_type="np")


@pytest.fixture(scope="module")
def sd():
    from worlds.shapes.pipeline import load_pipeline

    return load_pipeline(ROOT / "assets" / "shapes-sd")


@pytest.fixture(scope="module")
def wan():
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(ROOT / "assets" / "moving-shapes-wan", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sd(pipe, prompt="a red circle and a blue square"):
    return pipe(prompt, generator=torch.Generator().manual_seed(0), **SD_KW).images


def _wan(pipe, prompt="a red circle moving right"):
    return pipe(prompt, generator=torch.Generator().manual_seed(0), **WAN_KW).frames


def _both(pipe, denoiser, run, config):
    """(apply result, plain-path result, stock result, plain controller); the pipe is left stock."""
    stock = run(pipe)
    with apply(pipe, config):
        via_apply = run(pipe)
    procs = processors(pipe, config)
    ctrl = procs.controller
    denoiser.set_attn_processor(procs)
    try:
        via_plain = run(pipe)
    finally:
        denoiser.set_attn_processor(stock_processors(denoiser))
    assert np.array_equal(run(pipe), stock), "stock_processors did not restore the stock result"
    return via_apply, via_plain, stock, ctrl


def test_layout_redistribution_on_a_stock_sd_pipeline(sd):
    from attn_processors.layout import LayoutConfig

    prompt = "a red circle and a blue square"
    cfg = LayoutConfig.from_phrases(sd.tokenizer, prompt, ["red circle", "blue square"],
                                    [(0.05, 0.05, 0.45, 0.45), (0.55, 0.55, 0.95, 0.95)], res_factor=1)
    a, b, stock, _ = _both(sd, sd.unet, lambda p: _sd(p, prompt), cfg)
    assert np.array_equal(a, b)
    assert np.abs(a - stock).max() > 0.05  # the redistribution moved something


def test_attention_store_on_sd_records_the_same_maps(sd):
    cfg = StoreConfig()
    with apply(sd, cfg) as ctrl:
        _sd(sd)
    maps_apply = ctrl.stores["attention"].token_maps()
    procs = processors(sd, cfg)
    sd.unet.set_attn_processor(procs)
    try:
        _sd(sd)
    finally:
        sd.unet.set_attn_processor(stock_processors(sd.unet))
    maps_plain = procs.controller.stores["attention"].token_maps()
    assert torch.equal(maps_apply, maps_plain)


def test_sage_on_sd_and_wan(sd, wan):
    from attn_processors import SageConfig

    cfg = SageConfig(backend="simulate", min_kv_len=0)
    a, b, stock, ctrl = _both(sd, sd.unet, _sd, cfg)
    assert np.array_equal(a, b)
    a, b, stock, ctrl = _both(wan, wan.transformer, _wan, cfg)
    assert np.array_equal(a, b)


def test_attention_store_on_wan(wan):
    cfg = StoreConfig(layers=Select(kinds=("cross",)))
    with apply(wan, cfg) as ctrl:
        _wan(wan)
    procs = processors(wan, cfg)
    wan.transformer.set_attn_processor(procs)
    try:
        _wan(wan)
    finally:
        wan.transformer.set_attn_processor(stock_processors(wan.transformer))
    plain = procs.controller.stores["attention"].token_maps()
    assert torch.equal(ctrl.stores["attention"].token_maps(), plain)


def test_tile_sparse_on_a_stock_wan_pipeline(wan):
    from attn_processors import TileSparseConfig

    cfg = TileSparseConfig(k=1, dense_steps=0.0, dense_blocks=(), min_block_sparsity=0.0)
    a, b, stock, _ = _both(wan, wan.transformer, _wan, cfg)
    assert np.array_equal(a, b)
    assert np.abs(a.astype(np.float64) - stock).max() > 1e-3  # tiles were dropped


def test_hooks_leave_once_the_stock_processors_are_back(sd):
    procs = processors(sd, StoreConfig())
    sd.unet.set_attn_processor(procs)
    assert "step" in sd.scheduler.__dict__  # the scheduler reports steps to the controller
    sd.unet.set_attn_processor(stock_processors(sd.unet))
    _sd(sd)
    assert "step" not in sd.scheduler.__dict__ and not sd.unet._forward_pre_hooks


def test_stock_processors_restore_every_family(tiny_pipe_cache):
    for family in ("sd15", "wan", "cogvideox", "flux"):
        pipe = tiny_pipe_cache(family)
        net = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
        before = {k: type(p) for k, p in net.attn_processors.items()}
        net.set_attn_processor(processors(pipe, StoreConfig(layers=Select())))
        assert all(isinstance(p, ControlledProcessor) for p in net.attn_processors.values())
        net.set_attn_processor(stock_processors(net))
        assert {k: type(p) for k, p in net.attn_processors.items()} == before


def test_two_denoisers_need_a_model_name():
    class TwoDenoisers:
        def __init__(self, net):
            self.transformer, self.transformer_2 = net, net

    from attn_processors.testing.tiny import tiny_denoiser

    with pytest.raises(ValueError, match="model='transformer'"):
        processors(TwoDenoisers(tiny_denoiser("wan")), StoreConfig())


def test_a_processor_nobody_drives_says_what_to_do():
    """Built by hand on a bare model, nobody announces steps: the first call says how to fix it."""
    from attn_processors.layout import LayoutConfig
    from attn_processors.testing.tiny import denoiser_inputs, tiny_denoiser

    net = tiny_denoiser("sd15")
    cfg = LayoutConfig(boxes=((0.0, 0.0, 0.5, 0.5),), token_groups=((1,),))
    net.set_attn_processor(processors(net, cfg))
    with pytest.raises(ValueError, match="processors\\(pipe"), torch.no_grad():
        net(**denoiser_inputs("sd15", net))


def test_diffusers_ip_adapter_loader_gets_a_clear_message():
    """Diffusers' IP-adapter loader re-creates each installed processor as `type(proc)()`."""
    from attn_processors.testing.tiny import tiny_denoiser

    net = tiny_denoiser("sd15")
    net.set_attn_processor(processors(net, StoreConfig(branch=None)))
    installed = {type(p) for p in net.attn_processors.values() if isinstance(p, ControlledProcessor)}
    assert "StoreProcessor" in {t.__name__ for t in installed}
    for proc in installed | {ControlledProcessor}:
        with pytest.raises(TypeError, match="IP-adapter loader .*stock_processors"):
            proc()
