"""SageAttention2: accuracy of every recipe against float64 attention, and (on CUDA) speed vs SDPA.

Accuracy (any device, the simulator): cos and relL1 = sum|o - ref| / sum|ref| per recipe and input
kind (i.i.d. Gaussian; "real-like" with bias-outlier channels, a V channel bias and, for B, a
log-normal token scale; see attn_processors/sage/synthetic.py).
Speed (CUDA only): B=1, H=40, bf16, D in {64, 128}, N in {2K..32K}; our Triton kernel through
``sageattn`` (quantization and smoothing included), upstream ``sageattention.sageattn`` if
importable, and ``F.scaled_dot_product_attention`` (the backend torch chose is inferred by timing
each forced backend); warm-up, CUDA events, median of 20.

    OMP_NUM_THREADS=1 python benchmarks/sage_bench.py --quick        # CPU: accuracy only (~1 min)
    python benchmarks/sage_bench.py --out benchmarks/results/sage_h200.json   # GPU machine
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attn_processors.sage import sage_report, sageattn, simulate, spec_for  # noqa: E402
from attn_processors.sage.dispatch import upstream_version  # noqa: E402
from attn_processors.sage.synthetic import accuracy, attention_fp64, gaussian, real_like  # noqa: E402

VARIANTS: dict[str, dict] = {  # name -> spec_for(...) arguments
    "release_sm90": dict(recipe="release", arch="sm90"),
    "release_sm89": dict(recipe="release", arch="sm89"),
    "sage1": dict(recipe="sage1"),
    "paper4bit": dict(recipe="paper4bit"),
    "int4_smooth_k_only": dict(recipe="paper4bit", smooth_q=False),
    "int4_per_block_unsmoothed": dict(recipe="paper4bit", smooth_q=False, smooth_k=False,
                                      qk_gran="per_block"),
}
INT4 = ("paper4bit", "int4_smooth_k_only", "int4_per_block_unsmoothed")


def make_inputs(kind: str, n: int, d: int, device: torch.device, seed: int = 0):
    if kind == "gaussian":
        q, k, v = gaussian(1, 2, n, d, seed=seed)
    elif kind == "real_like_a":
        q, k, v = real_like(1, 2, n, d, seed=seed)
    elif kind == "real_like_b":
        q, k, v = real_like(1, 2, n, d, seed=seed, token_scale_sigma=0.7)
    else:
        raise ValueError(f"unknown input kind {kind!r}")
    return q.to(device), k.to(device), v.to(device)


def accuracy_table(n: int, dims: list[int], kinds: list[str], device: torch.device) -> list[dict]:
    """One row per (kind, D, variant); INT4 rows only on structured inputs (INT4 is not meant for noise)."""
    rows = []
    for kind in kinds:
        for d in dims:
            q, k, v = make_inputs(kind, n, d, device)
            ref = attention_fp64(q, k, v)
            bf16 = F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
            rows.append({"kind": kind, "d": d, "n": n, "variant": "bf16_sdpa", **accuracy(bf16, ref)})
            for name, args in VARIANTS.items():
                if kind == "gaussian" and name in INT4[1:]:
                    continue
                args = dict(args)
                spec = spec_for(args.pop("recipe"), args.pop("arch", "sm90"), **args)
                start = time.perf_counter()
                out = simulate(q, k, v, spec)
                rows.append({"kind": kind, "d": d, "n": n, "variant": name, **accuracy(out, ref),
                             "simulate_s": round(time.perf_counter() - start, 3)})
    return rows


def cuda_median_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median of `repeats` CUDA-event timings after `warmup` untimed calls (compile, autotune)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sdpa_backends(q, k, v, repeats: int) -> dict[str, float]:
    """Time default SDPA and each forced backend; the closest forced time names torch's choice."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    res = {"default": cuda_median_ms(lambda: F.scaled_dot_product_attention(q, k, v), repeats)}
    for name, b in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                    ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        try:
            with sdpa_kernel([b]):
                res[name] = cuda_median_ms(lambda: F.scaled_dot_product_attention(q, k, v), repeats)
        except RuntimeError:
            continue
    return res


def speed_row(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, repeats: int) -> dict:
    """Times for one (D, N) on CUDA: SDPA (default + forced backends), ours, upstream."""
    from attn_processors.sage import triton_kernel as tk
    from attn_processors.sage.dispatch import triton_spec
    from attn_processors.sage.quant import LOG2E

    d = q.shape[-1]
    row: dict = {"d": d, "n": q.shape[-2], "heads": q.shape[1]}
    sd = sdpa_backends(q, k, v, repeats)
    forced = {b: t for b, t in sd.items() if b != "default"}
    row["sdpa_ms"], row["sdpa_forced_ms"] = sd["default"], forced
    closest = min(forced, key=lambda b: abs(forced[b] - sd["default"])) if forced else None
    row["sdpa_backend_inferred"] = closest  # torch does not report which backend it chose
    with torch.no_grad():
        row["ours_ms"] = cuda_median_ms(lambda: sageattn(q, k, v, backend="triton", min_kv_len=0), repeats)
        row["ours_no_nan_guard_ms"] = cuda_median_ms(
            lambda: sageattn(q, k, v, backend="triton", min_kv_len=0, nan_guard=False), repeats)
        spec = triton_spec(spec_for("release", "sm90"))
        row["ours_quant_qk_ms"] = cuda_median_ms(lambda: tk.quantize_qk_fused(q, k, spec, d ** -0.5 * LOG2E),
                                                 repeats)
        pre = tk.quantize_qk_fused(q, k, spec, d ** -0.5 * LOG2E)
        v_op, vs = tk.quantize_v_operand(v, "fp8", spec.v_scale_max, pre["q_i8"].shape[-1])
        row["ours_kernel_only_ms"] = cuda_median_ms(
            lambda: tk.sage_int8_attn(pre["q_i8"], pre["k_i8"], pre["q_scale"], pre["k_scale"], v_op, vs,
                                      False, torch.bfloat16, 128, spec.tiles.blk_k), repeats)
        row["ours_preprocess_fraction"] = 1 - row["ours_kernel_only_ms"] / row["ours_no_nan_guard_ms"]
        if (upstream_version() or (0,)) >= (2, 1, 1):
            import sageattention

            row["upstream_ms"] = cuda_median_ms(lambda: sageattention.sageattn(q, k, v), repeats)
    for key in ("ours_ms", "ours_no_nan_guard_ms", "upstream_ms"):
        if key in row:
            row[key.replace("_ms", "_speedup")] = row["sdpa_ms"] / row[key]
    return row


def speed_table(heads: int, dims: list[int], lengths: list[int], repeats: int = 20) -> list[dict]:
    """Milliseconds per call and speed-ups over default SDPA (bf16, B=1, warm, CUDA events)."""
    rows = []
    for d in dims:
        for n in lengths:
            g = torch.Generator(device="cuda").manual_seed(n + d)
            qkv = [torch.randn(1, heads, n, d, device="cuda", dtype=torch.bfloat16, generator=g)
                   for _ in range(3)]
            rows.append(speed_row(*qkv, repeats))
            qkv.clear()
            torch.cuda.empty_cache()
    return rows


def _sage_for_eval():
    from attn_processors.sage import SageConfig

    # the shipped models are small: their sequences are far below the 2048-key default threshold
    backend = "auto" if torch.cuda.is_available() else "simulate"
    return SageConfig(backend=backend, min_kv_len=0)


def shapes_model_eval(model: Path | None, prompts: int, steps: int) -> dict:
    """Shapes text-to-image model: detector scores with SDPA and with Sage (same seeds), PSNR between them."""
    import numpy as np

    from attn_processors.core import apply
    from benchmarks.shapes_eval import generate, prompt_set, score
    from worlds.shapes.pipeline import CFG_SCALE, DEFAULT_MODEL, load_pipeline
    from worlds.shapes.vocab import parse_caption

    pipe = load_pipeline(model or DEFAULT_MODEL)
    texts = prompt_set(1, prompts // 2) + prompt_set(2, prompts - prompts // 2)
    run = lambda: generate(pipe, texts, [0], steps, CFG_SCALE, 8, None, 0)[0]  # noqa: E731
    dense = run()
    with apply(pipe, _sage_for_eval()) as ctrl:
        sage = run()
    res: dict = {"model": str(model or DEFAULT_MODEL), "prompts": len(texts), "steps": steps}
    for name, images in (("sdpa", dense), ("sage", sage)):
        rows = [score(img, parse_caption(t)) for img, t in zip(images, texts, strict=True)]
        res[name] = {f"{k}_accuracy": float(np.mean([r[k] for r in rows]))
                     for k in ("colour", "shape", "count")}
    pairs = zip(dense, sage, strict=True)
    mse = [float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()) for a, b in pairs]
    res["psnr_vs_sdpa"] = float(np.mean([10 * np.log10(255.0 ** 2 / max(m, 1e-10)) for m in mse]))
    res["max_score_delta"] = max(abs(res["sage"][k] - res["sdpa"][k]) for k in res["sdpa"])
    res["calls"] = sage_report(ctrl)  # counts of the last pipeline run (controller.stats is per run)
    return res


def video_model_eval(model: Path | None, prompts: int, steps: int) -> dict:
    """Moving-shapes video model: video scores with SDPA and with Sage (same seeds), per-frame PSNR."""
    import benchmarks.video_eval as ve
    from attn_processors.core import apply

    # the video model is trained on 9-frame 64 px clips with 512 (zero-padded) text rows: evaluate there
    args = argparse.Namespace(batch=8, frames=9, size=64, steps=steps, guidance=4.0, max_sequence_length=512)
    pipe = ve.load_pipeline(model or ve.DEFAULT_MODEL, "cuda" if torch.cuda.is_available() else "cpu")
    items = ve.eval_prompts(prompts, num_objects=1, seed=0)
    texts, seeds = [it["prompt"] for it in items], list(range(len(items)))
    dense = ve.generate(pipe, texts, seeds, args)
    with apply(pipe, _sage_for_eval()) as ctrl:
        sage = ve.generate(pipe, texts, seeds, args)
    res: dict = {"model": str(model or ve.DEFAULT_MODEL), "prompts": len(texts), "steps": steps}
    res["sdpa"] = {k: v for k, v in ve.score(dense, items).items() if k != "rows"}
    res["sage"] = {k: v for k, v in ve.score(sage, items).items() if k != "rows"}
    res["psnr_vs_sdpa"] = ve.frame_psnr(sage, dense)
    res["max_score_delta"] = max(abs(res["sage"][k] - res["sdpa"][k]) for k in res["sdpa"])
    res["calls"] = sage_report(ctrl)  # counts of the last pipeline run (controller.stats is per run)
    return res


def environment() -> dict:
    import importlib.metadata as md

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "sageattention": ".".join(map(str, upstream_version() or ())) or None}
    try:
        env["triton"] = md.version("triton")
    except md.PackageNotFoundError:
        env["triton"] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["capability"] = "sm{}{}".format(*torch.cuda.get_device_capability(0))
    return env


def print_accuracy(rows: list[dict]) -> None:
    print("| input | D | variant | cos | relL1 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['d']} | {r['variant']} | {r['cos']:.6f} | {r['rel_l1']:.4f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N=1024, D=64, two input kinds, short speed table")
    p.add_argument("--heads", type=int, default=40)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--model-eval", choices=("shapes", "video"), default=None,
                   help="instead: score a shipped model with SDPA vs Sage (simulator on CPU)")
    p.add_argument("--model", type=Path, default=None, help="model folder for --model-eval")
    p.add_argument("--prompts", type=int, default=12)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    if args.model_eval:
        fn = shapes_model_eval if args.model_eval == "shapes" else video_model_eval
        result = {"benchmark": f"sage_{args.model_eval}_eval", "env": environment(),
                  **fn(args.model, args.prompts, args.steps)}
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1))
        print(json.dumps(result))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        n, dims, kinds, lengths = 1024, [64], ["gaussian", "real_like_a"], [2048, 8192]
    else:
        n, dims, kinds, lengths = 2048, [64, 128], ["gaussian", "real_like_a", "real_like_b"], [
            2048, 4096, 8192, 16384, 32768]
    acc = accuracy_table(n, dims, kinds, device)
    print_accuracy(acc)
    result = {"benchmark": "sage_bench", "quick": args.quick, "env": environment(), "accuracy": acc}
    if device.type == "cuda":
        speed = speed_table(args.heads, dims if not args.quick else [128], lengths, args.repeats)
        result["speed"] = speed
        for r in speed:
            print(f"D={r['d']} N={r['n']}: sdpa {r['sdpa_ms']:.3f} ms ({r['sdpa_backend_inferred']}), "
                  f"ours {r['ours_ms']:.3f} ms (x{r['ours_speedup']:.2f}), upstream {r.get('upstream_ms')}")
    else:
        result["speed"] = "not measured: no CUDA device"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
