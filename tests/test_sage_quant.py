"""SageAttention maths: group maps, scale shapes, rounding, exact smoothing, input safety."""

import math

import pytest
import torch

from attn_processors.sage import dispatch as sage_dispatch
from attn_processors.sage import sageattn, simulate, spec_for
from attn_processors.sage.quant import (
    ARCH_PRESETS,
    k_group_index,
    k_scale_count,
    q_group_index,
    q_scale_count,
    quant_sym,
    round_fp8_e4m3,
    round_half_away,
)
from attn_processors.sage.reference import quantize_qk
from attn_processors.sage.synthetic import attention_fp64, gaussian, real_like

TILES89, TILES90 = ARCH_PRESETS["sm89"].tiles, ARCH_PRESETS["sm90"].tiles


@pytest.mark.parametrize("tiles, warp_q, warp_k", [(TILES89, 32, 64), (TILES90, 16, 128)])
def test_per_thread_groups_follow_mma_fragments(tiles, warp_q, warp_k):
    n = 512
    gq = q_group_index(n, "per_thread", tiles)
    for w in range(n // warp_q):
        rows = gq[w * warp_q:(w + 1) * warp_q]
        assert rows.unique().numel() == 8  # 8 Q scales per warp
        for r in range(8):  # rows r, r+8, r+16, ... of the warp share one scale
            assert (rows[r::8] == rows[r]).all()
    gk = k_group_index(n, "per_thread", tiles)
    for blk in range(n // warp_k):
        rows = gk[blk * warp_k:(blk + 1) * warp_k]
        assert rows.unique().numel() == 4  # 4 K scales per WARPK rows
        for j in range(0, warp_k, 2):  # row pairs {8m+2t, 8m+2t+1}
            assert rows[j] == rows[j + 1]
            assert rows[j] == rows[j % 8]
    assert gq.max().item() + 1 == q_scale_count(n, "per_thread", tiles)
    assert gk.max().item() + 1 == k_scale_count(n, "per_thread", tiles)


@pytest.mark.parametrize("arch", ["sm89", "sm90"])
@pytest.mark.parametrize("n", [200, 512])
def test_scale_shapes_match_upstream(arch, n):
    tiles = ARCH_PRESETS[arch].tiles
    q, k, _ = gaussian(2, 3, n, 64)
    pre = quantize_qk(q, k[:, :1], spec_for("release", arch), 0.2)  # GQA: 1 kv head
    nq = math.ceil(n / tiles.blk_q) * (tiles.blk_q // tiles.warp_q) * 8
    nk = math.ceil(n / tiles.blk_k) * (tiles.blk_k // tiles.warp_k) * 4
    assert pre["q_scale_groups"].shape == (2, 3, nq)
    assert pre["k_scale_groups"].shape == (2, 1, nk)
    assert pre["q_scale"].shape == (2, 3, n) and pre["k_scale"].shape == (2, 1, n)


def test_per_warp_and_per_block_groups():
    t = TILES89  # BLKQ 128, WARPQ 32, BLKK 64
    n = 300
    assert torch.equal(q_group_index(n, "per_warp", t), torch.arange(n) // 32)
    assert torch.equal(k_group_index(n, "per_warp", t), torch.arange(n) // 64)
    assert torch.equal(q_group_index(n, "per_block", t), torch.arange(n) // 128)
    assert torch.equal(k_group_index(n, "per_block", t), torch.arange(n) // 64)
    assert q_scale_count(n, "per_warp", t) == 3 * 4 and k_scale_count(n, "per_warp", t) == 5
    assert q_scale_count(n, "per_block", t) == 3 and k_scale_count(n, "per_block", t) == 5
    with pytest.raises(ValueError, match="granularity"):
        q_group_index(n, "per_tensor", t)


def test_round_half_away_and_symmetric_scale():
    x = torch.tensor([2.5, -2.5, 0.5, -0.5, 1.49, -1.51, 0.0])
    assert round_half_away(x).tolist() == [3.0, -3.0, 1.0, -1.0, 1.0, -2.0, 0.0]
    vals = torch.randn(1, 1, 16, 8) * 3
    for bits, qmax in [(8, 127), (4, 7)]:
        xi, scale = quant_sym(vals, torch.zeros(16, dtype=torch.long), 1, bits)
        expect = vals.abs().max() / qmax + 1e-7
        assert torch.allclose(scale, expect.reshape(1, 1, 1))
        assert torch.equal(xi, round_half_away(vals / expect).clamp(-qmax, qmax))
        assert xi.abs().max() <= qmax
        assert (xi * scale - vals).abs().max() <= scale.max() / 2 + 1e-6


def test_fp8_rounding_is_e4m3():
    x = torch.tensor([448.0, 500.0, 0.0, 1.0625, 240.0, 2 ** -9])
    assert round_fp8_e4m3(x).tolist() == [448.0, 448.0, 0.0, 1.0, 240.0, 2 ** -9]  # saturating, RTNE


@pytest.mark.parametrize("smooth_q", [False, True])
def test_smoothing_without_quantization_is_exact(smooth_q):
    q, k, v = real_like(2, 2, 200, 64, seed=3)
    spec = spec_for("release", qk_bits=None, pv="fp32", smooth_k=True, smooth_q=smooth_q)
    out, lse = simulate(q, k, v, spec, return_lse=True)
    ref = attention_fp64(q, k, v)
    ref_lse = torch.logsumexp(q.double() @ k.double().transpose(-1, -2) / 8, dim=-1)
    assert (out.double() - ref).abs().max() <= 1e-5
    assert (lse.double() - ref_lse).abs().max() <= 1e-4


def test_smooth_q_with_fp16_pv_emulation():
    q, k, v = gaussian(1, 2, 256, 64, seed=0)  # |v| < 4: fp16 rounding of P and V alone (target: <= 2e-4)
    spec = spec_for("paper4bit", qk_bits=None, pv="fp16")
    assert (simulate(q, k, v, spec).double() - attention_fp64(q, k, v)).abs().max() <= 2e-4


def test_lse_with_smooth_k_and_quantization():
    q, k, v = real_like(1, 2, 256, 64, seed=5)
    _, lse = simulate(q, k, v, spec_for("release"), return_lse=True)
    ref_lse = torch.logsumexp(q.double() @ k.double().transpose(-1, -2) / 8, dim=-1)
    _, lse_exact = simulate(q, k, v, spec_for("release", qk_bits=None, pv="fp32"), return_lse=True)
    assert (lse_exact.double() - ref_lse).abs().max() <= 1e-4  # the lse_correction restores q.k_mean
    assert (lse.double() - ref_lse).abs().max() <= 0.05  # INT8 logits only move it slightly


def test_causal_simulation_matches_reference():
    q, k, v = gaussian(1, 2, 130, 32, seed=6)
    spec = spec_for("release", qk_bits=None, pv="fp32")
    out = simulate(q, k, v, spec, is_causal=True)
    assert (out.double() - attention_fp64(q, k, v, is_causal=True)).abs().max() <= 1e-5


@pytest.mark.parametrize("recipe", ["release", "paper4bit", "sage1"])
def test_inputs_bit_identical_after_calls(recipe):
    q, k, v = real_like(1, 4, 160, 64, seed=7, dtype=torch.bfloat16)
    k, v = k[:, :2], v[:, :2]  # GQA
    before = [t.clone() for t in (q, k, v)]
    sageattn(q, k, v, recipe=recipe, backend="simulate", min_kv_len=0, return_lse=True)
    sageattn(q, k, v, recipe=recipe, backend="sdpa", return_lse=True)
    sageattn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), tensor_layout="NHD", recipe=recipe,
             backend="simulate", min_kv_len=0)
    for a, b in zip(before, (q, k, v), strict=True):
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))


@pytest.mark.parametrize("recipe", ["release", "paper4bit", "sage1"])
def test_extreme_magnitudes_and_constant_k_stay_finite(recipe):
    sage_dispatch.reset_counters()
    g = torch.Generator().manual_seed(8)
    q = (torch.randn(1, 2, 256, 64, generator=g) * 400).clamp(-1e3, 1e3).bfloat16()
    k = (torch.randn(1, 2, 256, 64, generator=g) * 400).clamp(-1e3, 1e3).bfloat16()
    q[..., 0, :] = 1e3
    k[..., 1, :] = -1e3
    v = torch.randn(1, 2, 256, 64, generator=g).bfloat16()
    out = sageattn(q, k, v, recipe=recipe, backend="simulate", min_kv_len=0)
    assert torch.isfinite(out).all()
    k_const = torch.full_like(k, 7.0)
    out_c = sageattn(q, k_const, v, recipe=recipe, backend="simulate", min_kv_len=0)
    assert torch.isfinite(out_c).all()
    # constant K: uniform attention, the output is the mean of V
    expect = v.float().mean(dim=-2, keepdim=True).expand_as(out_c)
    assert (out_c.float() - expect).abs().max() < 0.05
    assert sage_dispatch.FALLBACKS["nonfinite"] == 0  # finite by itself, not rescued by the guard


def test_spec_validation():
    with pytest.raises(ValueError, match="recipe"):
        spec_for("int2")
    with pytest.raises(ValueError, match="arch"):
        spec_for("release", "sm100")
    with pytest.raises(ValueError, match="qk_bits"):
        spec_for("release", qk_bits=6)
    assert spec_for("release", "sm89").v_scale_max == 2.25  # fp32+fp16 accumulator (SageAttn2++)
    assert spec_for("release", "sm80").pv == "fp16" and spec_for("release", "sm86").qk_gran == "per_block"
