"""``sageattn``: the upstream call shape, dispatch through the core's table, the NaN guard.

``choose_kernel`` returns ``(kernel, reason)`` like upstream's per-arch switch; it is one row of the
core's dispatch table (``core.kernels.dispatch``) whose rules say why a call runs SDPA instead,
logged once per reason. Counts go to the run's ``controller.stats`` when the kernel runs inside a
pipeline (``sage_kernel(..., stats=ctrl.stats)``); direct ``sageattn`` calls count in the
module's ``FALLBACKS`` / ``KERNEL_CALLS``, which no run report reads. Inputs are never written to
(SageAttention 1.0.6 subtracted the K mean in place).
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
from collections import Counter
from dataclasses import astuple, replace
from typing import Literal

import torch
import torch.nn.functional as F

from ..core.kernels import (
    Attend,
    KernelSpec,
    Unsupported,
    dispatch,
    first_unsupported,
    forget_warnings,
    warn_once,
)
from ..core.policy import check_choice
from .quant import ARCH_PRESETS, LOG2E, head_dim_scale
from .reference import quantize_qk, quantize_v, simulate
from .spec import DEFAULT_ARCH, RECIPES, SAGE1_TILES, SageSpec, spec_for

Backend = Literal[
    "auto",  # upstream sageattention>=2.1.1 on CUDA, else SDPA (our Triton kernel only when asked for)
    "simulate",  # the pure-PyTorch reference (any device; the oracle, slow)
    "triton",  # our Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1)
    "upstream",  # the sageattention package's sageattn()
    "sdpa",  # F.scaled_dot_product_attention (exact)
]
BACKENDS: tuple[str, ...] = ("auto", "simulate", "triton", "upstream", "sdpa")
MIN_KV_LEN = 2048  # below this the quantization overhead eats the gain (thu-ml #343/#70)
LONG_SEQ_FP16_PV = 160_000  # above this FP8 P.V gets visibly noisy (thu-ml #388): FP16 P.V instead
MAX_HEAD_DIM = 128  # upstream raises "Unsupported head_dim" above this
UPSTREAM_MIN_VERSION = (2, 1, 1)  # Diffusers' _REQUIRED_SAGE_VERSION
TRITON_TILES = ARCH_PRESETS["sm89"].tiles  # our kernel: groups + key blocks 128/32/64/64 (triton_spec)
FAST_BLOCK_N = 0  # fast kernel key block on CUDA: 0 = autotuned per arch (fast_kernel.CONFIGS)

LABEL = "sage"  # stats keys "sage.kernel.<name>", "sage.fallback.<category>", "sage.long_seq_fp16_pv"

FALLBACKS: Counter[str] = Counter()  # direct sageattn/choose_kernel calls: category -> calls run by SDPA
KERNEL_CALLS: Counter[str] = Counter()  # direct sageattn calls: kernel -> calls


def reset_counters() -> None:
    """Clear the direct-call counters and the logged-once memory of Sage fallbacks (tests, benchmarks)."""
    FALLBACKS.clear()
    KERNEL_CALLS.clear()
    forget_warnings(f"{LABEL}:")


def _absorb(stats: Counter[str]) -> None:
    """Add one direct call's counts to FALLBACKS / KERNEL_CALLS."""
    for key, n in stats.items():
        group, _, name = key.removeprefix(f"{LABEL}.").partition(".")
        if group == "fallback":
            FALLBACKS[name] += n
        elif group == "kernel":
            KERNEL_CALLS[name] += n
        else:
            KERNEL_CALLS[group] += n  # "long_seq_fp16_pv"


@functools.cache
def _arch_of(index: int) -> str | None:
    major, minor = torch.cuda.get_device_capability(index)
    return {(8, 0): "sm80", (8, 6): "sm86", (8, 7): "sm86", (8, 9): "sm89", (9, 0): "sm90"}.get(
        (major, minor), "sm120" if major == 12 else None)


def detect_arch(device: torch.device) -> str | None:
    """Upstream's arch key for a CUDA device (``"sm90"`` on H100/H200), None on CPU or unknown GPUs."""
    if device.type != "cuda":
        return None
    return _arch_of(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def upstream_version() -> tuple[int, ...] | None:
    """Installed ``sageattention`` version, or None (the package is an optional import)."""
    try:
        text = importlib.metadata.version("sageattention")
    except importlib.metadata.PackageNotFoundError:
        return None
    return tuple(int(p) for p in text.split("+")[0].split(".")[:3] if p.isdigit())


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def choose_kernel(
    q: torch.Tensor, k: torch.Tensor, *, backend: str = "auto", recipe: str = "release",
    attn_mask: torch.Tensor | None = None, min_kv_len: int = MIN_KV_LEN, max_head_dim: int = MAX_HEAD_DIM,
    requires_grad: bool = False, stats: Counter[str] | None = None,
) -> tuple[str, str]:
    """Pick ``"simulate" | "triton" | "upstream" | "sdpa"`` for one call; the reason says why.

    Fallback rules (each logged once, counted in ``stats``, else in ``FALLBACKS``): attention mask,
    head dim above 128, autograd, kv length below ``min_kv_len``, CPU without an explicit kernel
    request, no usable GPU kernel. An explicit backend that cannot run at all raises ValueError.
    """
    check_choice("backend", backend, BACKENDS)
    check_choice("recipe", recipe, RECIPES)
    sink = Counter() if stats is None else stats
    if backend == "sdpa":
        sink[f"{LABEL}.kernel.sdpa"] += 1
        choice = ("sdpa", "requested")
    else:
        rules = first_unsupported(
            lambda q, k, v, m: None if m is None or (
                backend == "triton" and padding_lengths(m, q, k) is not None) else Unsupported(
                "mask", "the quantized kernels take no attention mask (backend='triton' takes a bool "
                "key-padding mask [B, 1, 1, Nk] that keeps a prefix of the keys)"),
            lambda q, k, v, m: None if q.shape[-1] <= max_head_dim else Unsupported(
                "head_dim", f"head dim {q.shape[-1]} > {max_head_dim}"),
            lambda q, k, v, m: None if not requires_grad else Unsupported(
                "autograd", "the quantized kernels have no backward; run under torch.no_grad()"),
            lambda q, k, v, m: None if k.shape[-2] >= min_kv_len else Unsupported(
                "short_kv", f"kv length {k.shape[-2]} < min_kv_len={min_kv_len}"),
            functools.partial(_backend_rule, backend, recipe),
        )
        name = "upstream" if backend == "auto" else backend
        picked = dispatch([KernelSpec(name, None, rules)], q, k, k, attn_mask, label=LABEL, stats=sink)
        choice = (picked.name, "requested" if picked.name == backend else picked.reason)
    if stats is None:
        _absorb(sink)
    return choice


def padding_lengths(mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """Per-sample kv lengths ``[B]`` (int32) when ``mask`` is a padded batch's key-padding mask, else None.

    That is a bool mask of shape ``[B or 1, 1, 1, Nk]`` keeping a non-empty prefix of the keys of each
    sample, what Diffusers builds from a text-padding mask; the Triton kernel then runs it as a
    variable-length batch (its ``k_lens`` path) instead of falling back to SDPA.
    """
    b, nk = q.shape[0], k.shape[-2]
    if (mask is None or mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1:3] != (1, 1)
            or mask.shape[-1] != nk or mask.shape[0] not in (1, b)):
        return None
    keep = mask[:, 0, 0].expand(b, nk)
    lens = keep.sum(dim=-1)
    prefix = torch.arange(nk, device=mask.device)[None, :] < lens[:, None]
    if not bool(torch.equal(keep, prefix)) or int(lens.min()) < 1:
        return None
    return lens.to(torch.int32)


def _backend_rule(backend: str, recipe: str, q: torch.Tensor, k, v, mask) -> Unsupported | None:
    """Whether the requested (or, for auto, the best) kernel runs here; an impossible request raises."""
    if backend == "simulate":
        return None
    if backend == "triton":
        if not triton_available():
            raise ValueError("backend='triton' needs the triton package (pip install 'attn-processors[gpu]')")
        if q.device.type != "cuda" and not _interpreting():
            raise ValueError("backend='triton' on CPU needs TRITON_INTERPRET=1 set before the first call; "
                             "use backend='simulate' for the reference")
        if recipe == "paper4bit":
            raise ValueError("our Triton kernel is INT8 only; run recipe='paper4bit' with backend='simulate'")
        return None
    if backend == "upstream":
        ver = upstream_version()
        if ver is None or ver < UPSTREAM_MIN_VERSION or q.device.type != "cuda":
            raise ValueError(f"backend='upstream' needs sageattention>=2.1.1 on a CUDA device (found {ver}, "
                             f"device {q.device.type})")
        if recipe == "paper4bit":
            raise ValueError("upstream sageattention exposes no INT4 path; use backend='simulate'")
        return None
    return _auto_rule(recipe, q)


def _auto_rule(recipe: str, q: torch.Tensor) -> Unsupported | None:
    """backend="auto": upstream sageattention on a supported GPU, else SDPA with the reason."""
    if q.device.type != "cuda":
        return Unsupported("cpu", "no quantized kernel on CPU; pass backend='simulate' for the reference")
    arch = detect_arch(q.device)
    if arch is None:
        capability = torch.cuda.get_device_capability(q.device)
        return Unsupported("arch", f"unsupported CUDA capability {capability}")
    if recipe == "paper4bit":
        return Unsupported("int4", "no INT4 kernel is available; use backend='simulate'")
    ver = upstream_version()
    if ver is not None and ver >= UPSTREAM_MIN_VERSION:
        return None
    # Our first Triton kernel followed the recipe (parity with the simulator: relL1 <= 5e-4 on an H200) but
    # ran at 0.56x / 0.62x of cuDNN SDPA there at N = 16K / 32K, D = 128 (results/sage_gpu_h200.json).
    # The tuned kernel now behind backend="triton" (fast_kernel, issue 20) has no GPU measurement yet
    # (benchmarks/gpu_sage_check.py is prepared for it): auto must not make a model slower, so it runs SDPA
    # until a measured speed-up >= 1.3x over cuDNN is cited here for the architecture.
    return Unsupported("no_upstream", "sageattention>=2.1.1 is not installed and our Triton kernel "
                       "(backend='triton') has no measured speed-up over cuDNN SDPA yet, so auto runs SDPA")


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, attn_mask: torch.Tensor | None = None,
    is_causal: bool = False, sm_scale: float | None = None, return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact attention on ``[B, H, N, D]`` (GQA allowed); the LSE is computed explicitly if asked."""
    gqa = q.shape[1] != k.shape[1]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=sm_scale,
                                         enable_gqa=gqa)
    if not return_lse:
        return out
    scale = head_dim_scale(q.shape[-1], sm_scale)
    kf = k.float().repeat_interleave(q.shape[1] // k.shape[1], dim=1) if gqa else k.float()
    lse = []
    rows = max(1, (1 << 23) // max(1, q.shape[0] * q.shape[1] * k.shape[-2]))
    for i0 in range(0, q.shape[-2], rows):
        s = q[:, :, i0:i0 + rows].float() @ kf.transpose(-1, -2) * scale  # [B, H, rows, Nk]
        if is_causal:
            i = torch.arange(i0, min(i0 + rows, q.shape[-2]), device=q.device)
            s = s.masked_fill(torch.arange(k.shape[-2], device=q.device) > i[:, None], -math.inf)
        if attn_mask is not None:
            m = attn_mask[..., i0:i0 + rows, :] if attn_mask.shape[-2] > 1 else attn_mask
            s = s.masked_fill(~m, -math.inf) if m.dtype == torch.bool else s + m.float()
        lse.append(torch.logsumexp(s, dim=-1))
    return out, torch.cat(lse, dim=-1)


def _validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tensor_layout: str) -> None:
    if tensor_layout not in ("HND", "NHD"):
        raise ValueError(
            f"tensor_layout must be 'HND' ([B, H, N, D]) or 'NHD' ([B, N, H, D]), got {tensor_layout!r}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D, got {q.dim()}, {k.dim()}, {v.dim()} dims")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(
            f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them first")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype must be float16, bfloat16 or float32, got {q.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    n_axis = 2 if tensor_layout == "HND" else 1
    if q.shape[n_axis] == 0 or k.shape[n_axis] == 0:
        raise ValueError(f"sageattn needs at least one query and one key token, got Nq={q.shape[n_axis]}, "
                         f"Nk={k.shape[n_axis]} ({tensor_layout}); skip the call for an empty sequence")


def _validate_heads(q: torch.Tensor, k: torch.Tensor, is_causal: bool) -> None:
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} must be a multiple of kv heads {k.shape[1]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k head dims differ: {q.shape[-1]} vs {k.shape[-1]}")
    if is_causal and q.shape[-2] != k.shape[-2]:
        raise ValueError("is_causal needs equal query and key lengths (as upstream)")


def sageattn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    sm_scale: float | None = None,
    return_lse: bool = False,
    recipe: str = "release",
    backend: str = "auto",
    attn_mask: torch.Tensor | None = None,
    arch: str | None = None,
    min_kv_len: int = MIN_KV_LEN,
    nan_guard: bool = True,
    long_seq_fp16_pv: int | None = LONG_SEQ_FP16_PV,
    spec: SageSpec | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SageAttention with upstream's call shape; a drop-in for ``sageattention.sageattn``.

    q ``[B, Hq, Nq, D]`` and k, v ``[B, Hkv, Nk, D]`` for ``tensor_layout="HND"`` (``"NHD"``:
    ``[B, N, H, D]``); ``Hq % Hkv == 0`` (GQA); ``Nq, Nk >= 1`` (an empty sequence raises). Returns
    the output in q's dtype and layout, plus the natural-log LSE ``[B, Hq, Nq]`` (fp32) with
    ``return_lse``. ``recipe`` names the quantization (``spec.RECIPES``); ``arch`` picks the tile
    preset (default: the device's, ``"sm90"`` on CPU); ``spec`` overrides ``recipe`` entirely.
    Above ``long_seq_fp16_pv`` keys, FP8 P.V switches to FP16 P.V (FP8 noise grows with length,
    thu-ml #388); None keeps FP8 at any length. Counts go to ``FALLBACKS`` / ``KERNEL_CALLS``.

    >>> q = k = v = torch.randn(1, 2, 256, 64)
    >>> sageattn(q, k, v, backend="simulate", min_kv_len=0).shape
    torch.Size([1, 2, 256, 64])
    """
    stats: Counter[str] = Counter()
    try:
        return run_sage(q, k, v, tensor_layout=tensor_layout, is_causal=is_causal, sm_scale=sm_scale,
                        return_lse=return_lse, recipe=recipe, backend=backend, attn_mask=attn_mask, arch=arch,
                        min_kv_len=min_kv_len, nan_guard=nan_guard, long_seq_fp16_pv=long_seq_fp16_pv,
                        spec=spec, stats=stats)
    finally:
        _absorb(stats)


def run_sage(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, tensor_layout: str, is_causal: bool,
    sm_scale: float | None, return_lse: bool, recipe: str, backend: str, attn_mask: torch.Tensor | None,
    arch: str | None, min_kv_len: int, nan_guard: bool, long_seq_fp16_pv: int | None, spec: SageSpec | None,
    stats: Counter[str],
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``sageattn`` counting into ``stats`` (a run's ``controller.stats``, or one direct call's)."""
    _validate(q, k, v, tensor_layout)
    if tensor_layout == "NHD":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # views in HND, [B, H, N, D]
    _validate_heads(q, k, is_causal)
    requires_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    kernel, _ = choose_kernel(q, k, backend=backend, recipe=recipe, attn_mask=attn_mask,
                              min_kv_len=min_kv_len, requires_grad=requires_grad, stats=stats)
    kw = dict(is_causal=is_causal, sm_scale=sm_scale, return_lse=return_lse)
    if kernel == "sdpa":
        res = sdpa_attention(q, k, v, attn_mask=attn_mask, **kw)
    else:
        arch = arch or detect_arch(q.device) or DEFAULT_ARCH
        spec = spec or spec_for(recipe, arch)
        if spec.pv == "fp8" and long_seq_fp16_pv is not None and k.shape[-2] > long_seq_fp16_pv:
            stats[f"{LABEL}.long_seq_fp16_pv"] += 1
            spec = replace(spec, pv="fp16")
        k_lens = padding_lengths(attn_mask, q, k) if attn_mask is not None else None  # triton only
        res = _run_kernel(kernel, q, k, v, spec, k_lens=k_lens, **kw)
        out = res[0] if return_lse else res
        if nan_guard and not bool(torch.isfinite(out).all()):
            _nonfinite(kernel, q, k, v, stats)
            res = sdpa_attention(q, k, v, attn_mask=attn_mask, **kw)
    out, lse = (res if return_lse else (res, None))
    out = out.to(q.dtype)
    if tensor_layout == "NHD":
        out = out.transpose(1, 2)
    return (out, lse.float()) if return_lse else out


def _nonfinite(kernel: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stats: Counter[str]) -> None:
    """Count and log (once per cause) a non-finite quantized output, saying whether the input caused it."""
    bad = [name for name, t in (("q", q), ("k", k), ("v", v)) if not bool(torch.isfinite(t).all())]
    if bad:
        category = "nonfinite_input"
        detail = (f"the input {'/'.join(bad)} already held NaN/Inf before {kernel} ran (not a kernel fault); "
                  "the call was recomputed with SDPA, which carries the non-finite values through")
    else:
        category = "nonfinite"
        detail = f"{kernel} produced NaN/Inf from finite inputs; this call was recomputed with SDPA"
    stats[f"{LABEL}.fallback.{category}"] += 1
    warn_once(f"{LABEL}:fallback:{category}",
              f"{LABEL} kernel falls back to SDPA ({category}): {detail}; further cases are only counted")


def sage_kernel(
    *, recipe: str = "release", backend: str = "auto", arch: str | None = None,
    min_kv_len: int = MIN_KV_LEN, nan_guard: bool = True, long_seq_fp16_pv: int | None = LONG_SEQ_FP16_PV,
    stats: Counter[str] | None = None,
) -> Attend:
    """The Sage kernel as an ``attend(q, k, v, *, mask=None, scale=None)`` on [B, H, N, D], counting into
    ``stats`` (a run's ``controller.stats``; None: the direct-call counters). Every technique that runs
    Sage (its processor, its calibration probe, an inner kernel of tile-sparse) goes through this one."""

    def sage_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None = None,
                    scale: float | None = None) -> torch.Tensor:
        options = dict(recipe=recipe, backend=backend, attn_mask=mask, arch=arch, min_kv_len=min_kv_len,
                       nan_guard=nan_guard, long_seq_fp16_pv=long_seq_fp16_pv, sm_scale=scale)
        if stats is None:
            return sageattn(q, k, v, **options)
        return run_sage(q, k, v, tensor_layout="HND", is_causal=False, return_lse=False, spec=None,
                        stats=stats, **options)

    return sage_attend


def _run_kernel(
    kernel: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: SageSpec, *, is_causal: bool,
    sm_scale: float | None, return_lse: bool, k_lens: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    if kernel == "simulate":
        return simulate(q, k, v, spec, sm_scale=sm_scale, is_causal=is_causal, return_lse=return_lse)
    if kernel == "upstream":
        import sageattention

        qc, kc, vc = (t if t.dtype != torch.float32 else t.half() for t in (q, k, v))
        if spec.pv == "fp16" and spec.qk_gran == "per_block":  # sage1 recipe
            return sageattention.sageattn_qk_int8_pv_fp16_triton(
                qc, kc, vc, tensor_layout="HND", is_causal=is_causal, sm_scale=sm_scale,
                return_lse=return_lse)
        if spec.pv == "fp16":  # long sequences: FP16 P.V with fp32 accumulation
            return sageattention.sageattn_qk_int8_pv_fp16_cuda(
                qc, kc, vc, tensor_layout="HND", is_causal=is_causal, sm_scale=sm_scale,
                pv_accum_dtype="fp32", return_lse=return_lse)
        return sageattention.sageattn(qc, kc, vc, tensor_layout="HND", is_causal=is_causal, sm_scale=sm_scale,
                                      return_lse=return_lse)
    return _run_triton(q, k, v, spec, is_causal=is_causal, sm_scale=sm_scale, return_lse=return_lse,
                       k_lens=k_lens)


def triton_spec(spec: SageSpec) -> SageSpec:
    """The recipe our Triton kernel computes (the simulator reproduces it exactly).

    - fp32 outer accumulation lets FP8 V use the full 448 range;
    - key blocks of 64 (``TRITON_TILES``) on every arch: the fresh per-block FP8 accumulator of the
      two-level scheme costs a second [BLOCK_M, D] register tile, and with 128-key blocks ptxas
      spills on sm90 at D=128 (checked by compiling for sm_90a without a GPU); with 64 it does not.
    """
    if spec.tiles.blk_k != TRITON_TILES.blk_k:
        spec = replace(spec, tiles=TRITON_TILES if spec.qk_gran != "per_block" else SAGE1_TILES)
    return replace(spec, v_scale_max=448.0) if spec.pv == "fp8" else spec


def _run_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: SageSpec, *, is_causal: bool,
    sm_scale: float | None, return_lse: bool, k_lens: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Our Triton path: the tuned fused kernel (``fast_kernel``) for per-thread / per-warp / per-block
    groups, the first kernel with torch preprocessing for per-token groups (a comparison layout)."""
    from . import fast_kernel, triton_kernel

    if spec.smooth_q or spec.qk_bits != 8 or spec.pv == "fp32":
        raise ValueError(f"our Triton kernel runs INT8 Q/K without smooth-Q and FP8/FP16 P.V; got {spec}")
    if spec.pv == "fp8" and q.device.type == "cuda" and torch.cuda.get_device_capability(q.device) < (8, 9):
        spec = replace(spec, pv="fp16")  # no FP8 tensor cores before sm89
    spec = triton_spec(spec)
    scale = head_dim_scale(q.shape[-1], sm_scale)
    out_dtype = q.dtype if q.device.type == "cuda" else torch.float32
    block_m = 128 if q.device.type == "cuda" else 64
    if spec.qk_gran in fast_kernel.GRANULARITIES:  # one fused Triton launch quantizes Q, K and V
        arch = detect_arch(q.device) or DEFAULT_ARCH
        block_n = spec.tiles.blk_k if q.device.type != "cuda" else FAST_BLOCK_N  # 0: autotuned
        out, lse, km = fast_kernel.sage2_fused(
            q, k, v, spec.qk_gran, *astuple(spec.tiles), spec.smooth_k, spec.pv, scale * LOG2E, is_causal,
            out_dtype, arch, block_n, None, k_lens)
        km = km[:, :, None] if spec.smooth_k else None
    elif k_lens is not None:
        raise ValueError(f"the key-padding (varlen) path needs qk_gran in {fast_kernel.GRANULARITIES}, "
                         f"got {spec.qk_gran!r}")
    else:  # per-token groups (a comparison layout): torch preprocessing
        pre = quantize_qk(q, k, spec, scale * LOG2E)
        vq, v_scale = quantize_v(v, spec)
        out, lse = triton_kernel.run_preprocessed(pre, vq, v_scale, spec.pv, is_causal, out_dtype,
                                                  block_m=block_m, block_n=spec.tiles.blk_k)
        km = pre["k_mean"]
    if not return_lse:
        return out
    if spec.smooth_k:  # lse_correction: the kernel saw K - mean(K)
        hq = q.shape[1]
        km = km.repeat_interleave(hq // k.shape[1], dim=1)
        lse = lse + (q.float() @ km.transpose(-1, -2)).squeeze(-1) * scale
    return out, lse
