"""Early-stage mutual self-attention (Zero-to-Hero §4.4, App. 8.5, Table 10) as pure functions.

A source branch is sampled beside the target at the identity pose (the same CLIP embedding and input
latent, its own noise). In the chosen decoder self-attention layers and early timesteps the target's
attention becomes Attn(Q_tgt, K_src, V_src): *replacement*, not concatenation.

Batch rows are labelled "<role>.<half>", role in {source, target}, half in {uncond, cond} (one label
per row, announced by the pipeline with ``controller.set_branch``). A target row takes the K/V of the
source row of its own CFG half, so the halves never mix (the paper does not say; our choice).

>>> labels = branch_labels(n_targets=2, cfg=True, source=True)
>>> labels
('source.uncond', 'target.uncond', 'target.uncond', 'source.cond', 'target.cond', 'target.cond')
>>> source_pairs(labels)                       # (target row, its source row)
[(1, 0), (2, 0), (4, 3), (5, 3)]
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.rows import swap_kv

__all__ = ["branch_labels", "label", "source_pairs", "swap_kv"]
SOURCE, TARGET = "source", "target"
HALVES = ("uncond", "cond")  # CFG order of the batch: unconditional rows first


def label(role: str, half: str) -> str:
    return f"{role}.{half}"


def branch_labels(n_targets: int, cfg: bool, source: bool) -> tuple[str, ...]:
    """Row labels of the batch [source, targets...] per CFG half (uncond half first)."""
    if n_targets < 1:
        raise ValueError(f"n_targets={n_targets}; give at least one target pose")
    halves = HALVES if cfg else ("cond",)
    rows: list[str] = []
    for half in halves:
        rows += [label(SOURCE, half)] * source + [label(TARGET, half)] * n_targets
    return tuple(rows)


def source_pairs(labels: Sequence[str | None]) -> list[tuple[int, int]]:
    """(target row, source row of the same CFG half) for every target row that has a source row."""
    src = {lab.split(".", 1)[1]: i for i, lab in enumerate(labels) if lab and lab.startswith(SOURCE + ".")}
    pairs = []
    for i, lab in enumerate(labels):
        if lab and lab.startswith(TARGET + "."):
            half = lab.split(".", 1)[1]
            if half in src:
                pairs.append((i, src[half]))
    return pairs
