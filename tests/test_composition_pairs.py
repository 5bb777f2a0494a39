"""Every pair of the existing techniques on one tiny pipeline where the pair can meet (docs/composition.md).

Rule under test (core/processor.py): per call, the processors that want it are active; if one of them
edits logits/probs the call takes the explicit path with every active edit, otherwise the active
kernel chooser runs. The counts in `controller.stats` say which path each call took per technique.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attn_processors.core import ComposedProcessor, Passthrough, Select, StoreConfig, apply
from attn_processors.layout import LayoutConfig
from attn_processors.sage import SageConfig
from attn_processors.tile_sparse import TileSparseConfig

RUNS = {
    "sd15": dict(height=32, width=32),
    "wan": dict(num_frames=17, height=64, width=64),  # attn1: 5 frames x 16 tokens
    "cogvideox": dict(num_frames=17, height=32, width=32, max_sequence_length=16),  # 16 text + 5 x 4
}
STEPS = 2
SIM = dict(backend="simulate", min_kv_len=0)  # the quantized simulator at the tiny lengths
EXACT = dict(backend="sdpa", min_kv_len=0)  # Sage's kernel slot with exact SDPA: outputs comparable
TILE = dict(k=1, dense_steps=0.0, dense_blocks=(), min_block_sparsity=0.0)  # sparse on every call
LAYOUT = LayoutConfig(boxes=((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)), token_groups=((2,), (3,)))


def run(pipe, family, *configs):
    """(output, controller stats, controller stores) of one seeded run under `configs` (none: stock)."""
    def call():
        out = pipe("a red cat", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                   output_type="np", **RUNS[family])
        return np.asarray(out.images if hasattr(out, "images") else out.frames, dtype=np.float64)

    if not configs:
        return call(), {}, {}
    with apply(pipe, *configs) as ctrl:
        out = call()
    return out, dict(ctrl.stats), ctrl.stores


def parts_on(model) -> dict[str, list[str]]:
    """{layer: [technique processor class names]} of the installed processors."""
    return {key: proc.names if isinstance(proc, ComposedProcessor) else [type(proc).__name__]
            for key, proc in model.attn_processors.items()}


def psnr(a, b):
    return 10 * np.log10(1.0 / float(((a - b) ** 2).mean()))


# -- LayoutConfig with the others (SD 1.5 UNet: the only family layout runs on) -------------------------
def test_layout_and_sage_share_layers_per_call(tiny_pipe_cache):
    """Layout's calls (cross, every step <= 25) take its explicit path; every other call runs Sage."""
    pipe = tiny_pipe_cache("sd15")
    layout, *_ = run(pipe, "sd15", LAYOUT)
    with apply(pipe, LAYOUT, SageConfig(**SIM)):
        shared = [k for k, names in parts_on(pipe.unet).items() if "LayoutProcessor" in names]
        redistributing = len([k for k in shared if k.endswith("attn2.processor")])
    assert redistributing > 0
    same, stats, _ = run(pipe, "sd15", LAYOUT, SageConfig(**EXACT))
    np.testing.assert_allclose(same, layout, atol=1e-6, rtol=0)  # an exact kernel: layout's own result
    out, stats, _ = run(pipe, "sd15", LAYOUT, SageConfig(**SIM))
    calls = len(pipe.unet.attn_processors) * STEPS  # one batched CFG call per step
    assert stats["sage.path.explicit"] == redistributing * STEPS
    assert stats["sage.path.kernel"] == calls - redistributing * STEPS
    assert "sage.path.stock" not in stats and stats["sage.kernel.simulate"] == stats["sage.path.kernel"]
    assert 30 <= psnr(out, layout) < float("inf")  # quantized elsewhere, close


def test_layout_and_tile_sparse_never_meet(tiny_pipe_cache):
    """Tile-sparse selects Wan/CogVideoX video layers only: on a UNet its selector matches nothing and
    apply says so (rather than silently running layout alone)."""
    pipe = tiny_pipe_cache("sd15")
    before = dict(pipe.unet.attn_processors)
    with pytest.raises(ValueError, match="matches none of the 8 attention layers"):
        with apply(pipe, LAYOUT, TileSparseConfig(**TILE)):
            pass
    assert pipe.unet.attn_processors == before


def test_layout_and_store_edit_in_install_order(tiny_pipe_cache):
    """Both edit probabilities: the store records what the processors before it left (install order)."""
    pipe = tiny_pipe_cache("sd15")
    layout, *_ = run(pipe, "sd15", LAYOUT)
    store = StoreConfig(layers=Select(kinds=("cross",)))
    after, _, stores_after = run(pipe, "sd15", LAYOUT, store)  # records the redistributed maps
    before, _, stores_before = run(pipe, "sd15", store, LAYOUT)  # records the maps before redistribution
    # recording changes nothing (the store's other cross layers: explicit fp32 softmax, within 1e-5)
    np.testing.assert_allclose(after, layout, atol=1e-5, rtol=0)
    np.testing.assert_allclose(before, layout, atol=1e-5, rtol=0)
    maps_after = stores_after["attention"].records("cross")
    maps_before = stores_before["attention"].records("cross")
    assert set(maps_after) == set(maps_before)
    differ = [n for n in maps_after if not torch.allclose(maps_after[n].probs, maps_before[n].probs)]
    assert differ  # the layout layers: redistributed vs raw


def test_layout_and_passthrough(tiny_pipe_cache):
    pipe = tiny_pipe_cache("sd15")
    layout, *_ = run(pipe, "sd15", LAYOUT)
    out, *_ = run(pipe, "sd15", LAYOUT, Passthrough())
    assert np.array_equal(out, layout)


# -- SageConfig with the others -------------------------------------------------------------------------
def test_sage_and_store_share_layers_per_call(tiny_pipe_cache):
    """The store's calls (cross, every step) take the explicit path; self-attention runs Sage."""
    pipe = tiny_pipe_cache("sd15")
    store = StoreConfig(layers=Select())  # every layer, so the pair shares every layer
    alone, _, stores_alone = run(pipe, "sd15", StoreConfig(layers=Select(kinds=("cross",))))
    out, stats, stores = run(pipe, "sd15", SageConfig(**EXACT), store)
    np.testing.assert_allclose(out, alone, atol=1e-5, rtol=0)  # explicit fp32 vs SDPA on self layers
    calls = len(pipe.unet.attn_processors) * STEPS
    assert stats["sage.path.explicit"] == calls and "sage.path.kernel" not in stats  # it records them all
    cross_store = StoreConfig(layers=Select(kinds=("cross",)))
    out, stats, stores = run(pipe, "sd15", SageConfig(**SIM), cross_store)
    n_cross = len([k for k in pipe.unet.attn_processors if k.endswith("attn2.processor")])
    assert stats["sage.path.explicit"] == n_cross * STEPS
    assert stats["sage.path.kernel"] == calls - n_cross * STEPS
    maps, ref = stores["attention"].records("cross"), stores_alone["attention"].records("cross")
    assert set(maps) == set(ref)
    assert max(float((maps[n].probs - ref[n].probs).abs().max()) for n in maps) < 0.05  # close, quantized


def test_sage_and_tile_sparse(tiny_pipe_cache):
    """Same layers: refused with the fix named; the fix composes as one kernel; disjoint layers compose."""
    pipe = tiny_pipe_cache("wan")
    with pytest.raises(ValueError, match=r"TileSparseConfig\(kernel=SageConfig\(\.\.\.\)\)"):
        with apply(pipe, SageConfig(**SIM), TileSparseConfig(**TILE)):
            pass
    tile, *_ = run(pipe, "wan", TileSparseConfig(**TILE))
    out, stats, _ = run(pipe, "wan", TileSparseConfig(**TILE, kernel=SageConfig(**SIM)))
    self_calls = 2 * 2 * STEPS  # 2 attn1 layers x 2 B=1 CFG calls per step
    assert stats["tile_sparse.path.kernel"] == self_calls and stats["sage.kernel.simulate"] > 0
    assert 30 <= psnr(out, tile) < float("inf")
    cross_only = SageConfig(**EXACT, layers=Select(kinds=("cross",)))
    out, stats, _ = run(pipe, "wan", cross_only, TileSparseConfig(**TILE))
    np.testing.assert_allclose(out, tile, atol=1e-6, rtol=0)
    assert stats["sage.path.kernel"] == stats["tile_sparse.path.kernel"] == self_calls


def test_sage_and_passthrough_counts_are_exact(tiny_pipe_cache):
    pipe = tiny_pipe_cache("wan")
    alone, stats_alone, _ = run(pipe, "wan", SageConfig(**SIM))
    out, stats, _ = run(pipe, "wan", SageConfig(**SIM), Passthrough())
    assert np.array_equal(out, alone) and stats == stats_alone
    assert stats["sage.path.kernel"] == len(pipe.transformer.attn_processors) * 2 * STEPS


# -- TileSparseConfig, StoreConfig, Passthrough ---------------------------------------------------------
def test_tile_sparse_and_store_share_joint_layers_per_call(tiny_pipe_cache):
    """CogVideoX joint layers: the recorded step takes the explicit (dense) path, the others the tiles."""
    pipe = tiny_pipe_cache("cogvideox")
    store = StoreConfig(steps=(0,), aggregate="steps")
    _, _, stores_alone = run(pipe, "cogvideox", store)
    later, *_ = run(pipe, "cogvideox", TileSparseConfig(**{**TILE, "dense_steps": 0.5}))  # tiles from step 1
    out, stats, stores = run(pipe, "cogvideox", TileSparseConfig(**TILE), store)
    assert stats == {"tile_sparse.path.explicit": 1, "tile_sparse.path.kernel": STEPS - 1,
                     "tile_sparse.kernel.sdpa_masked": STEPS - 1}
    np.testing.assert_allclose(out, later, atol=1e-5, rtol=0)  # step 0 recorded (dense), step 1 tiles
    maps, ref = stores["attention"].by_step, stores_alone["attention"].by_step
    assert set(maps) == set(ref) and all(torch.equal(maps[k].probs, ref[k].probs) for k in ref)


def test_tile_sparse_and_passthrough(tiny_pipe_cache):
    pipe = tiny_pipe_cache("wan")
    tile, stats_tile, _ = run(pipe, "wan", TileSparseConfig(**TILE))
    out, stats, _ = run(pipe, "wan", TileSparseConfig(**TILE), Passthrough())
    assert np.array_equal(out, tile) and stats == stats_tile


def test_store_and_passthrough(tiny_pipe_cache):
    pipe = tiny_pipe_cache("sd15")
    stock, *_ = run(pipe, "sd15")
    alone, _, stores_alone = run(pipe, "sd15", StoreConfig())
    out, _, stores = run(pipe, "sd15", StoreConfig(), Passthrough())
    assert np.array_equal(out, alone)
    np.testing.assert_allclose(out, stock, atol=1e-5, rtol=0)
    assert torch.equal(stores["attention"].token_maps(), stores_alone["attention"].token_maps())
