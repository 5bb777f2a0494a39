"""One prepared GPU run for SageAttention (issue 20; H200 target); each step is recorded even if one fails.

Steps, in order:
1. ``kernel_speed``: our Triton path through ``sageattn(backend="triton")`` (fused quantization
   included; autotuned per arch) vs SDPA forced to cuDNN / flash / efficient and vs xformers
   ``memory_efficient_attention`` (when importable), bf16, H=24, B in {1, 2}, D in {64, 128},
   N in {4K, 16K, 32K}; also the kernel alone, the preprocessing alone and the autotuner's choice;
2. ``parity``: the compiled kernel vs the CPU-exact simulator on identical inputs (release / sage1,
   D 64/128, causal, GQA, a padded batch), gate relL1 <= 0.01;
3. ``accuracy_vs_fp64``, ``extremes`` (no NaN/Inf at |q|,|k| = 1e3 or constant K), ``wrapper_overhead``;
4. ``wan_step``: one forward of a Wan-2.1-T2V-1.3B-shaped transformer (30 blocks, 12 heads x 128,
   random weights, bf16) at 480p / 81 frames (21 x 30 x 52 = 32 760 tokens) with dense SDPA, Sage
   (our kernel), tile-sparse, and tile-sparse with Sage on the kept keys.
Writes ``$OUT/sage_gpu_<gpu>.json`` (or --out) after every step, with the headline keys
``speedup_vs_cudnn_n16k_d128``, ``speedup_vs_cudnn_n32k_d128`` (ours incl. preprocessing / cuDNN SDPA,
B=1) and ``parity_max_rel_l1``; the last printed line is the JSON.

    python benchmarks/gpu_sage_check.py                                   # GPU machine (~5-8 min)
    TRITON_INTERPRET=1 OMP_NUM_THREADS=1 python benchmarks/gpu_sage_check.py --small  # CPU rehearsal
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attn_processors.sage import FALLBACKS, reset_counters, sageattn, spec_for  # noqa: E402
from attn_processors.sage.dispatch import triton_spec, upstream_version  # noqa: E402
from attn_processors.sage.synthetic import accuracy, attention_fp64, gaussian, real_like  # noqa: E402
from benchmarks.sage_bench import environment  # noqa: E402

# the transformer config of Wan-AI/Wan2.1-T2V-1.3B-Diffusers
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
WAN_TINY = dict(WAN_1_3B, num_attention_heads=2, attention_head_dim=32, text_dim=32, ffn_dim=64, num_layers=2)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in ms after ``warmup`` calls (compile, autotune): CUDA events on a GPU."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def sdpa_times(q, k, v, device, repeats) -> dict[str, float]:
    """Default SDPA and each backend forced (those this torch/GPU has)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    res = {"sdpa_default": median_ms(lambda: F.scaled_dot_product_attention(q, k, v), device, repeats)}
    for name, b in [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                    ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        try:
            with sdpa_kernel([b]):
                res[f"sdpa_{name}"] = median_ms(lambda: F.scaled_dot_product_attention(q, k, v), device,
                                                repeats)
        except RuntimeError:
            continue
    return res


def ours_split(q, k, v, device, repeats) -> dict:
    """Our path split into preprocessing (fused quantization) and the attention kernel alone."""
    from attn_processors.sage import fast_kernel as fk
    from attn_processors.sage.dispatch import detect_arch
    from attn_processors.sage.quant import LOG2E

    spec = triton_spec(spec_for("release"))
    arch = detect_arch(q.device) or "sm90"
    d = q.shape[-1]
    quant = dict(tiles=spec.tiles, gran=spec.qk_gran, smooth_k=True, pv=spec.pv, log2_scale=d ** -0.5 * LOG2E)
    ops = fk.quantize(q, k, v, **quant)
    out_dtype = q.dtype if device.type == "cuda" else torch.float32
    run = dict(n_q=q.shape[-2], n_k=k.shape[-2], d=d, is_causal=False, out_dtype=out_dtype, arch=arch)
    res = {"ours_preprocess_ms": median_ms(lambda: fk.quantize(q, k, v, **quant), device, repeats),
           "ours_kernel_only_ms": median_ms(lambda: fk.attention(ops, **run), device, repeats)}
    res["autotuned"] = fk.best_config(arch) if device.type == "cuda" else None
    return res


def speed_row(b: int, d: int, n: int, heads: int, device: torch.device, repeats: int) -> dict:
    """Milliseconds of every kernel on one (B, D, N) and the speed-ups of ours over each (>1: ours faster)."""
    from attn_processors.core import kernels as core_kernels

    g = torch.Generator(device=device.type).manual_seed(n + d + b)
    shape = (b, heads, n, d)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, generator=g) for _ in range(3))
    row: dict = {"b": b, "d": d, "n": n, "heads": heads}
    try:
        with torch.no_grad():
            row.update(sdpa_times(q, k, v, device, repeats))
            if core_kernels.xformers_unsupported(q, k, v) is None:
                row["xformers_ms"] = median_ms(lambda: core_kernels.xformers_attention(q, k, v), device,
                                               repeats)
            row["ours_ms"] = median_ms(lambda: sageattn(q, k, v, backend="triton", min_kv_len=0), device,
                                       repeats)
            row["ours_no_nan_guard_ms"] = median_ms(
                lambda: sageattn(q, k, v, backend="triton", min_kv_len=0, nan_guard=False), device, repeats)
            row.update(ours_split(q, k, v, device, repeats))
            if (upstream_version() or (0,)) >= (2, 1, 1) and device.type == "cuda":
                import sageattention

                row["upstream_ms"] = median_ms(lambda: sageattention.sageattn(q, k, v), device, repeats)
    except Exception as exc:  # one failing shape (e.g. out of memory) must not lose the others
        row["error"] = repr(exc)[:500]
    ours = row.get("ours_no_nan_guard_ms")
    if ours:
        row["preprocess_fraction"] = row["ours_preprocess_ms"] / ours
        bases = ("sdpa_default", "sdpa_cudnn", "sdpa_flash", "sdpa_efficient", "xformers_ms", "upstream_ms")
        for base in bases:
            if base in row:
                row[f"speedup_vs_{base.removesuffix('_ms')}"] = row[base] / ours
    return row


def kernel_speed(device: torch.device, batches, dims, lengths, heads: int, repeats: int,
                 rows: list[dict] | None = None, save: Callable[[], None] | None = None) -> list[dict]:
    """One row per (B, D, N), in the order given (the headline D=128 shapes first), appended to ``rows``
    and saved after each (``save``), so a run cut short by its time box keeps the rows it measured."""
    rows = [] if rows is None else rows
    for b in batches:
        for d in dims:
            for n in lengths:
                rows.append(speed_row(b, d, n, heads, device, repeats))
                print(f"kernel_speed: {json.dumps(rows[-1])}", flush=True)
                if save is not None:
                    save()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


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
    rows.append(padded_batch_parity(device, shapes[0][1], shapes[0][2], heads))
    return rows


def padded_batch_parity(device: torch.device, d: int, n: int, heads: int) -> dict:
    """A key-padding mask (the varlen kernel path) vs the simulator on each sample's unpadded keys."""
    q, k, v = (t.to(device, torch.bfloat16) for t in real_like(2, heads, n, d, seed=11))
    keep = torch.ones(2, 1, 1, n, dtype=torch.bool, device=device)
    keep[1, ..., (2 * n) // 3:] = False
    with torch.no_grad():
        out = sageattn(q, k, v, backend="triton", attn_mask=keep, min_kv_len=0)
        worst = 0.0
        for i, nk in enumerate((n, (2 * n) // 3)):
            ref = sageattn(q[i:i + 1], k[i:i + 1, :, :nk], v[i:i + 1, :, :nk],
                           spec=triton_spec(spec_for("release")), backend="simulate", min_kv_len=0)
            worst = max(worst, accuracy(out[i:i + 1], ref)["rel_l1"])
    return {"mode": "release_padded_batch", "d": d, "n": n, "causal": False, "kv_heads": heads,
            "ours_vs_sim": {"rel_l1": worst}, "pass": worst <= 0.01, "fallbacks": dict(FALLBACKS)}


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
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(device)
        return (time.perf_counter() - start) / repeats * 1e6

    with torch.no_grad():
        base = per_call(lambda: F.scaled_dot_product_attention(q, k, v))
        ours = per_call(lambda: sageattn(q, k, v))
    return {"sdpa_us": base, "sageattn_fallback_us": ours, "overhead_us": ours - base}


def wan_step(device: torch.device, small: bool, repeats: int) -> dict:
    """Step time of a Wan-2.1-1.3B-shaped transformer (random weights) per attention configuration."""
    from diffusers import WanTransformer3DModel

    from attn_processors.core import apply
    from attn_processors.core.controller import Controller
    from attn_processors.sage import SageConfig
    from attn_processors.tile_sparse import TileSparseConfig

    torch.manual_seed(0)
    cfg = WAN_TINY if small else WAN_1_3B
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    with torch.device(device):  # initialise the 1.3B random weights on the GPU, not the CPU
        model = WanTransformer3DModel(**cfg).to(dtype).eval()
    latent = (5, 8, 8) if small else (21, 60, 104)  # 81 frames at 480 x 832 through the Wan VAE (4x, 8x8)
    text = (16, cfg["text_dim"]) if small else (512, cfg["text_dim"])
    g = torch.Generator(device=device.type).manual_seed(1)
    kw = dict(hidden_states=torch.randn(1, 16, *latent, device=device, dtype=dtype, generator=g),
              timestep=torch.tensor([500], device=device),
              encoder_hidden_states=torch.randn(1, *text, device=device, dtype=dtype, generator=g),
              return_dict=False)
    tokens = latent[0] * (latent[1] // 2) * (latent[2] // 2)
    sage = SageConfig(backend="triton", min_kv_len=0)
    tile = dict(dense_steps=0.0, dense_blocks=(), min_block_sparsity=0.0)
    modes = {"dense": (), "sage": (sage,), "tile_sparse": (TileSparseConfig(**tile),),
             "tile_sparse_sage": (TileSparseConfig(kernel=sage, **tile),)}
    res: dict = {"config": {k: v for k, v in cfg.items() if k != "patch_size"}, "latent": latent,
                 "video_tokens": tokens, "dtype": str(dtype)}
    ref = None
    for name, configs in modes.items():
        try:
            ctrl = Controller()
            ctrl.begin_step(0, 500.0)
            with torch.no_grad(), (apply(model, *configs, controller=ctrl) if configs else nullcontext()):
                out = model(**kw)[0]
                ms = median_ms(lambda: model(**kw), device, repeats, warmup=1)
            row = {"ms": ms, "stats": {k: v for k, v in ctrl.stats.items() if v}}
            if ref is None:
                ref = out.float()
            else:
                row["rel_l1_vs_dense"] = float((out.float() - ref).abs().sum() / ref.abs().sum())
            res[name] = row
        except Exception as exc:
            res[name] = {"error": repr(exc)[:500], "traceback": traceback.format_exc()[-1500:]}
        print(f"wan_step {name}: {json.dumps(res[name])[:300]}", flush=True)
    if "ms" in res.get("dense", {}):
        for name in list(modes)[1:]:
            if "ms" in res[name]:
                res[name]["speedup_vs_dense"] = res["dense"]["ms"] / res[name]["ms"]
    return res


def gpu_slug(env: dict) -> str:
    """``NVIDIA H200`` -> ``h200``; CPU -> ``cpu_rehearsal``."""
    name = env.get("gpu")
    if not name:
        return "cpu_rehearsal"
    return re.sub(r"[^a-z0-9]+", "_", name.lower().replace("nvidia", "")).strip("_") or "gpu"


def headline(res: dict) -> dict:
    """The issue's keys from the kernel table (B=1, D=128) and the parity rows; None when not measured."""
    rows = res.get("kernel_speed") if isinstance(res.get("kernel_speed"), list) else []

    def speedup(n: int) -> float | None:
        hit = [r for r in rows
               if r["b"] == 1 and r["d"] == 128 and r["n"] == n and "speedup_vs_sdpa_cudnn" in r]
        return hit[0]["speedup_vs_sdpa_cudnn"] if hit else None

    par = res.get("parity") if isinstance(res.get("parity"), list) else []
    rel = [r["ours_vs_sim"]["rel_l1"] for r in par]
    return {"speedup_vs_cudnn_n16k_d128": speedup(16384), "speedup_vs_cudnn_n32k_d128": speedup(32768),
            "parity_max_rel_l1": max(rel) if rel else None}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="CPU rehearsal: tiny shapes, TRITON_INTERPRET=1")
    p.add_argument("--out", type=Path, default=None,
                   help="default: $OUT (or benchmarks/results)/sage_gpu_<gpu>.json")
    p.add_argument("--only", default=None,
                   help="comma-separated steps to run in this order (default: all), e.g. kernel_speed,parity")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (median)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise SystemExit("no CUDA device: run with TRITON_INTERPRET=1 --small to rehearse on the CPU")
    small = args.small or device.type == "cpu"
    env = environment()
    folder = Path(os.environ.get("OUT", ROOT / "benchmarks" / "results"))
    out = args.out or folder / f"sage_gpu_{gpu_slug(env)}.json"
    res: dict = {"check": "gpu_sage_check", "issue": 20, "small": small, "env": env, "kernel_speed": []}

    def save() -> None:
        res.update(headline(res))
        out.write_text(json.dumps(res, indent=1))

    speed_args = dict(rows=res["kernel_speed"], save=save)
    if small:
        reps = min(args.repeats, 2)
        shapes = [("release", 64, 128, False, 2), ("sage1", 64, 128, False, 2), ("release", 64, 128, True, 1)]
        steps = {"kernel_speed": lambda: kernel_speed(device, (1, 2), (32, 64), (128, 256), 2, reps,
                                                      **speed_args),
                 "parity": lambda: parity(device, shapes, 2),
                 "accuracy_vs_fp64": lambda: accuracy_vs_fp64(device, 256, 64, 2),
                 "extremes": lambda: extremes(device, 128),
                 "wrapper_overhead": lambda: wrapper_overhead_us(device, 50),
                 "wan_step": lambda: wan_step(device, True, 1)}
    else:
        # few distinct kernels (each compiles once): release D 64/128, sage1, causal; GQA reuses
        shapes = [("release", d, n, False, 8) for d in (64, 128) for n in (1024, 4096)]
        shapes += [("sage1", 128, 4096, False, 8), ("release", 128, 4096, True, 8),
                   ("release", 128, 4096, False, 2)]
        steps = {"kernel_speed": lambda: kernel_speed(device, (1, 2), (128, 64), (16384, 32768, 4096), 24,
                                                      args.repeats, **speed_args),
                 "parity": lambda: parity(device, shapes, 8),
                 "accuracy_vs_fp64": lambda: accuracy_vs_fp64(device, 8192, 128, 8),
                 "extremes": lambda: extremes(device, 16384),
                 "wrapper_overhead": lambda: wrapper_overhead_us(device),
                 "wan_step": lambda: wan_step(device, False, 3)}
    if args.only:
        names = [n.strip() for n in args.only.split(",")]
        unknown = sorted(set(names) - set(steps))
        if unknown:
            raise SystemExit(f"unknown --only steps {unknown}; choose from {sorted(steps)}")
        steps = {n: steps[n] for n in names}
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, fn in steps.items():
        start = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as exc:  # record and go on: one run on the device must bring back everything
            res[name] = {"error": repr(exc), "traceback": traceback.format_exc()[-3000:]}
        res[f"{name}_s"] = round(time.perf_counter() - start, 2)
        print(f"{name}: {res[f'{name}_s']} s", flush=True)
        save()  # a run cut short still leaves what it measured
    par = res.get("parity")
    res["gates"] = {"parity_rel_l1_le_0.01": isinstance(par, list) and all(r["pass"] for r in par)}
    for key in ("speedup_vs_cudnn_n16k_d128", "speedup_vs_cudnn_n32k_d128"):
        if res.get(key) is not None:
            res["gates"][f"{key}_ge_1.3"] = res[key] >= 1.3
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res.get(k) for k in ("speedup_vs_cudnn_n16k_d128", "speedup_vs_cudnn_n32k_d128",
                                              "parity_max_rel_l1", "gates")}))
    return res


if __name__ == "__main__":
    main()
