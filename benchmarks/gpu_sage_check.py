"""One-shot GPU check of SageAttention (H200 target), runnable in one go by a session with the device.

Checks, in order (each one recorded even if a later one fails):
1. kernel parity: our compiled Triton kernel vs the CPU-exact simulator on identical inputs
   (release and sage1, D 64/128, N 1K/4K, causal, GQA), gate relL1 <= 0.01;
   the upstream package too when ``sageattention>=2.1.1`` is importable;
2. accuracy vs float64 on real-like inputs (release, N=8K, D=128);
3. no NaN/Inf for bf16 |q|,|k| = 1e3 and constant K (NaN-guard fallbacks counted);
4. wrapper overhead of a fallback call vs plain SDPA (target: <= 50 us);
5. the speed table of ``sage_bench.py`` (B=1, H=40, bf16, D 64/128, N 2K..32K, median of 20),
   gate >= 1.3x SDPA at N >= 16K, D=128.
Results go to ``$OUT/sage_gpu.json`` (or --out); the last printed line is the JSON.

    python benchmarks/gpu_sage_check.py                     # GPU machine (~3-6 min incl. compiles)
    TRITON_INTERPRET=1 python benchmarks/gpu_sage_check.py --small   # CPU: same code path, tiny shapes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attn_processors.sage import FALLBACKS, reset_counters, sageattn, spec_for  # noqa: E402
from attn_processors.sage.dispatch import triton_spec, upstream_version  # noqa: E402
from attn_processors.sage.synthetic import accuracy, attention_fp64, gaussian, real_like  # noqa: E402
from benchmarks.sage_bench import environment, speed_table  # noqa: E402


def parity(device: torch.device, shapes: list[tuple], heads: int) -> list[dict]:
    """Our Triton kernel (and upstream) vs the simulator with the kernel's own recipe."""
    rows = []
    for recipe, d, n, causal, kv_heads in shapes:
        q, k, v = (t.to(device, torch.bfloat16) for t in real_like(1, heads, n, d, seed=n + d))
        k, v = k[:, :kv_heads].contiguous(), v[:, :kv_heads].contiguous()
        with torch.no_grad():
            ours = sageattn(q, k, v, recipe=recipe, backend="triton", is_causal=causal, min_kv_len=0)
            ref = sageattn(q, k, v, spec=triton_spec(spec_for(recipe)), backend="simulate", is_causal=causal,
                           min_kv_len=0)
        # key "mode" kept: rows compare with benchmarks/results/sage_gpu_h200.json (field: `recipe`)
        row = {"mode": recipe, "d": d, "n": n, "causal": causal, "kv_heads": kv_heads,
               "ours_vs_sim": accuracy(ours, ref)}
        row["pass"] = row["ours_vs_sim"]["rel_l1"] <= 0.01
        if device.type == "cuda" and (upstream_version() or (0,)) >= (2, 1, 1) and recipe == "release":
            with torch.no_grad():
                up = sageattn(q, k, v, backend="upstream", is_causal=causal, min_kv_len=0)
                up_ref = sageattn(q, k, v, spec=spec_for("release", "sm90"), backend="simulate",
                                  is_causal=causal, min_kv_len=0)
            row["upstream_vs_sim"] = accuracy(up, up_ref)
        rows.append(row)
    return rows


def accuracy_vs_fp64(device: torch.device, n: int, d: int, heads: int) -> dict:
    q, k, v = (t.to(device, torch.bfloat16) for t in real_like(1, heads, n, d, seed=7))
    ref = attention_fp64(q, k, v)
    with torch.no_grad():
        out = {"triton": accuracy(sageattn(q, k, v, backend="triton", min_kv_len=0), ref),
               "simulate": accuracy(sageattn(q, k, v, backend="simulate", min_kv_len=0), ref),
               "sdpa_bf16": accuracy(F.scaled_dot_product_attention(q, k, v), ref)}
    return out


def extremes(device: torch.device, n: int) -> dict:
    reset_counters()
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(1, 4, n, 128, generator=g) * 400).clamp(-1e3, 1e3)
    k = (torch.randn(1, 4, n, 128, generator=g) * 400).clamp(-1e3, 1e3)
    v = torch.randn(1, 4, n, 128, generator=g)
    q, k, v = (t.to(device, torch.bfloat16) for t in (q, k, v))
    with torch.no_grad():
        a = sageattn(q, k, v, backend="triton", min_kv_len=0, nan_guard=False)
        b = sageattn(q, torch.full_like(k, 7.0), v, backend="triton", min_kv_len=0, nan_guard=False)
    return {"finite_large": bool(torch.isfinite(a).all()), "finite_constant_k": bool(torch.isfinite(b).all()),
            "fallbacks": dict(FALLBACKS)}


def wrapper_overhead_us(device: torch.device, repeats: int = 200) -> dict:
    """Extra time of sageattn's checks on a call that falls back (kv 256 < min_kv_len)."""
    q, k, v = (t.to(device, torch.bfloat16) for t in gaussian(1, 8, 256, 64))

    def per_call(fn) -> float:
        for _ in range(10):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats * 1e6

    with torch.no_grad():
        base = per_call(lambda: F.scaled_dot_product_attention(q, k, v))
        ours = per_call(lambda: sageattn(q, k, v))
    return {"sdpa_us": base, "sageattn_fallback_us": ours, "overhead_us": ours - base}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="tiny shapes (CPU / interpreter path)")
    out_dir = Path(os.environ.get("OUT", "benchmarks/results"))
    p.add_argument("--out", type=Path, default=out_dir / "sage_gpu.json")
    p.add_argument("--only", default=None,
                   help="comma-separated steps to run, in this order (default: all); e.g. speed,parity")
    p.add_argument("--speed-d", default="64,128", help="head dims of the speed table")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise SystemExit("no CUDA device: run with TRITON_INTERPRET=1 --small to exercise the CPU path")
    small = args.small or device.type == "cpu"
    res: dict = {"check": "gpu_sage_check", "small": small, "env": environment()}
    if small:
        shapes = [("release", 64, 128, False, 2), ("sage1", 64, 128, False, 2), ("release", 64, 128, True, 1)]
        steps = {"parity": lambda: parity(device, shapes, 2),
                 "accuracy_vs_fp64": lambda: accuracy_vs_fp64(device, 256, 64, 2),
                 "extremes": lambda: extremes(device, 128),
                 "wrapper_overhead": lambda: wrapper_overhead_us(device, 50)}
    else:
        # few distinct kernels (each one compiles once, ~10-30 s): release D 64/128, sage1, causal; GQA reuses
        shapes = [("release", d, n, False, 8) for d in (64, 128) for n in (1024, 4096)]
        shapes += [("sage1", 128, 4096, False, 8), ("release", 128, 4096, True, 8),
                   ("release", 128, 4096, False, 2)]
        steps = {"parity": lambda: parity(device, shapes, 8),
                 "accuracy_vs_fp64": lambda: accuracy_vs_fp64(device, 8192, 128, 8),
                 "extremes": lambda: extremes(device, 16384),
                 "wrapper_overhead": lambda: wrapper_overhead_us(device),
                 "speed": lambda: speed_table(40, [int(d) for d in args.speed_d.split(",")],
                                              [2048, 4096, 8192, 16384, 32768], 20)}
    if args.only:
        names = [n.strip() for n in args.only.split(",")]
        unknown = sorted(set(names) - set(steps))
        if unknown:
            raise SystemExit(f"unknown --only steps {unknown}; choose from {sorted(steps)}")
        steps = {n: steps[n] for n in names}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, fn in steps.items():
        start = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as exc:  # record and go on: one run on the device must bring back everything
            res[name] = {"error": repr(exc), "traceback": traceback.format_exc()[-3000:]}
        res[f"{name}_s"] = round(time.perf_counter() - start, 2)
        print(f"{name}: {res[f'{name}_s']} s", flush=True)
        args.out.write_text(json.dumps(res, indent=1))  # a run cut short still leaves what it measured
    par = res.get("parity")
    res["gates"] = {"parity_rel_l1_le_0.01": isinstance(par, list) and all(r["pass"] for r in par)}
    if isinstance(res.get("speed"), list):
        long = [r for r in res["speed"] if r["d"] == 128 and r["n"] >= 16384]
        fast = bool(long) and all(r["ours_speedup"] >= 1.3 for r in long)
        res["gates"]["speedup_ge_1.3_at_16k_d128"] = fast
    args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
