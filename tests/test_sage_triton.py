"""Our Triton Sage kernel under TRITON_INTERPRET=1 (CPU) against the simulator, and what the
interpreter gets wrong about FP8 (the reason for ``EMULATE_FP8_CAST``)."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from attn_processors.sage import sageattn, spec_for, triton_kernel  # noqa: E402
from attn_processors.sage.dispatch import triton_spec  # noqa: E402
from attn_processors.sage.synthetic import accuracy, real_like  # noqa: E402

# The interpreter only works if TRITON_INTERPRET=1 was set before triton itself was imported
# (tl.zeros, tl.sum... are @jit functions decided at import). Importing diffusers imports triton,
# so in a full suite run this module re-runs itself in a subprocess with the variable set.
IN_PROCESS = os.environ.get("TRITON_INTERPRET") == "1" and not isinstance(tl.zeros, JITFunction)
on_cpu = not torch.cuda.is_available()
in_process = pytest.mark.skipif(not (IN_PROCESS and on_cpu), reason="needs TRITON_INTERPRET=1 before triton "
                                "is imported, on a CPU machine: see test_interpreter_checks_in_subprocess")


@pytest.mark.skipif(on_cpu, reason="compiled kernel: CUDA only (CPU runs it under the interpreter below)")
@pytest.mark.parametrize("recipe, causal", [("release", False), ("release", True), ("sage1", False)])
def test_compiled_kernel_matches_simulator_on_cuda(recipe, causal):
    q, k, v = (t.cuda().bfloat16() for t in real_like(1, 4, 1000, 128, seed=5))
    with torch.no_grad():
        out = sageattn(q, k, v, recipe=recipe, backend="triton", is_causal=causal, min_kv_len=0)
        ref = sageattn(q, k, v, spec=triton_spec(spec_for(recipe)), backend="simulate", is_causal=causal,
                       min_kv_len=0)
    assert accuracy(out, ref)["rel_l1"] <= 0.01  # parity gate; FP22 accumulation is not simulated


@pytest.mark.skipif(IN_PROCESS or not on_cpu, reason="the interpreter checks run in this process (or CUDA)")
def test_interpreter_checks_in_subprocess():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__],
                         env=env, capture_output=True, text=True, timeout=900)
    passed = re.search(r"(\d+) passed", res.stdout)
    # the child ran the interpreter tests in process (only this test and the CUDA ones skip there)
    assert res.returncode == 0 and passed and int(passed.group(1)) >= 10, res.stdout[-4000:]


@pytest.fixture(scope="module")
def interpreter():
    assert triton_kernel.INTERPRET
    return triton_kernel


@triton.jit
def _cast_fp8(x_ptr, y_ptr, n: tl.constexpr, EMULATE: tl.constexpr):
    offs = tl.arange(0, n)
    x = tl.load(x_ptr + offs)
    if EMULATE:
        x = triton_kernel._round_e4m3(x)
    tl.store(y_ptr + offs, x.to(tl.float8e4nv))


@triton.jit
def _dot(a_ptr, b_ptr, c_ptr, m: tl.constexpr, CAST: tl.constexpr):
    r = tl.arange(0, m)
    a = tl.load(a_ptr + r[:, None] * m + r[None, :])
    b = tl.load(b_ptr + r[:, None] * m + r[None, :])
    if CAST:  # fp32 operands converted inside the kernel
        a = a.to(tl.float8e4nv)
        b = b.to(tl.float8e4nv)
    tl.store(c_ptr + r[:, None] * m + r[None, :], tl.dot(a, b))


@pytest.fixture(scope="module")
def probes():
    def run_cast(x, emulate):
        y = torch.empty(x.numel(), dtype=torch.float8_e4m3fn)
        _cast_fp8[(1,)](x, y, x.numel(), emulate)
        return y.float()

    def run_dot(a, b, cast):
        c = torch.empty(a.shape[0], b.shape[1])
        _dot[(1,)](a, b, c, a.shape[0], cast)
        return c

    return run_cast, run_dot


@in_process
@pytest.mark.parametrize("recipe, causal", [("release", False), ("release", True), ("sage1", False)])
def test_kernel_matches_simulator(recipe, causal):
    q, k, v = real_like(1, 2, 200, 40, seed=1)  # N not a multiple of the tiles, D padded to 64
    k, v = k[:, :1].contiguous(), v[:, :1].contiguous()  # GQA 2 -> 1
    out, lse = sageattn(q, k, v, recipe=recipe, backend="triton", is_causal=causal, min_kv_len=0,
                        return_lse=True)
    spec = triton_spec(spec_for(recipe))
    ref, ref_lse = sageattn(q, k, v, spec=spec, backend="simulate", is_causal=causal, min_kv_len=0,
                            return_lse=True)
    acc = accuracy(out, ref)
    # identical arithmetic up to fp32 summation order (parity gate: relL1 <= 0.01)
    assert acc["rel_l1"] <= 1e-5, acc
    assert (lse - ref_lse).abs().max() <= 1e-4


@in_process
def test_kernel_inputs_untouched_and_nhd_layout():
    q, k, v = real_like(1, 2, 96, 64, seed=2, dtype=torch.bfloat16)
    before = [t.clone() for t in (q, k, v)]
    hnd = sageattn(q, k, v, backend="triton", min_kv_len=0)
    nhd = sageattn(*(t.transpose(1, 2) for t in (q, k, v)), tensor_layout="NHD", backend="triton",
                   min_kv_len=0)
    assert hnd.dtype == torch.bfloat16 and torch.equal(nhd.transpose(1, 2), hnd)
    for a, b in zip(before, (q, k, v), strict=True):
        assert torch.equal(a, b)


@in_process
def test_custom_op_fake_and_schema(interpreter):
    q, k, v = real_like(1, 1, 64, 32, seed=3)
    from attn_processors.sage.reference import quantize_qk, quantize_v

    spec = triton_spec(spec_for("release"))
    pre = quantize_qk(q, k, spec, 0.25)
    vq, vs = quantize_v(v, spec)
    ints = (pre["q_int"].to(torch.int8), pre["k_int"].to(torch.int8), pre["q_scale"], pre["k_scale"])
    v8 = vq.to(torch.float8_e4m3fn).transpose(-1, -2).contiguous()  # [B, H, D, N]
    fp8 = ints + (v8, vs[..., 0, :] / 448, False, torch.float32, 64, 64)
    fp16 = ints + (v.half().transpose(-1, -2).contiguous(), torch.ones(1, 1, 32), True, torch.float32, 64, 64)
    # torch's schema checker compares with allclose, which has no CPU kernel for float8: fp16 V only
    torch.library.opcheck(interpreter.sage_int8_attn, fp16)
    torch.library.opcheck(interpreter.sage_int8_attn, fp8,
                          test_utils=("test_faketensor", "test_autograd_registration"))
    n_groups = 4 * 8  # sm90 per-thread Q: ceil(64 / 64) * (64 / 16) * 8
    torch.library.opcheck(interpreter.sage_quant_rows, (q, None, 0.25, "q", "per_thread", 16, n_groups, 32))
    km = k.mean(dim=-2, keepdim=True)
    torch.library.opcheck(interpreter.sage_quant_rows, (k, km, 1.0, "k", "per_thread", 128, 4, 32))


@in_process
def test_fp8_operands_made_by_torch_multiply_exactly(probes):
    """tl.dot decodes FP8 operands exactly (fp8 -> fp16 -> fp32 matmul): no error from the dot itself."""
    _, run_dot = probes
    g = torch.Generator().manual_seed(0)
    a8 = (torch.randn(32, 32, generator=g) * 4).to(torch.float8_e4m3fn)
    b8 = (torch.randn(32, 32, generator=g) * 4).to(torch.float8_e4m3fn)
    assert torch.allclose(run_dot(a8, b8, False), a8.float() @ b8.float(), rtol=1e-6, atol=1e-5)


@in_process
def test_interpreter_fp32_to_fp8_cast_defect(interpreter, probes):
    """The deviation seen under the interpreter (up to 3.4 on a random 32x32x32 FP8 dot) comes from the cast.

    In the normal range the interpreter's ``.to(tl.float8e4nv)`` equals
    ``interpreter_fp8_cast_defect`` exactly: a rounding carry out of the mantissa is lost when the
    biased exponent is odd (31.1 -> 16 instead of 32), and ties round up in magnitude.
    """
    run_cast, run_dot = probes
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(8192, generator=g) * 40).clamp(-448, 448)
    x = x[x.abs() >= 2 ** -6][:4096]
    native = run_cast(x, False)
    torch_rtne = x.to(torch.float8_e4m3fn).float()
    if torch.equal(native, torch_rtne):
        pytest.skip("this triton's interpreter casts to FP8 correctly; EMULATE_FP8_CAST is no longer needed")
    assert torch.equal(native, interpreter.interpreter_fp8_cast_defect(x))
    wrong = native != torch_rtne
    lost_carry = native[wrong] * 2 == torch_rtne[wrong]  # 2^e instead of 2^(e+1)
    tie_up = (native[wrong] - torch_rtne[wrong]).abs() <= torch_rtne[wrong].abs() / 8  # one E4M3 ulp
    assert bool((lost_carry | tie_up).all()) and lost_carry.sum() > 0
    # the dot on in-kernel-cast operands is exactly the product of the defective casts
    a, b = (torch.randn(32, 32, generator=g) * 4 for _ in range(2))
    a, b = (torch.where(t.abs() < 2 ** -5, torch.full_like(t, 0.5), t) for t in (a, b))  # normal range
    c = run_dot(a, b, True)
    pred = interpreter.interpreter_fp8_cast_defect(a) @ interpreter.interpreter_fp8_cast_defect(b)
    assert torch.allclose(c, pred, rtol=1e-5, atol=1e-4)
    assert (c - a.to(torch.float8_e4m3fn).float() @ b.to(torch.float8_e4m3fn).float()).abs().max() > 0.5


@in_process
def test_interpreter_subnormal_cast_truncates(probes):
    """Below 2^-6 (E4M3 subnormals) the native cast is never above RTNE and at most 2^-6 below."""
    run_cast, _ = probes
    x = torch.rand(4096, generator=torch.Generator().manual_seed(2)) * 2 ** -6
    diff = run_cast(x, False) - x.to(torch.float8_e4m3fn).float()
    assert diff.max() <= 0 and diff.min() >= -(2 ** -6)


@in_process
def test_emulated_rounding_is_exact_rtne(probes):
    """``_round_e4m3`` (P~ under the interpreter) then the cast equals torch's RTNE, ties included."""
    run_cast, _ = probes
    g = torch.Generator().manual_seed(3)
    ties = torch.tensor([1.0625, 1.1875, 0.5 + 2 ** -5, 2 ** -9 * 1.5, 2 ** -9 * 2.5, 448.0, 0.0, 15.5])
    x = torch.cat([torch.rand(2040, generator=g) * 448, torch.rand(2048, generator=g) * 2 ** -5, ties])
    assert torch.equal(run_cast(x, True), x.to(torch.float8_e4m3fn).float())


@in_process
@pytest.mark.parametrize("arch, recipe", [("sm90", "release"), ("sm120", "release")])  # per-thread, per-warp
def test_fused_quantizer_equals_reference_preprocessing(interpreter, arch, recipe):
    """One-pass Triton INT8 quantization == quantize_qk bit for bit (per-thread, per-warp, per-block)."""
    from attn_processors.sage.reference import quantize_qk

    q, k, _ = real_like(1, 2, 200, 40, seed=4)  # N off the tiles, D padded to 64
    spec = spec_for(recipe, arch)
    fused = interpreter.quantize_qk_fused(q.transpose(1, 2).contiguous().transpose(1, 2), k, spec, 0.3)
    ref = quantize_qk(q, k, spec, 0.3)
    for name in ("q", "k"):
        ints = fused[f"{name}_i8"]
        assert ints.shape[-1] == 64 and not ints[..., 40:].any()
        assert torch.equal(ints[..., :40].float(), ref[f"{name}_int"])
        assert torch.equal(fused[f"{name}_scale"], ref[f"{name}_scale"])
        assert torch.equal(fused[f"{name}_scale_groups"], ref[f"{name}_scale_groups"])
    assert torch.equal(fused["k_mean"], ref["k_mean"])


COMPILE_SCRIPT = r"""
import json, os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from attn_processors.sage import triton_kernel as tk

ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas-blackwell")
ints = ["n_q", "n_k", "n_heads", "kv_group", "sqb", "sqh", "sqn", "skb", "skh", "skn", "svb", "svh", "svd",
        "sob", "soh", "son"]
def fresh_accumulator(ttgir):
    # the FP8 P.V dot: promotion every 64 products, accumulating into a zero constant (not into acc)
    line = next(x for x in ttgir.splitlines() if "warp_group_dot " in x and "maxNumImpreciseAcc = 64" in x)
    acc = line.split("warp_group_dot", 1)[1].split(",")[2].split("{")[0].strip()
    return any(x.strip().startswith(acc + " = arith.constant dense<0.0") for x in ttgir.splitlines())


out = []
for cap, d, fp8, causal in [(90, 128, True, False), (90, 128, True, True), (90, 64, True, False),
                            (89, 64, True, False), (80, 128, False, False)]:
    const = dict(BLOCK_M=128, BLOCK_N=64, HEAD_D=d, PV_FP8=fp8, CAUSAL=causal, EMULATE_FP8_CAST=False)
    sig = {"Q": "*i8", "K": "*i8", "V": "*fp8e4nv" if fp8 else "*fp16", "QS": "*fp32", "KS": "*fp32",
           "VS": "*fp32", "Out": "*bf16", "LSE": "*fp32", **{n: "i32" for n in ints},
           **{k: "constexpr" for k in const}}
    k = triton.compile(ASTSource(fn=tk._sage_attn_fwd, signature=sig, constexprs=const),
                       target=GPUTarget("cuda", cap, 32), options={"num_warps": 8, "num_stages": 2})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    arch = "sm_90a" if cap == 90 else f"sm_{cap}"
    log = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", f.name, "-o", os.devnull],
                         capture_output=True, text=True).stderr
    spill = re.search(r"(\d+) bytes spill stores", log)
    out.append({"cap": cap, "d": d, "fp8": fp8, "causal": causal, "ptx": k.asm["ptx"].count("mma"),
                "wgmma": sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.\w+\.(\w+\.\w+\.\w+)",
                                               k.asm["ptx"]))),
                "fresh_pv_acc": fresh_accumulator(k.asm["ttgir"]) if fp8 and cap == 90 else None,
                "spill_bytes": int(spill.group(1)) if spill else None})
print(json.dumps(out))
"""


@pytest.mark.slow
def test_kernel_compiles_for_gpus_without_spills():
    """Lower our kernel to PTX/cubin for sm_90a, sm_89 and sm_80 with no GPU present (~30 s).

    Checks what the interpreter cannot: INT8 and FP8 WGMMA on Hopper, the FP8 P.V dot keeping its own
    (fresh) accumulator with promotion every 64 products, and no register spills on Hopper at the
    launch config.
    """
    env = {**os.environ, "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    for r in rows:
        assert r["spill_bytes"] == 0 if r["cap"] == 90 else r["spill_bytes"] < 64, r  # sm80/89: a few bytes
        if r["cap"] == 90:
            assert {"s32.s8.s8", "f32.e4m3.e4m3"} <= set(r["wgmma"]), r
            assert r["fresh_pv_acc"], r
