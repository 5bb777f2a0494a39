"""The tuned Triton Sage kernel (``sage.fast_kernel``, issue 20) under TRITON_INTERPRET=1 against the
simulator: fused Q/K/V quantization bit for bit, attention to fp32 summation order, the padded-batch
(varlen) path, bad input; and the sm_90a PTX evidence (compiled without a GPU)."""

import json
import os
import re
import subprocess
import sys
from dataclasses import astuple, replace
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from attn_processors.sage import fast_kernel as fk  # noqa: E402
from attn_processors.sage import sageattn, spec_for  # noqa: E402
from attn_processors.sage.dispatch import padding_lengths, triton_spec  # noqa: E402
from attn_processors.sage.quant import LOG2E, Tiles  # noqa: E402
from attn_processors.sage.reference import quantize_qk, quantize_v  # noqa: E402
from attn_processors.sage.synthetic import accuracy, real_like  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# as in test_sage_triton.py: the interpreter needs TRITON_INTERPRET=1 before triton is first imported
IN_PROCESS = os.environ.get("TRITON_INTERPRET") == "1" and not isinstance(tl.zeros, JITFunction)
on_cpu = not torch.cuda.is_available()
in_process = pytest.mark.skipif(not (IN_PROCESS and on_cpu), reason="needs TRITON_INTERPRET=1 before triton "
                                "is imported, on a CPU machine: see test_interpreter_checks_in_subprocess")


@pytest.mark.skipif(IN_PROCESS or not on_cpu, reason="the interpreter checks run in this process (or CUDA)")
def test_interpreter_checks_in_subprocess():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow", __file__]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    passed = re.search(r"(\d+) passed", res.stdout)
    assert res.returncode == 0 and passed and int(passed.group(1)) >= 10, res.stdout[-4000:]


def _operands(spec, q, k, v, log2_scale, **lens):
    return fk.quantize(q, k, v, tiles=spec.tiles, gran=spec.qk_gran, smooth_k=spec.smooth_k, pv=spec.pv,
                       log2_scale=log2_scale, v_scale_max=spec.v_scale_max, **lens)


@in_process
@pytest.mark.parametrize("recipe, arch, dtype", [("release", "sm90", torch.bfloat16),
                                                 ("release", "sm120", torch.float16),  # per-warp
                                                 ("sage1", "sm90", torch.float32)])  # per-block, FP16 V
def test_fused_quantization_equals_reference(recipe, arch, dtype):
    """One launch gives the simulator's INT8 Q/K, row scales and FP8/FP16 V bit for bit; padding is zero."""
    q, k, v = real_like(1, 2, 200, 40, seed=4, dtype=dtype)  # N off the tiles, D padded to 64
    spec = spec_for(recipe, arch)
    ops = _operands(spec, q, k, v, 0.3)
    pre = quantize_qk(q, k, spec, 0.3)
    vq, vs = quantize_v(v, spec)
    assert ops["q_i8"].shape == (1, 2, 200, 64) and ops["k_i8"].shape == (1, 2, 256, 64)  # keys padded to 128
    assert torch.equal(ops["q_i8"][..., :40].float(), pre["q_int"]) and not ops["q_i8"][..., 40:].any()
    assert torch.equal(ops["q_scale"], pre["q_scale"])
    assert torch.equal(ops["k_i8"][:, :, :200, :40].float(), pre["k_int"])
    assert not ops["k_i8"][:, :, 200:].any()
    assert torch.equal(ops["k_scale"][..., :200], pre["k_scale"])
    assert torch.equal(ops["v_t"][:, :, :40, :200].float().transpose(-1, -2), vq)
    assert not ops["v_t"][:, :, 40:].float().any() and not ops["v_t"][..., 200:].float().any()
    assert torch.equal(ops["v_scale"][..., :40], vs[..., 0, :])
    assert torch.equal(ops["k_mean"], pre["k_mean"])


@in_process
@pytest.mark.parametrize("recipe, causal, block_n", [("release", False, 64), ("release", True, 64),
                                                     ("release", False, 128), ("release", True, 32),
                                                     ("sage1", False, 64)])
def test_attention_matches_simulator(recipe, causal, block_n):
    """Same recipe as the simulator with blk_k = BLOCK_N: equal up to fp32 summation order (GQA 2 -> 1)."""
    q, k, v = real_like(1, 2, 200, 40, seed=1)
    k, v = k[:, :1].contiguous(), v[:, :1].contiguous()
    spec = triton_spec(spec_for(recipe))
    spec = replace(spec, tiles=Tiles(spec.tiles.blk_q, spec.tiles.warp_q, block_n, min(block_n, 64)))
    scale = 40 ** -0.5
    ops = _operands(spec, q, k, v, scale * LOG2E)
    out, lse = fk.attention(ops, n_q=200, n_k=200, d=40, is_causal=causal, out_dtype=torch.float32, arch=None,
                            config=(64, block_n, 4, 1))
    ref, ref_lse = sageattn(q, k, v, spec=spec, backend="simulate", is_causal=causal, min_kv_len=0,
                            return_lse=True)
    assert accuracy(out, ref)["rel_l1"] <= 1e-5
    lse = lse + (q @ ops["k_mean"].transpose(-1, -2)).squeeze(-1) * scale  # smooth-K LSE correction
    assert (lse - ref_lse).abs().max() <= 1e-4


@in_process
def test_sageattn_triton_backend_runs_fast_kernel_with_lse():
    """``backend="triton"`` runs the fused op: matches the simulator, inputs untouched, LSE corrected."""
    q, k, v = real_like(1, 2, 130, 64, seed=2, dtype=torch.bfloat16)
    before = [t.clone() for t in (q, k, v)]
    out, lse = sageattn(q, k, v, backend="triton", min_kv_len=0, return_lse=True)
    ref, ref_lse = sageattn(q, k, v, spec=triton_spec(spec_for("release")), backend="simulate", min_kv_len=0,
                            return_lse=True)
    assert accuracy(out, ref)["rel_l1"] <= 1e-5 and (lse - ref_lse).abs().max() <= 1e-4
    assert all(torch.equal(a, b) for a, b in zip(before, (q, k, v), strict=True))


@in_process
def test_padded_batch_equals_each_sample_alone():
    """k_lens: sample b attends to its first k_lens[b] keys only; mean/range stats ignore the padding."""
    q, k, v = real_like(2, 2, 150, 32, seed=3)
    k = k.clone()
    k[1, :, 90:] = 50.0  # padding garbage must not leak into smooth-K, the K scales or V's range
    v = v.clone()
    v[1, :, 90:] = -1e3
    spec = triton_spec(spec_for("release"))
    lens = torch.tensor([150, 90], dtype=torch.int32)
    out, _, _ = fk.sage2_fused(q, k, v, spec.qk_gran, *astuple(spec.tiles), True, "fp8", 32 ** -0.5 * LOG2E,
                               False, torch.float32, "sm90", 64, None, lens)
    for b, n in enumerate(lens.tolist()):
        ref = sageattn(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], spec=spec, backend="simulate",
                       min_kv_len=0)
        assert accuracy(out[b:b + 1], ref)["rel_l1"] <= 1e-5


@in_process
def test_key_padding_mask_routes_to_varlen_kernel():
    """A Diffusers-style bool key-padding mask [B, 1, 1, Nk] runs the kernel (no SDPA fallback) and matches
    exact attention with that mask as closely as the unmasked kernel does."""
    from attn_processors.sage import FALLBACKS, reset_counters

    q, k, v = real_like(2, 2, 128, 64, seed=5)
    mask = torch.ones(2, 1, 1, 128, dtype=torch.bool)
    mask[1, ..., 77:] = False
    reset_counters()
    out = sageattn(q, k, v, backend="triton", attn_mask=mask, min_kv_len=0)
    assert not FALLBACKS
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert accuracy(out, exact)["cos"] >= 0.999
    ref1 = sageattn(q[1:], k[1:, :, :77], v[1:, :, :77], backend="triton", min_kv_len=0)
    assert accuracy(out[1:], ref1)["rel_l1"] <= 1e-5


def test_padding_lengths_accepts_only_prefix_masks():
    q = k = torch.zeros(2, 1, 6, 4)
    keep = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)[:, None, None]
    assert padding_lengths(keep, q, k).tolist() == [6, 3]
    holes = keep.clone()
    holes[0, ..., 2] = False
    assert padding_lengths(holes, q, k) is None  # not a prefix: SDPA fallback
    assert padding_lengths(keep.float(), q, k) is None  # additive masks are not padding masks
    assert padding_lengths(torch.ones(2, 1, 6, 6, dtype=torch.bool), q, k) is None  # per-query mask
    empty = keep.clone()
    empty[1] = False
    assert padding_lengths(empty, q, k) is None


@in_process
def test_bad_lengths_and_granularity_raise():
    q, k, v = real_like(2, 1, 64, 32, seed=6)
    spec = triton_spec(spec_for("release"))
    with pytest.raises(ValueError, match=r"k_lens must lie in \[1, 64\]"):
        _operands(spec, q, k, v, 0.1, k_lens=torch.tensor([64, 0]))
    with pytest.raises(ValueError, match="k_lens must be an integer tensor of shape"):
        _operands(spec, q, k, v, 0.1, k_lens=torch.tensor([64.0, 3.0]))
    with pytest.raises(ValueError, match="qk_gran must be one of"):
        fk.quantize(q, k, v, tiles=spec.tiles, gran="per_token", smooth_k=True, pv="fp8", log2_scale=0.1)


@in_process
def test_custom_op_fake_tensor():
    q, k, v = real_like(1, 2, 64, 32, seed=7)
    spec = triton_spec(spec_for("release"))
    args = (q, k, v, spec.qk_gran, *astuple(spec.tiles), True, "fp8", 0.2, False, torch.float32, "sm90", 64,
            None, None)
    torch.library.opcheck(fk.sage2_fused, args, test_utils=("test_faketensor", "test_schema"))


def test_arch_config_spaces():
    """Every config is a valid MMA tile (power of two, >= 32 keys for FP8 k32); an unknown arch raises."""
    for arch in ("sm90", "sm89", "sm80", "sm86", "sm120"):
        for m, n, w, s in fk.arch_configs(arch):
            assert m in (64, 128) and n in (32, 64, 128) and w in (4, 8) and 1 <= s <= 4
    assert all(m >= 64 * (w // 4) for m, _, w, _ in fk.CONFIGS["sm90"])  # >= one 64-row WGMMA per warpgroup
    with pytest.raises(ValueError, match="no Triton config space for arch 'sm70'"):
        fk.arch_configs("sm70")


def test_committed_ptx_evidence():
    """benchmarks/results/sage_ptx_sm90a.json (sage_ptx_check.py): on sm_90a both products are WGMMA, Q.K with
    s8 operands and P.V with e4m3, no mma.sync; every sm90 config of the autotuner compiled without spills."""
    res = json.loads((ROOT / "benchmarks" / "results" / "sage_ptx_sm90a.json").read_text())
    s = res["summary"]
    assert s["qk_wgmma_s8"] and s["pv_wgmma_e4m3"] and s["no_mma_sync_on_sm90a"]
    hopper = [r for r in res["kernels"] if r["kernel"] == "sage2_fwd" and r["arch"] == "sm_90a"]
    compiled = {(r["block_m"], r["block_n"], r["num_warps"], r["num_stages"]) for r in hopper}
    assert compiled >= set(fk.CONFIGS["sm90"])
    if s["ptxas"] != "ptxas unavailable":
        for cfg in fk.CONFIGS["sm90"]:
            for d in (64, 128):
                assert [*cfg, d] in s["spill_free_configs_sm90a"], (cfg, d)


def _can_compile_for_cuda() -> str | None:
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means no NVIDIA backend here
        return f"this triton has no NVIDIA backend to compile with ({exc!r})"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_can_compile_for_cuda() is not None, reason=str(_can_compile_for_cuda()))
def test_ptx_check_script(tmp_path):
    """benchmarks/sage_ptx_check.py --quick compiles the kernel for sm_90a here (~30 s on one core)."""
    out = tmp_path / "ptx.json"
    env = {**os.environ, "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sage_ptx_check.py"), "--quick", "--out",
                          str(out)], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    (row,) = [r for r in data["kernels"] if r["kernel"] == "sage2_fwd"]
    assert row["wgmma"]["s32.s8.s8"] > 0 and row["wgmma"]["f32.e4m3.e4m3"] > 0 and not row["mma_sync"]
    if data["summary"]["ptxas"] != "ptxas unavailable":
        assert row["spill_store_bytes"] == 0 and row["registers"] <= 255
