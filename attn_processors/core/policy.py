"""Rules shared by the techniques that keep some attention calls dense, and option validation.

Both SageAttention2 ("adaptive quantization": early steps and sensitive blocks in full precision) and
Efficient-vDiT tile sparsity (a dense warm-up before the sparse mask applies) keep the first
fraction of the denoising steps and a set of transformer/UNet blocks on the stock computation. The
rule is written once here so both read the same way:

    >>> warmup_steps(0.2, 30), warmup_steps(0.2, None)
    (6, 0)
    >>> check_choice("recipe", "release", ("release", "sage1"))
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sites import Site


def warmup_steps(fraction: float, num_steps: int | None) -> int:
    """Number of leading steps kept dense: floor(fraction * num_steps); 0 when the run length is unknown."""
    return 0 if num_steps is None else math.floor(fraction * num_steps + 1e-6)


def in_warmup(step: int | None, num_steps: int | None, fraction: float) -> bool:
    """Whether `step` (None outside a run) falls in the dense warm-up of `fraction` of `num_steps`."""
    return step is not None and step < warmup_steps(fraction, num_steps)


def in_dense_blocks(site: Site, blocks: tuple[int, ...]) -> bool:
    """Whether the layer sits in one of the block indices kept dense (never a layer outside blocks)."""
    return site.place != "other" and site.block in blocks


def block_indices(name: str, value: Any) -> tuple[int, ...]:
    """`value` as a tuple of block indices; an int (a count in older configs) raises with the fix."""
    if isinstance(value, bool | int) or not isinstance(value, Iterable) or isinstance(value, str):
        count = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        hint = repr(tuple(range(value))) if count else "(0, 1)"  # the blocks a count meant: 0 .. n-1
        raise ValueError(
            f"{name} takes a tuple of block indices, e.g. {hint}; got {value!r} "
            "(an int is ambiguous: pass the indices of the blocks to keep dense, () for none)"
        )
    indices = tuple(value)
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices):
        raise ValueError(f"{name} must hold block indices >= 0, got {value!r}")
    return indices


def check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")


def check_choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """ValueError naming the allowed values when `value` is not one of them (options are named choices)."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
