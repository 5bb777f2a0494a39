"""Attention kernels behind one signature, a small dispatch table, and one-time logged fallbacks.

Every kernel is a pure function ``attend(q, k, v, *, mask=None, scale=None) -> out`` on
``q: [B, H, Nq, D]``, ``k, v: [B, H, Nk, D]`` returning ``[B, H, Nq, D]``; it never mutates its inputs.
`mask` is broadcastable to ``[B, H, Nq, Nk]``: bool (True = attend) or additive float.
`scale` None means ``1 / sqrt(D)``, as in SDPA.

`dispatch` is the one dispatcher: a table of kernels, each with a rule that says why it cannot run
given inputs, the first that can is chosen, otherwise SDPA with one logged warning; the choice and
the fallback reason are counted in a run's `controller.stats`. Sage's `choose_kernel` and tile-sparse's
`dispatch` are tables over it. `KernelProvider` is how a config hands its kernel to another technique
(`TileSparseConfig(kernel=SageConfig(...))`) without either importing the other.

Example:
    >>> import torch
    >>> q = k = v = torch.randn(1, 2, 8, 4)
    >>> out, probs = explicit_attention(q, k, v, return_probs=True)
    >>> torch.allclose(out, sdpa(q, k, v), atol=1e-6), tuple(probs.shape)
    (True, (1, 2, 8, 8))
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
logger = logging.getLogger("attn_processors")


class Attend(Protocol):
    """The kernel signature every technique and kernel shares."""

    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, scale: float | None = None
    ) -> Tensor: ...


def sdpa(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """PyTorch's fused scaled-dot-product attention; the reference fast path."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False, scale=scale
    )


def attention_logits(
    q: Tensor, k: Tensor, *, mask: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """Pre-softmax scores S = q k^T * scale (+ mask) in fp32, [B, H, Nq, Nk]; masked-out entries -inf."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask, float("-inf"))
        else:
            logits = logits + mask.float()
    return logits


def explicit_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    scale: float | None = None,
    edit_logits: Callable[[Tensor], Tensor] | None = None,
    edit_probs: Callable[[Tensor], Tensor] | None = None,
    return_probs: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q k^T * scale + mask) v with the logits and probabilities exposed, all in fp32.

    `edit_logits(S) -> S'` runs before the softmax, `edit_probs(P) -> P'` after it (both on
    [B, H, Nq, Nk] fp32). Returns `out` in q's dtype, or `(out, probs)` with `return_probs=True`.
    """
    logits = attention_logits(q, k, mask=mask, scale=scale)
    if edit_logits is not None:
        logits = edit_logits(logits)
    probs = torch.softmax(logits, dim=-1)
    if edit_probs is not None:
        probs = edit_probs(probs)
    out = torch.matmul(probs, v.float()).to(q.dtype)
    return (out, probs) if return_probs else out


class KernelChoice(NamedTuple):
    """What a dispatch decided: the kernel to run, why (logged, shown in benchmarks) and its name."""

    kernel: Attend | None
    reason: str
    name: str = "sdpa"


class Unsupported(NamedTuple):
    """Why a kernel cannot run some inputs: a short `category` (the key counted per run, e.g.
    "short_kv") and a `detail` for the one logged warning."""

    category: str
    detail: str


Rule = Callable[..., "str | Unsupported | None"]  # called with the inputs given to `dispatch`


class KernelSpec(NamedTuple):
    """One row of a dispatch table: `unsupported(*inputs)` (usually q, k, v, mask) returns None when
    `fn` can run these inputs, else the reason it cannot (device, dtype, head dim, mask...), as a
    string or an `Unsupported(category, detail)`."""

    name: str
    fn: Attend | None  # None: a kernel the caller runs by name (it takes more than q, k, v, e.g. Sage's LSE)
    unsupported: Rule


def first_unsupported(*rules: Rule) -> Rule:
    """One rule from several, checked in order: the first reason found wins (what the log reports)."""

    def check(*inputs: Any) -> str | Unsupported | None:
        for rule in rules:
            if (why := rule(*inputs)) is not None:
                return why
        return None

    return check


Stats = Counter  # a run's counters (controller.stats): "<label>.kernel.<name>", "<label>.fallback.<category>"


def count(stats: Stats | None, key: str, n: int = 1) -> None:
    """Add `n` to `stats[key]` when there is a sink (kernels called outside a run have none)."""
    if stats is not None:
        stats[key] += n


def fallbacks(stats: Stats, label: str) -> dict[str, int]:
    """{category: calls} of the SDPA fallbacks `dispatch(..., label=label)` counted in `stats`."""
    prefix = f"{label}.fallback."
    return {key[len(prefix):]: n for key, n in stats.items() if key.startswith(prefix) and n}


def dispatch(
    table: Sequence[KernelSpec], *inputs: Any, label: str = "attention", stats: Stats | None = None
) -> KernelChoice:
    """First kernel in `table` whose rule accepts `inputs` (q, k, v, mask for attention kernels; a
    technique may pass what its rules read, e.g. a video geometry); otherwise SDPA, logged once.

    Counts `"<label>.kernel.<name>"` for the kernel chosen and `"<label>.fallback.<category>"` for a
    fallback in `stats` (a run's `controller.stats`). The category of a fallback is the reason of the
    first (preferred) kernel; the warning is logged once per (label, category) per process.
    """
    reasons: list[tuple[str, Unsupported]] = []
    for spec in table:
        why = spec.unsupported(*inputs)
        if why is None:
            count(stats, f"{label}.kernel.{spec.name}")
            return KernelChoice(spec.fn, f"{spec.name}: supported", spec.name)
        reasons.append((spec.name, why if isinstance(why, Unsupported) else Unsupported(spec.name, why)))
    category = reasons[0][1].category if reasons else "empty_table"
    detail = "; ".join(f"{name}: {why.detail}" for name, why in reasons) or "empty kernel table"
    count(stats, f"{label}.fallback.{category}")
    count(stats, f"{label}.kernel.sdpa")
    warn_once(
        f"{label}:fallback:{category}",
        f"{label} kernel falls back to SDPA ({category}): {detail}; further cases are only counted",
    )
    return KernelChoice(sdpa, f"{category}: {detail}", "sdpa")


@runtime_checkable
class KernelProvider(Protocol):
    """A config that supplies an attention kernel (SageConfig today), so another technique can run it
    inside its own computation (TileSparseConfig(kernel=...)) without importing the provider.

    `attend_kernel(stats)` returns an `Attend` that counts what it did into `stats` (a run's
    `controller.stats`; None: not counted). `check_inner(host)` raises ValueError naming every option
    set on the provider that would not apply when `host` runs its kernel (e.g. its own layer or step
    policy: the host decides where and when), so no option is silently ignored.
    """

    def attend_kernel(self, stats: Stats | None = None) -> Attend: ...

    def check_inner(self, host: str) -> None: ...


def inner_kernel(provider: Any, host: str) -> KernelProvider:
    """`provider` checked as the inner kernel of `host` (a config name, for messages)."""
    if not isinstance(provider, KernelProvider):
        raise ValueError(
            f"{host}.kernel takes a kernel-providing config (one with attend_kernel(stats) and "
            f"check_inner(host), e.g. SageConfig(...)) or None, got {type(provider).__name__}"
        )
    provider.check_inner(host)
    return provider


_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Log `message` once per process for `key` (fallbacks must be visible but not flood the log)."""
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


def forget_warnings(prefix: str) -> None:
    """Let the warnings whose key starts with `prefix` be logged again (tests, benchmark resets)."""
    for key in [k for k in _WARNED if k.startswith(prefix)]:
        _WARNED.discard(key)


# ------------------------------------------------------------------------------------------- xformers backend
# Optional: xformers is imported lazily, only when one of these functions runs. `dense_kernel` (what an
# "auto" dense choice runs) picks it only on an architecture listed in XFORMERS_FASTER_ON with the
# measurement that justified it. None is listed: no GPU run has measured xformers against SDPA yet
# (benchmarks/gpu_sage_check.py records `xformers_ms` next to cuDNN / flash SDPA for that purpose), so
# `auto` runs SDPA everywhere and xformers runs only when a caller asks for it by name.
XFORMERS_FASTER_ON: dict[str, str] = {}  # e.g. {"sm90": "benchmarks/results/sage_gpu_h200.json: 1.2x cuDNN"}


def xformers_available() -> bool:
    """Whether ``xformers.ops`` imports here (cached; ``_xformers_ops.cache_clear()`` re-checks)."""
    return _xformers_ops() is not None


@functools.cache
def _xformers_ops() -> Any:
    try:
        return importlib.import_module("xformers.ops")
    except ImportError:
        return None


def _require_xformers() -> Any:
    ops = _xformers_ops()
    if ops is None:
        raise ValueError("the xformers kernel needs the xformers package: "
                         "pip install 'attn-processors[xformers]' (or pick the SDPA kernel)")
    return ops


def _additive_bias(mask: Tensor, q: Tensor, nk: int) -> Tensor:
    """A bool / float mask as the dense additive bias xformers takes: [B, H, Nq, Nk] in q's dtype, its
    rows allocated with a multiple of 8 columns (xformers' alignment rule) and sliced back to Nk."""
    b, h, nq = q.shape[0], q.shape[1], q.shape[2]
    bias = mask.float().masked_fill(~mask, float("-inf")).masked_fill(mask, 0.0) if mask.dtype == torch.bool \
        else mask.float()
    store = torch.zeros(b, h, nq, -(-nk // 8) * 8, device=q.device, dtype=q.dtype)
    store[..., :nk] = bias.expand(b, h, nq, nk)
    return store[..., :nk]


def xformers_attention(
    q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, scale: float | None = None
) -> Tensor:
    """``xformers.ops.memory_efficient_attention`` behind the shared ``Attend`` signature ([B, H, N, D])."""
    ops = _require_xformers()
    bias = None if mask is None else _additive_bias(mask, q, k.shape[-2])
    out = ops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_bias=bias, scale=scale)  # xformers layout: [B, N, H, D]
    return out.transpose(1, 2)


def xformers_unsupported(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Unsupported | None:
    """Why xformers cannot run these inputs here (the rule of its kernel-table row), or None."""
    if _xformers_ops() is None:
        return Unsupported("xformers_missing",
                           "xformers is not installed (pip install 'attn-processors[xformers]')")
    if q.device.type != "cuda":
        return Unsupported("cpu", "xformers memory_efficient_attention runs on CUDA only; CPU runs SDPA")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return Unsupported("dtype", f"xformers takes fp16/bf16/fp32, got {q.dtype}")
    if q.shape[1] != k.shape[1]:
        return Unsupported("gqa", f"query heads {q.shape[1]} != kv heads {k.shape[1]} (no GQA via xformers)")
    return None


XFORMERS = KernelSpec("xformers", xformers_attention, xformers_unsupported)


def cuda_arch(device: torch.device) -> str | None:
    """``"sm90"``-style key of a CUDA device, None on CPU."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def dense_kernel(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *, backend: str = "auto",
    label: str = "attention", stats: Stats | None = None,
) -> KernelChoice:
    """The dense attention kernel for these inputs: ``"sdpa"``, ``"xformers"`` or ``"auto"``.

    ``auto`` runs xformers only on an arch in ``XFORMERS_FASTER_ON`` (none measured yet), else SDPA
    silently (SDPA is the measured default, not a fallback). ``"xformers"`` asked for explicitly falls
    back to SDPA with one logged reason when it cannot run (CPU, not installed).
    """
    if backend not in ("auto", "sdpa", "xformers"):
        raise ValueError(f"dense backend must be 'auto', 'sdpa' or 'xformers', got {backend!r}")
    if backend == "sdpa" or (backend == "auto" and cuda_arch(q.device) not in XFORMERS_FASTER_ON):
        count(stats, f"{label}.kernel.sdpa")
        return KernelChoice(sdpa, "sdpa: default", "sdpa")
    return dispatch([XFORMERS], q, k, v, mask, label=label, stats=stats)


def xformers_gather_attend(
    q: Tensor, k: Tensor, v: Tensor, plan: Sequence[tuple[Tensor, Tensor | None]], *,
    scale: float | None = None,
) -> Tensor:
    """A gather plan (``blockmask.gather_plan``: query rows, kept key columns per entry) in ONE xformers call.

    Every (sample, plan entry) becomes one block of a ``BlockDiagonalMask`` over the concatenated
    gathered queries and keys, so tile-sparse attention runs as a single kernel launch instead of one
    SDPA call per entry. Exact for the group mask; no extra mask (padding) is supported here.
    q, k, v: [B, H, S, D] -> [B, H, S, D].
    """
    ops = _require_xformers()
    b = q.shape[0]
    qs, ks, vs, q_lens, k_lens = [], [], [], [], []
    for i in range(b):
        for rows, cols in plan:
            qs.append(q[i].index_select(1, rows))
            ks.append(k[i] if cols is None else k[i].index_select(1, cols))
            vs.append(v[i] if cols is None else v[i].index_select(1, cols))
            q_lens.append(int(rows.numel()))
            k_lens.append(int(ks[-1].shape[1]))
    bias = ops.fmha.attn_bias.BlockDiagonalMask.from_seqlens(q_seqlen=q_lens, kv_seqlen=k_lens)
    cat = [torch.cat(t, dim=1).transpose(0, 1)[None] for t in (qs, ks, vs)]  # [1, total, H, D]
    out_cat = ops.memory_efficient_attention(*cat, attn_bias=bias, scale=scale)[0].transpose(0, 1)
    out = torch.empty_like(q)
    start = 0
    for i in range(b):
        for rows, _ in plan:
            n = int(rows.numel())
            out[i].index_copy_(1, rows, out_cat[:, start:start + n].to(out.dtype))
            start += n
    return out
