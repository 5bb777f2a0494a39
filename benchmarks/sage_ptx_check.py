"""What our Sage kernels compile to on Hopper, without a GPU: tensor-core instructions and register spills.

Lowers ``fast_kernel._sage2_fwd`` (and, for comparison, the first kernel ``triton_kernel._sage_attn_fwd``)
with ``triton.compile(..., target=GPUTarget("cuda", 90, 32))``: Triton's NVIDIA backend emits PTX for
``sm_90a`` on any machine. Counts every ``wgmma.mma_async`` and ``mma.sync`` by operand types (the
Q.K product must be ``s32.s8.s8`` WGMMA and the P.V product ``f32.e4m3.e4m3`` WGMMA, not the
Ampere-style ``mma.sync``), then runs the bundled ``ptxas -v`` (when present) for registers and spill
bytes. Also compiles the sm_89 / sm_80 variants for their instruction mix.

    OMP_NUM_THREADS=1 TRITON_INTERPRET=0 python benchmarks/sage_ptx_check.py   # ~1-2 min on 1 core
    # -> benchmarks/results/sage_ptx_sm90a.json (--out to change)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WGMMA = re.compile(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)\.(\w+)\.(\w+)\.(\w+)")
MMA_SYNC = re.compile(r"mma\.sync\.aligned\.(m\d+n\d+k\d+)\.row\.col(?:\.satfinite)?\.(\w+)\.(\w+)\.(\w+)")
INTS = ["n_q", "n_k", "n_kp", "n_heads", "kv_group", "sob", "soh", "son"]
PTRS = {"QI": "*i8", "QS": "*fp32", "KI": "*i8", "KS": "*fp32", "VS": "*fp32", "LSE": "*fp32",
        "QLEN": "*i32", "KLEN": "*i32"}


def instruction_counts(ptx: str) -> dict[str, dict[str, int]]:
    """{"wgmma": {"s32.s8.s8": n, ...}, "mma_sync": {...}}: accumulator.A.B types -> occurrences."""
    wg = Counter(".".join(m.groups()[1:]) for m in WGMMA.finditer(ptx))
    ms = Counter(".".join(m.groups()[1:]) for m in MMA_SYNC.finditer(ptx))
    return {"wgmma": dict(wg), "mma_sync": dict(ms)}


def find_ptxas() -> list[str]:
    """ptxas candidates, newest first: Triton's bundled ptxas-blackwell (its PTX .version can be newer
    than the plain bundled ptxas accepts), the bundled ptxas, then a CUDA toolkit's on PATH."""
    import triton

    nvidia_bin = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    found = [str(nvidia_bin / n) for n in ("ptxas-blackwell", "ptxas") if (nvidia_bin / n).exists()]
    on_path = shutil.which("ptxas")
    return found + ([on_path] if on_path and on_path not in found else [])


def ptxas_name(path: str) -> str:
    """``ptxas-blackwell 13.4`` style: the tool's file name and CUDA release, not a machine path."""
    res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    release = re.search(r"release (\d+\.\d+)", res.stdout)
    return f"{Path(path).name} {release.group(1) if release else '?'}"


def ptxas_report(ptx: str, arch: str, candidates: list[str]) -> dict:
    """Registers, spill stores/loads and shared memory from ``ptxas -v``, or why there are none.

    Tries each candidate until one accepts the PTX's ``.version`` (an older ptxas refuses newer PTX).
    """
    if not candidates:
        return {"ptxas": "ptxas unavailable"}
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        for ptxas in candidates:
            res = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", f.name, "-o", os.devnull],
                                 capture_output=True, text=True, timeout=600)
            log = res.stderr + res.stdout
            if res.returncode == 0 or "Unsupported .version" not in log:
                break
    finally:
        os.unlink(f.name)
    if res.returncode != 0:
        return {"ptxas": f"ptxas failed (rc {res.returncode}): {log[-400:]}"}

    def num(pattern: str) -> int | None:
        m = re.search(pattern, log)
        return int(m.group(1)) if m else None

    return {"ptxas": ptxas_name(ptxas), "registers": num(r"Used (\d+) registers"),
            "spill_store_bytes": num(r"(\d+) bytes spill stores"),
            "spill_load_bytes": num(r"(\d+) bytes spill loads"), "smem_bytes": num(r"(\d+) bytes smem")}


def compile_fast(cap: int, d: int, block_m: int, block_n: int, warps: int, stages: int, *, fp8: bool,
                 causal: bool, varlen: bool = False):
    """The new attention kernel lowered for compute capability ``cap`` (no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from attn_processors.sage import fast_kernel as fk

    dp = fk.pad_head_dim(d)
    const = dict(D=d, DP=dp, BLOCK_M=block_m, BLOCK_N=block_n, PV_FP8=fp8, CAUSAL=causal, VARLEN=varlen,
                 EMULATE_FP8_CAST=False, P_OFF=fk.P_OFFSET if fp8 else 0.0)
    sig = {**PTRS, "VT": "*fp8e4nv" if fp8 else "*fp16", "Out": "*bf16", **{n: "i32" for n in INTS},
           **{k: "constexpr" for k in const}}
    sig = {name: sig[name] for name in fk._sage2_fwd.arg_names}
    # pointers 16-byte aligned and the padded sizes multiples of 16, as torch allocations and the
    # 128-key padding give at run time (Triton specializes launches on exactly these properties)
    aligned = [(i,) for i, name in enumerate(fk._sage2_fwd.arg_names)
               if name in PTRS or name in ("VT", "Out", "n_kp", "son")]
    attrs = {a: [["tt.divisibility", 16]] for a in aligned}
    return triton.compile(ASTSource(fn=fk._sage2_fwd, signature=sig, constexprs=const, attrs=attrs),
                          target=GPUTarget("cuda", cap, 32),
                          options={"num_warps": warps, "num_stages": stages})


def compile_first_kernel(cap: int, d: int):
    """The first Triton kernel (``triton_kernel._sage_attn_fwd``) at its launch config, for comparison."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from attn_processors.sage import triton_kernel as tk

    ints = ["n_q", "n_k", "n_heads", "kv_group", "sqb", "sqh", "sqn", "skb", "skh", "skn", "svb", "svh",
            "svd", "sob", "soh", "son"]
    const = dict(BLOCK_M=128, BLOCK_N=64, HEAD_D=d, PV_FP8=True, CAUSAL=False, EMULATE_FP8_CAST=False)
    sig = {"Q": "*i8", "K": "*i8", "V": "*fp8e4nv", "QS": "*fp32", "KS": "*fp32", "VS": "*fp32",
           "Out": "*bf16", "LSE": "*fp32", **{n: "i32" for n in ints}, **{k: "constexpr" for k in const}}
    return triton.compile(ASTSource(fn=tk._sage_attn_fwd, signature=sig, constexprs=const),
                          target=GPUTarget("cuda", cap, 32), options={"num_warps": 8, "num_stages": 2})


def compile_quant(cap: int, d: int):
    """The fused Q/K/V quantization kernel (memory-bound: only checks it lowers and does not spill)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from attn_processors.sage import fast_kernel as fk

    const = dict(D=d, DP=fk.pad_head_dim(d), R=fk.QUANT_ROWS, WQ=16, KIND_Q=0, WK=128, KIND_K=1,
                 SMOOTH_K=True, PV_FP8=True, VARLEN=False, EMULATE_FP8_CAST=False)
    types = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "KMEAN": "*fp32", "VAMAX": "*fp32", "QLEN": "*i32",
             "KLEN": "*i32", "QI": "*i8", "QS": "*fp32", "KI": "*i8", "KS": "*fp32", "VT": "*fp8e4nv",
             "mul": "fp32", "v_max": "fp32"}
    sig = {n: types.get(n, "constexpr" if n in const else "i32") for n in fk._sage2_quant.arg_names}
    return triton.compile(ASTSource(fn=fk._sage2_quant, signature=sig, constexprs=const),
                          target=GPUTarget("cuda", cap, 32), options={"num_warps": 8, "num_stages": 1})


def entry(name: str, kernel, arch: str, ptxas: str | None, extra: dict) -> dict:
    ptx = kernel.asm["ptx"]
    row = {"kernel": name, "arch": arch, **extra, **instruction_counts(ptx), **ptxas_report(ptx, arch, ptxas)}
    row["ptx_lines"] = ptx.count("\n")
    return row


def run(quick: bool = False) -> dict:
    """All sm90 autotuning configs at D 64/128, causal and varlen variants, sm_89 / sm_80, the quantizer and
    the first kernel; ``quick``: only the first sm90 config at D=128 (what the test compiles)."""
    import triton

    from attn_processors.sage import fast_kernel as fk

    ptxas = find_ptxas()
    rows: list[dict] = []
    start = time.perf_counter()
    for m, n, w, s in fk.CONFIGS["sm90"][:1] if quick else fk.CONFIGS["sm90"]:
        for d in (128,) if quick else (64, 128):
            cfg = dict(d=d, block_m=m, block_n=n, num_warps=w, num_stages=s, fp8=True, causal=False)
            rows.append(entry("sage2_fwd", compile_fast(90, d, m, n, w, s, fp8=True, causal=False), "sm_90a",
                              ptxas, cfg))
    extra = [] if quick else [("sm_90a", 90, 128, True, True, False), ("sm_90a", 90, 128, True, False, True),
                              ("sm_89", 89, 128, True, False, False), ("sm_80", 80, 128, False, False, False)]
    for arch, cap, d, fp8, causal, varlen in extra:
        m, n, w, s = fk.CONFIGS[{90: "sm90", 89: "sm89", 80: "sm80"}[cap]][0]
        cfg = dict(d=d, block_m=m, block_n=n, num_warps=w, num_stages=s, fp8=fp8, causal=causal,
                   varlen=varlen)
        kernel = compile_fast(cap, d, m, n, w, s, fp8=fp8, causal=causal, varlen=varlen)
        rows.append(entry("sage2_fwd", kernel, arch, ptxas, cfg))
    if not quick:
        rows.append(entry("sage2_quant", compile_quant(90, 128), "sm_90a", ptxas, {"d": 128}))
        rows.append(entry("first_kernel_sage_attn_fwd", compile_first_kernel(90, 128), "sm_90a", ptxas,
                          dict(d=128, block_m=128, block_n=64, num_warps=8, num_stages=2, fp8=True)))
    hopper = [r for r in rows if r["kernel"] == "sage2_fwd" and r["arch"] == "sm_90a"]
    summary = {
        "qk_wgmma_s8": all(r["wgmma"].get("s32.s8.s8", 0) > 0 for r in hopper),
        "pv_wgmma_e4m3": all(r["wgmma"].get("f32.e4m3.e4m3", 0) > 0 for r in hopper),
        "no_mma_sync_on_sm90a": all(not r["mma_sync"] for r in hopper),
        "spill_free_configs_sm90a": [
            [r["block_m"], r["block_n"], r["num_warps"], r["num_stages"], r["d"]] for r in hopper
            if r.get("spill_store_bytes") == 0 and r.get("spill_load_bytes") == 0],
        "ptxas": [ptxas_name(p) for p in ptxas] or "ptxas unavailable",  # candidates, tried in order
    }
    return {"check": "sage_ptx_check", "triton": triton.__version__,
            "target": "cuda sm_90a (GPUTarget cuda 90)", "summary": summary, "kernels": rows,
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sage_ptx_sm90a.json")
    p.add_argument("--quick", action="store_true", help="one sm_90a config at D=128 (the test; ~30 s)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("unset TRITON_INTERPRET: the interpreter does not compile to PTX")
    res = run(args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["summary"]))
    return res


if __name__ == "__main__":
    main()
