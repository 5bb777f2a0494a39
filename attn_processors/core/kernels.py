"""Attention kernels behind one signature, a small dispatch table, and one-time logged fallbacks.

Every kernel is a pure function ``attend(q, k, v, *, mask=None, scale=None) -> out`` on
``q: [B, H, Nq, D]``, ``k, v: [B, H, Nk, D]`` returning ``[B, H, Nq, D]``; it never mutates its inputs.
`mask` is broadcastable to ``[B, H, Nq, Nk]``: bool (True = attend) or additive float.
`scale` None means ``1 / sqrt(D)``, as in SDPA.

Example:
    >>> import torch
    >>> q = k = v = torch.randn(1, 2, 8, 4)
    >>> out, probs = explicit_attention(q, k, v, return_probs=True)
    >>> torch.allclose(out, sdpa(q, k, v), atol=1e-6), tuple(probs.shape)
    (True, (1, 2, 8, 8))
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

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
    """What a dispatch decided: the kernel to run and why (logged, shown in benchmarks)."""

    kernel: Attend
    reason: str


class KernelSpec(NamedTuple):
    """One row of a dispatch table: `unsupported(q, k, v, mask)` returns None when `fn` can run
    these inputs, else the reason it cannot (device, dtype, head dim, mask...)."""

    name: str
    fn: Attend
    unsupported: Callable[[Tensor, Tensor, Tensor, Tensor | None], str | None]


def dispatch(
    table: Sequence[KernelSpec], q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None
) -> KernelChoice:
    """First kernel in `table` that supports the inputs; otherwise SDPA, with one logged warning."""
    reasons = []
    for spec in table:
        why = spec.unsupported(q, k, v, mask)
        if why is None:
            return KernelChoice(spec.fn, f"{spec.name}: supported")
        reasons.append(f"{spec.name}: {why}")
    reason = "; ".join(reasons) or "empty kernel table"
    warn_once(f"fallback:{reason}", f"attention kernel falls back to SDPA ({reason})")
    return KernelChoice(sdpa, f"sdpa fallback ({reason})")


_WARNED: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Log `message` once per process for `key` (fallbacks must be visible but not flood the log)."""
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)
