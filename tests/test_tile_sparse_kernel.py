"""Tile-sparse kernels: exact vs masked SDPA, the k = F identity, the recall error bound, dispatch."""

import platform

import pytest
import torch
import torch.nn.functional as F

import attn_processors.tile_sparse.kernels as ts
from attn_processors.core import blockmask
from attn_processors.tile_sparse import (
    VideoGeometry,
    attend,
    dispatch,
    tile_mask,
    tile_recall,
    tile_sparse_attention,
)

GEOMETRIES = [  # (frames, tokens_per_frame, text_tokens, text_position): unaligned spans on purpose
    (4, 50, 7, "first"),
    (5, 37, 11, "last"),
    (6, 24, 0, "none"),
]


def _qkv(s, *, b=2, h=3, d=16, seed=0, spread=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [spread * torch.randn(b, h, s, d, generator=gen) for _ in range(3)]


def _masked_sdpa(q, k, v, frames, tpf, k_global, gf="first", text=0, pos="first"):
    mask = tile_mask(frames, tpf, k_global, global_frames=gf, text_tokens=text, text_position=pos)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("frames,tpf,text,pos", GEOMETRIES)
@pytest.mark.parametrize("k_global,gf", [(1, "first"), (2, "uniform"), (2, [1, 3])])
def test_gather_equals_masked_sdpa(frames, tpf, text, pos, k_global, gf):
    q, k, v = _qkv(frames * tpf + text)
    ref = _masked_sdpa(q, k, v, frames, tpf, k_global, gf, text, pos)
    out = tile_sparse_attention(q, k, v, frames=frames, tokens_per_frame=tpf, k_global=k_global,
                                global_frames=gf, text_tokens=text, text_position=pos, method="gather")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    dense = F.scaled_dot_product_attention(q, k, v)
    assert (out - dense).abs().max() > 1e-3  # the mask really drops tiles


@pytest.mark.parametrize("additive", [False, True])
def test_extra_mask_is_intersected_exactly(additive):
    """A text key-padding mask [B, 1, 1, S] (HunyuanVideo style, text last) on top of the tile mask."""
    frames, tpf, text = 4, 20, 6
    s = frames * tpf + text
    q, k, v = _qkv(s)
    pad = torch.ones(2, 1, 1, s, dtype=torch.bool)
    pad[0, ..., -2:] = False  # row 0: its last two text tokens are padding
    extra = torch.zeros(pad.shape).masked_fill(~pad, float("-inf")) if additive else pad
    out = tile_sparse_attention(q, k, v, frames=frames, tokens_per_frame=tpf, k_global=1, text_tokens=text,
                                text_position="last", attn_mask=extra)
    tiles = tile_mask(frames, tpf, 1, text_tokens=text, text_position="last")
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=tiles & pad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["auto", "gather", "sdpa_masked"])
def test_k_equal_frames_is_dense_attention(method):
    frames, tpf, text = 4, 20, 5
    q, k, v = _qkv(frames * tpf + text)
    out = tile_sparse_attention(q, k, v, frames=frames, tokens_per_frame=tpf, k_global=frames,
                                text_tokens=text, text_position="first", method=method)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=0)


def test_inputs_are_not_mutated_and_scale_is_honoured():
    q, k, v = _qkv(4 * 20)
    copies = [t.clone() for t in (q, k, v)]
    out = tile_sparse_attention(q, k, v, frames=4, tokens_per_frame=20, k_global=1, scale=0.3,
                                method="gather")
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=tile_mask(4, 20, 1), scale=0.3)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), copies, strict=True))


@pytest.mark.parametrize("frames,tpf,text,pos", GEOMETRIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_error_bound_by_recall(frames, tpf, text, pos, seed):
    """|o_sparse - o_dense|_inf <= 2 (1 - recall) max|V| + 1e-5 per query row (recall: see tile_recall)."""
    geometry = VideoGeometry(frames, tpf, text, pos)
    q, k, v = _qkv(geometry.seq_len, seed=seed, spread=1.5)
    sparse = attend(q, k, v, geometry, 1, method="gather")
    dense = F.scaled_dot_product_attention(q, k, v)
    recall = tile_recall(q, k, geometry, 1)  # [B, H, S]
    err = (sparse - dense).abs().amax(-1)  # [B, H, S]
    v_max = v.abs().amax(dim=(-2, -1), keepdim=True)[..., 0]  # [B, H, 1]
    assert torch.all(err <= 2 * (1 - recall) * v_max + 1e-5)
    assert err.max() > 1e-3 and recall.min() < 0.99  # non-trivial instance
    # rows that attend to every key (text, the global frame) have recall 1 and no error
    full_rows = tile_mask(frames, tpf, 1, text_tokens=text, text_position=pos).all(-1)
    torch.testing.assert_close(recall[..., full_rows], torch.ones_like(recall[..., full_rows]))
    assert err[..., full_rows].max() < 1e-5


def test_group_mass_rows_sum_to_one_and_match_explicit_softmax():
    geometry = VideoGeometry(3, 10, 4, "last")
    q, k, _ = _qkv(geometry.seq_len, b=1, h=2)
    groups = geometry.groups()
    mass = blockmask.group_mass(q, k, groups, 4, chunk=7)
    torch.testing.assert_close(mass.sum(-1), torch.ones(1, 2, geometry.seq_len))
    probs = (q @ k.transpose(-1, -2) / 4.0).softmax(-1)  # D = 16 -> scale 1/4
    torch.testing.assert_close(mass[..., 2], probs[..., groups == 2].sum(-1))


def test_dispatch_never_picks_eager_flex(monkeypatch):
    short = VideoGeometry(4, 64)
    assert dispatch(short, 4)[0] == "dense"
    assert dispatch(short, 1)[0] == "sdpa_masked"
    long = VideoGeometry(24, 256)  # S = 6144
    # gathered SDPA beat compiled flex on CPU and at every mask of the H200 check: auto never takes flex
    for device in ("cpu", "cuda"):  # decided without touching a GPU
        assert dispatch(long, 3, device=device)[0] == "gather"
        assert dispatch(long, 20, device=device)[0] == "gather"  # low sparsity too: still exact, no S^2 mask
    # below a min_block_sparsity (the technique's fallback) plain SDPA runs, with the reason counted
    stats = __import__("collections").Counter()
    method, reason = dispatch(long, 20, min_block_sparsity=0.25, stats=stats)  # drops 2.1 %
    assert method == "dense" and reason.startswith("low_sparsity") and "2.1%" in reason
    assert stats == {"tile_sparse.fallback.low_sparsity": 1, "tile_sparse.kernel.sdpa": 1}
    assert dispatch(long, 3, min_block_sparsity=0.25)[0] == "gather"  # drops 72.9 %
    # without a compiler: flex_attend refuses (no eager fallback); auto does not need it
    monkeypatch.setattr(blockmask, "compiled_flex", lambda mode=None: None)
    q = torch.zeros(1, 1, 16, 8)
    with pytest.raises(RuntimeError, match="compiled flex attention unavailable"):
        blockmask.flex_attend(q, q, q, None)
    assert dispatch(VideoGeometry(24, 512), 3, device="cuda")[0] == "gather"


def test_forced_flex_without_compiler_falls_back_exactly(monkeypatch):
    monkeypatch.setattr(blockmask, "compiled_flex", lambda mode=None: None)
    monkeypatch.setattr(ts, "_flex_failed", set())  # the failure is remembered there; restored after
    q, k, v = _qkv(4 * 20 + 3)
    out = tile_sparse_attention(q, k, v, frames=4, tokens_per_frame=20, k_global=1, text_tokens=3,
                                text_position="last", method="flex")
    torch.testing.assert_close(out, _masked_sdpa(q, k, v, 4, 20, 1, "first", 3, "last"), atol=1e-5, rtol=0)
    assert ts._flex_failed == {"cpu"}
    # remembered: the next forced-flex call goes straight to the exact gathered path
    monkeypatch.setattr(blockmask, "flex_attend", lambda *a, **k: pytest.fail("flex retried after a failure"))
    out2 = tile_sparse_attention(q, k, v, frames=4, tokens_per_frame=20, k_global=1, text_tokens=3,
                                 text_position="last", method="flex")
    torch.testing.assert_close(out2, out, atol=0, rtol=0)


def test_auto_at_long_sequences_is_exact():
    frames, tpf = 9, 1000  # S = 9 000: the gathered path on CPU
    q, k, v = _qkv(frames * tpf, b=1, h=1, d=8)
    out = tile_sparse_attention(q, k, v, frames=frames, tokens_per_frame=tpf, k_global=2)
    rows = torch.arange(0, frames * tpf, 97)  # reference on a row subset (the full mask is 81 M entries)
    mask = tile_mask(frames, tpf, 2)[rows]
    ref = F.scaled_dot_product_attention(q[:, :, rows], k, v, attn_mask=mask)
    torch.testing.assert_close(out[:, :, rows], ref, atol=1e-5, rtol=0)


def test_block_mask_semantics_through_flex_eager():
    """Our BlockMask's mask_mod and sequence lengths as flex reads them (eager, tiny S: no compile).

    Eager flex evaluates mask_mod everywhere, so the block lists are checked element-wise in
    test_tile_sparse_mask.py and end to end by the compiled test below (slow: a cold compile takes
    30-50 s on a loaded 2-core machine)."""
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    frames, tpf, text = 4, 50, 7
    q, k, v = _qkv(frames * tpf + text, b=1, h=2)
    for k_global, gf, pos in [(1, "first", "first"), (2, [1, 3], "last")]:
        bm = ts.tile_block_mask(VideoGeometry(frames, tpf, text, pos), k_global, gf, block_size=32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "eager flex materialises the score matrix": intended here
            out = flex_attention(q, k, v, block_mask=bm)
        torch.testing.assert_close(out, _masked_sdpa(q, k, v, frames, tpf, k_global, gf, text, pos),
                                   atol=1e-5, rtol=0)


@pytest.mark.slow
def test_compiled_flex_equals_masked_sdpa():
    """One compiled geometry; k, text position and global frames vary without recompiling because they
    change only tensor values."""
    frames, tpf, text = 4, 50, 7
    q, k, v = _qkv(frames * tpf + text, b=1, h=2)
    for k_global, gf, pos in [(1, "first", "first"), (2, [1, 3], "last"), (frames, "first", "first")]:
        out = tile_sparse_attention(q, k, v, frames=frames, tokens_per_frame=tpf, k_global=k_global,
                                    global_frames=gf, text_tokens=text, text_position=pos, method="flex",
                                    block_size=32)
        ref = _masked_sdpa(q, k, v, frames, tpf, k_global, gf, text, pos)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=0)  # k = F


@pytest.mark.slow
def test_gpu_check_script_cpu_path(tmp_path):
    """benchmarks/gpu_tile_sparse_check.py at CPU-sized shapes: the code path the H200 run takes."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_tile_sparse_check.py"
    spec = importlib.util.spec_from_file_location("gpu_tile_sparse_check", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # 0.5: the row that drops less than half of the attention (F = 8, k = 2: 46.9 %) is the dense fallback
    result = script.main(["--small", "--device", "cpu", "--repeats", "1", "--out", str(tmp_path),
                          "--min-block-sparsity", "0.5"])
    assert result["all_errors_ok"] and len(result["rows"]) == 4
    assert {"speedup", "gate", "gate_ok", "block_sparsity", "gather_speedup", "runs", "code_speedup"} <= set(
        result["rows"][0])
    low = [r for r in result["rows"] if r["mask_sparsity"] < 0.5]
    assert [(r["frames"], r["k"]) for r in low] == [(8, 2)] and result["dense_fallback_rows"] == 1
    assert all(r["runs"] == "dense" and r["scored_as"] == "dense_fallback" and r["gate"] is None
               and r["gate_ok"] for r in low)
    assert all(r["runs"] == "sdpa_masked" for r in result["rows"] if r not in low)  # S < 2048 here
    with pytest.raises(SystemExit):
        script.main(["--heads", "-1"])
    saved = json.loads((tmp_path / "tile_sparse_gpu_small.json").read_text())
    assert saved["config"]["small"] and saved["env"]["device"] == "cpu"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the CPU template rewrite is x86")
def test_cpu_flex_template_is_tuned_and_exact():
    """The Inductor CPU template rewrite (fp32 q @ k^T on brgemm, fused scale) applies to the pinned
    torch and stays exact, both without partial blocks (SKIP_MASK_SCORE) and with them (mask_mod)."""
    assert blockmask.tune_cpu_flex_template(), blockmask._cpu_template.get("why")
    frames, tpf = 4, 64
    q, k, v = _qkv(frames * tpf, b=1, h=2)
    out = tile_sparse_attention(q, k, v, frames=frames, tokens_per_frame=tpf, k_global=1, method="flex",
                                block_size=64)  # frames align with blocks: no partial block
    ref = _masked_sdpa(q, k, v, frames, tpf, 1, "first", 0, "first")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    out = tile_sparse_attention(q, k, v, frames=frames, tokens_per_frame=tpf, k_global=1, method="flex",
                                block_size=48)  # frame spans cut blocks: mask_mod on partial blocks
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("flag, value", [("--heads", "-1"), ("--dim", "0"), ("--repeats", "two")])
def test_bench_rejects_counts_below_one_with_a_clear_error(capsys, flag, value):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tile_sparse_bench.py"
    spec = importlib.util.spec_from_file_location("tile_sparse_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit) as exit_info:
        bench.main([flag, value])
    assert exit_info.value.code == 2
    shown = repr(value) if value == "two" else value
    assert f"argument {flag}: must be a positive integer, got {shown}" in capsys.readouterr().err
