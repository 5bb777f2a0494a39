"""Tile-sparse processors on tiny Wan and CogVideoX pipelines, config JSON, and calibration plans."""

import json
from dataclasses import dataclass

import pytest
import torch

import attn_processors.tile_sparse as ts
import attn_processors.tile_sparse.technique as technique
from attn_processors.core import Select, apply, config_from_json, config_to_json
from attn_processors.tile_sparse import TilePlan, TileSparseConfig, calibrate, default_k, select_k

RUNS = {  # 17 frames -> 5 latent frames
    "wan": dict(num_frames=17, height=64, width=64),  # attn1: 5 frames x 16 tokens, no text
    "cogvideox": dict(num_frames=17, height=32, width=32, max_sequence_length=16),  # 16 text + 5 x 4
}
GEOMETRY = {"wan": ts.VideoGeometry(5, 16), "cogvideox": ts.VideoGeometry(5, 4, 16, "first")}
# every layer, every step, whatever the sparsity (CogVideoX's 16 dense text tokens leave k = 1 at 14.8 %)
EVERYWHERE = dict(dense_steps=0.0, dense_blocks=(), min_block_sparsity=0.0)


@pytest.fixture
def attend_calls(monkeypatch):
    """Records (q shape, geometry, k) of every tile-sparse kernel call."""
    calls = []
    original = technique.attend

    def spy(q, k, v, geometry, k_global, *args, **kwargs):
        calls.append((tuple(q.shape), geometry, k_global))
        return original(q, k, v, geometry, k_global, *args, **kwargs)

    monkeypatch.setattr(technique, "attend", spy)
    return calls


def _video(pipe, family, steps=3):
    return pipe("a red cat", num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                output_type="pt", **RUNS[family]).frames


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_processors_run_end_to_end_and_full_mask_is_identity(tiny_pipe_cache, attend_calls, family):
    pipe = tiny_pipe_cache(family)
    dense = _video(pipe, family)
    with apply(pipe, TileSparseConfig(k=1, **EVERYWHERE)):
        sparse = _video(pipe, family)
    assert torch.isfinite(sparse).all() and (sparse - dense).abs().max() > 1e-3
    assert attend_calls and {(g, k) for _, g, k in attend_calls} == {(GEOMETRY[family], 1)}
    n_layers = len([n for n in pipe.transformer.attn_processors if "attn1" in n])
    assert len(attend_calls) == 3 * n_layers * (2 if family == "wan" else 1)  # Wan: two B=1 CFG calls
    attend_calls.clear()
    with apply(pipe, TileSparseConfig(k=5, **EVERYWHERE)):  # k = F: every tile kept
        full = _video(pipe, family)
    torch.testing.assert_close(full, dense, atol=1e-5, rtol=0)
    assert not attend_calls
    assert all(type(p).__name__ != "TileSparseProcessor" for p in pipe.transformer.attn_processors.values())


def test_full_mask_kernel_path_matches_stock_wan(tiny_pipe_cache, attend_calls):
    """The sparse kernel forced on with a mask that keeps every tile (k = F) gives the stock result."""
    pipe = tiny_pipe_cache("wan")
    dense = _video(pipe, "wan", steps=2)
    with apply(pipe, TileSparseConfig(k=5, method="gather", dense_steps=0.0, dense_blocks=())):
        for proc in pipe.transformer.attn_processors.values():
            if type(proc).__name__ == "TileSparseProcessor":
                proc.sparse = lambda call, geometry: True  # run the kernel even though k = F
        kernel_full = _video(pipe, "wan", steps=2)
    assert attend_calls and {k for *_, k in attend_calls} == {5}
    torch.testing.assert_close(kernel_full, dense, atol=1e-5, rtol=0)


def test_dense_warmup_steps_and_blocks(tiny_pipe_cache, attend_calls):
    pipe = tiny_pipe_cache("wan")
    with apply(pipe, TileSparseConfig(k=1, dense_steps=0.5, dense_blocks=(0,))):
        _video(pipe, "wan", steps=4)  # steps 0, 1 dense; block 0 dense
    assert len(attend_calls) == 2 * 1 * 2  # 2 sparse steps x 1 sparse block x 2 CFG calls
    with apply(pipe, TileSparseConfig(k=1, dense_steps=1.0)):
        _video(pipe, "wan", steps=2)
    assert len(attend_calls) == 4  # nothing new


def test_config_json_round_trip_and_validation():
    options = '{"k": {"blocks.1.attn1": 2}, "global_frames": [0, 3], "dense_steps": 0.1}'
    cfg = TileSparseConfig(**json.loads(options))
    assert cfg.global_frames == (0, 3)
    assert config_from_json(config_to_json(cfg)) == cfg
    assert config_from_json(config_to_json(TileSparseConfig())) == TileSparseConfig()
    for bad, match in [({"global_frames": "random"}, "global_frames"), ({"k": "calibrated"}, "'auto'"),
                       ({"k": -1}, "ints >= 0"), ({"dense_steps": 1.5}, "dense_steps"),
                       ({"block_size": 100}, "multiple of 16"), ({"method": "eager"}, "method")]:
        with pytest.raises(ValueError, match=match):
            TileSparseConfig(**bad)
    assert [default_k(f) for f in (3, 8, 24)] == [1, 2, 4]


def test_select_k_rule():
    recall = {0: 0.5, 1: 0.8, 2: 0.92, 3: 0.97, 4: 1.0}
    assert select_k(recall, 0.9, frames=4) == 2
    assert select_k(recall, 0.95, frames=4) == 3
    assert select_k(recall, 0.99, frames=4) == 4  # nothing sparse is good enough: dense
    assert select_k({1: 0.95, 2: 0.91, 3: 0.97}, 0.9, frames=8) == 1  # the sparsest passing k


def test_plan_round_trip(tmp_path):
    recall = {"blocks.0.attn1": {1: 0.8, 2: 0.93}, "blocks.1.attn1": {1: 0.5, 5: 1.0}}
    plan = TilePlan({"blocks.0.attn1": 2, "blocks.1.attn1": 5}, recall, 5, 0.9, (0, 2))
    path = tmp_path / "plan.json"
    plan.save(path)
    assert TilePlan.load(path) == plan
    with pytest.raises(ValueError, match="calibrate"):
        TilePlan.load(tmp_path / "missing.json")
    path.write_text("{}")
    with pytest.raises(ValueError, match="tile_sparse_plan/v1"):
        TilePlan.load(path)


def test_calibrate_on_tiny_wan_and_use_the_plan(tiny_pipe_cache, attend_calls, tmp_path):
    pipe = tiny_pipe_cache("wan")
    plan = calibrate(pipe, ["a red cat", "a blue dog"], target_recall=0.75, num_inference_steps=2,
                     **RUNS["wan"])
    assert plan.frames == 5 and set(plan.k) == {"blocks.0.attn1", "blocks.1.attn1"}
    for name, recall in plan.recall.items():
        values = [recall[k] for k in range(6)]
        assert all(0.0 <= r <= 1.0 + 1e-6 for r in values)
        assert values == sorted(values)  # "first" global frames: more frames, more mass kept
        assert recall[5] == pytest.approx(1.0, abs=1e-5)
        assert plan.k[name] == select_k(recall, 0.75, 5)
    # the recall on this tiny random model: probe its definition against tile_recall on one call
    path = tmp_path / "plan.json"
    plan.save(path)
    with apply(pipe, TileSparseConfig(plan=str(path), **EVERYWHERE)):
        _video(pipe, "wan", steps=2)
    assert {k for *_, k in attend_calls} == {k for k in plan.k.values() if k < 5}


def test_calibration_recall_matches_tile_recall(tiny_pipe_cache):
    """The probe's mean recall equals tile_recall averaged over all rows (max_rows >= S)."""
    from attn_processors.core.controller import Controller
    from attn_processors.testing.tiny import denoiser_inputs, tiny_denoiser

    model = tiny_denoiser("wan")
    inputs = denoiser_inputs("wan", model)  # hidden (1, 16, 3, 8, 8): 3 frames x 16 tokens
    captured = {}

    def capture(q, k, v, *, mask=None, scale=None):
        captured["qk"] = (q, k)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    ctrl = Controller()
    with apply(model, ts.TileRecallProbe(ks=(1,), max_rows=10_000, layers=Select(names=("blocks.0.attn1",))),
               controller=ctrl), torch.no_grad():
        proc = model.get_submodule("blocks.0.attn1").processor
        inner = proc.kernel
        proc.kernel = lambda call: (lambda q, k, v, **kw: (capture(q, k, v), inner(call)(q, k, v, **kw))[1])
        model(**inputs)
    total, count = ctrl.stores["tile_recall"]["blocks.0.attn1"][1]
    q, k = captured["qk"]
    expected = ts.tile_recall(q, k, ts.VideoGeometry(3, 16), 1).mean().item()
    assert total / count == pytest.approx(expected, abs=1e-5)


def test_tile_sparse_plus_sage_composes_as_one_kernel(tiny_pipe_cache):
    """kernel=SageConfig: the inner kernel runs on each query group's kept keys (pipelines/video.py rule)."""
    from attn_processors.sage.technique import SageConfig

    pipe = tiny_pipe_cache("wan")
    base = EVERYWHERE
    with apply(pipe, TileSparseConfig(k=1, **base)):
        tile = _video(pipe, "wan", steps=2)
    exact_inner = TileSparseConfig(k=1, kernel=SageConfig(backend="sdpa", min_kv_len=0), **base)
    assert config_from_json(config_to_json(exact_inner)) == exact_inner
    with apply(pipe, exact_inner):  # an exact inner kernel: the same video as tile-sparse alone
        torch.testing.assert_close(_video(pipe, "wan", steps=2), tile, atol=1e-5, rtol=0)
    sim = SageConfig(backend="simulate", min_kv_len=0)
    with apply(pipe, SageConfig(backend="simulate", min_kv_len=0, layers=TileSparseConfig().layers)):
        sage_only = _video(pipe, "wan", steps=2)
    with apply(pipe, TileSparseConfig(k=5, kernel=sim, **base)):  # full mask: Sage on every key
        torch.testing.assert_close(_video(pipe, "wan", steps=2), sage_only, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="dense_steps"):
        TileSparseConfig(kernel=SageConfig(dense_steps=0.2))
    with pytest.raises(ValueError, match="SageConfig"):
        TileSparseConfig(kernel=TileSparseConfig())


def test_calibrate_with_explicit_global_frames(tiny_pipe_cache):
    pipe = tiny_pipe_cache("wan")
    plan = calibrate(pipe, ["a red cat"], global_frames=[0, 2], num_inference_steps=1, **RUNS["wan"])
    assert plan.global_frames == (0, 2) and all(set(r) == {2} for r in plan.recall.values())
    with pytest.raises(ValueError, match="fixes k = 2"):
        calibrate(pipe, ["a red cat"], global_frames=[0, 2], ks=(1,), num_inference_steps=1, **RUNS["wan"])


def test_calibrate_cogvideox_joint_text_first(tiny_pipe_cache):
    pipe = tiny_pipe_cache("cogvideox")
    plan = calibrate(pipe, ["a red cat"], target_recall=0.9, num_inference_steps=1, **RUNS["cogvideox"])
    (name, recall), = plan.recall.items()
    assert name == "transformer_blocks.0.attn1" and plan.frames == 5
    values = [recall[k] for k in range(6)]
    assert values == sorted(values) and values[-1] == pytest.approx(1.0, abs=1e-5)
    assert values[0] > 0.2  # k = 0 still keeps the diagonal tiles and the 16 dense text keys


# every SageConfig field under tile-sparse: a kernel option that changes the computation, or a raise
SAGE_KERNEL_OPTION_VALUES = {  # field -> a value that must change what the inner kernel computes
    "recipe": "sage1", "backend": "sdpa", "arch": "sm89", "min_kv_len": 10**6, "long_seq_fp16_pv": 0,
}
SAGE_WHERE_WHEN_VALUES = {  # field -> a value that must raise, naming the field
    "dense_steps": 0.2, "dense_blocks": (0,), "dense_layers": ("blocks.*",),
    "dense_calls": (("blocks.0.attn1", 0),), "layers": Select(kinds=("self",)),
}


@torch.no_grad()
def test_every_sage_option_applies_under_tile_sparse_or_raises(tmp_path):
    from dataclasses import fields

    from attn_processors.core import Controller
    from attn_processors.sage import SageConfig, write_policy
    from attn_processors.testing.tiny import tiny_denoiser

    policy = write_policy({"dense_calls": []}, tmp_path / "policy.json")
    where_when = {**SAGE_WHERE_WHEN_VALUES, "policy": str(policy)}
    covered = set(SAGE_KERNEL_OPTION_VALUES) | set(where_when) | {"nan_guard"}
    assert covered == {f.name for f in fields(SageConfig)}  # a new Sage field must be placed here
    for name, value in where_when.items():
        with pytest.raises(ValueError, match=rf"SageConfig fields \['{name}'\] do not apply"):
            TileSparseConfig(kernel=SageConfig(**{name: value}))

    model = tiny_denoiser("wan")
    g = torch.Generator().manual_seed(3)
    kw = dict(hidden_states=torch.randn(1, 16, 5, 8, 8, generator=g), timestep=torch.tensor([500]),
              encoder_hidden_states=torch.randn(1, 16, 32, generator=g), return_dict=False)

    def run(**sage_options):
        ctrl = Controller()
        sage = SageConfig(**{"backend": "simulate", "min_kv_len": 0, **sage_options})
        with apply(model, TileSparseConfig(k=1, kernel=sage, **EVERYWHERE), controller=ctrl):
            return model(**kw)[0], ctrl.stats

    base, base_stats = run()
    with apply(model, TileSparseConfig(k=1, **EVERYWHERE)):
        exact_tiles = model(**kw)[0]
    assert base_stats["sage.kernel.simulate"] > 0 and (base - exact_tiles).abs().max() > 1e-5
    for name, value in SAGE_KERNEL_OPTION_VALUES.items():
        out, stats = run(**{name: value})
        assert (out - base).abs().max() > 1e-6, f"{name}={value!r} changed nothing under tile-sparse"
        if name in ("backend", "min_kv_len"):  # exact SDPA on the kept keys: tile-sparse alone
            torch.testing.assert_close(out, exact_tiles, atol=1e-5, rtol=0)
    assert run(min_kv_len=10**6)[1]["sage.fallback.short_kv"] > 0
    assert run(long_seq_fp16_pv=0)[1]["sage.long_seq_fp16_pv"] > 0  # FP16 P.V on every call


def test_nan_guard_applies_under_tile_sparse(monkeypatch):
    """nan_guard: a non-finite quantized output is recomputed (counted) or, with False, passed through."""
    from attn_processors.core import Controller
    from attn_processors.sage import SageConfig
    from attn_processors.sage import dispatch as sage_dispatch
    from attn_processors.testing.tiny import tiny_denoiser

    monkeypatch.setattr(sage_dispatch, "simulate", lambda q, *a, **kw: torch.full_like(q, float("nan")))
    model = tiny_denoiser("wan")
    g = torch.Generator().manual_seed(3)
    kw = dict(hidden_states=torch.randn(1, 16, 5, 8, 8, generator=g), timestep=torch.tensor([500]),
              encoder_hidden_states=torch.randn(1, 16, 32, generator=g), return_dict=False)
    outs = {}
    for guard in (True, False):
        ctrl = Controller()
        sage = SageConfig(backend="simulate", min_kv_len=0, nan_guard=guard)
        with torch.no_grad(), apply(model, TileSparseConfig(k=1, kernel=sage, **EVERYWHERE), controller=ctrl):
            outs[guard] = (model(**kw)[0], dict(ctrl.stats))
    assert torch.isfinite(outs[True][0]).all() and outs[True][1]["sage.fallback.nonfinite"] > 0
    assert torch.isnan(outs[False][0]).any() and "sage.fallback.nonfinite" not in outs[False][1]


@dataclass(frozen=True)
class _CountingSDPA:
    """A KernelProvider that is not Sage: exact SDPA counting its calls; `only_self` is a where-option."""

    only_self: bool = False

    def attend_kernel(self, stats=None):
        def attend(q, k, v, *, mask=None, scale=None):
            if stats is not None:
                stats["counting_sdpa.calls"] += 1
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

        return attend

    def check_inner(self, host):
        if self.only_self:
            raise ValueError(f"_CountingSDPA field only_self does not apply inside {host}")


@torch.no_grad()
def test_any_kernel_provider_composes_under_tile_sparse():
    """TileSparseConfig.kernel takes any KernelProvider through the core's interface, not only Sage."""
    from attn_processors.core import Controller
    from attn_processors.testing.tiny import tiny_denoiser

    model = tiny_denoiser("wan")
    g = torch.Generator().manual_seed(3)
    kw = dict(hidden_states=torch.randn(1, 16, 5, 8, 8, generator=g), timestep=torch.tensor([500]),
              encoder_hidden_states=torch.randn(1, 16, 32, generator=g), return_dict=False)
    with apply(model, TileSparseConfig(k=1, **EVERYWHERE)):
        tile = model(**kw)[0]
    ctrl = Controller()
    with apply(model, TileSparseConfig(k=1, kernel=_CountingSDPA(), **EVERYWHERE), controller=ctrl):
        out = model(**kw)[0]
    torch.testing.assert_close(out, tile, atol=1e-6, rtol=0)
    groups = len(ts.tile_gather_plan(ts.VideoGeometry(5, 16), 1))  # distinct kept-key sets
    assert groups == 5 and ctrl.stats["counting_sdpa.calls"] == 2 * groups  # frame 0 + 4 others; 2 layers
    with pytest.raises(ValueError, match="only_self does not apply inside TileSparseConfig"):
        TileSparseConfig(kernel=_CountingSDPA(only_self=True))
