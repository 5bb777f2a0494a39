"""The multi-view batch layout and MasaCtrl's mutual self-attention (Cao et al., ICCV 2023).

A denoiser call holds ``b`` views in each of up to four chunks, uncond half first (MasaCtrl's
``[src_u, tgt_u, src_c, tgt_c]``): the source rows carry each view's DDIM-inverted latent and the
source prompt, the target rows the edit. In the chosen decoder self-attention layers a target row's
queries attend to the K/V of *its own view's* source row of the same CFG half (replacement, as
MasaCtrl's ``MutualSelfAttentionControl``); so each view keeps its own appearance.

>>> labels = view_labels(2, cfg=True)
>>> labels[4:]                               # the cond half; the uncond half comes first
('source.cond', 'source.cond', 'target.cond', 'target.cond')
>>> pair_rows(labels)                       # (target row, source row of the same view and half)
[(2, 0), (3, 1), (6, 4), (7, 5)]
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.rows import swap_kv

__all__ = ["pair_rows", "swap_kv", "view_labels"]
SOURCE, TARGET = "source", "target"


def view_labels(views: int, cfg: bool, source: bool = True, target: bool = True) -> tuple[str, ...]:
    """One label per row: per CFG half (uncond first), ``views`` source rows then ``views`` target rows."""
    if views < 1:
        raise ValueError(f"views={views}; a call holds at least one view")
    rows: list[str] = []
    for half in (("uncond", "cond") if cfg else ("cond",)):
        rows += [f"{SOURCE}.{half}"] * views * source + [f"{TARGET}.{half}"] * views * target
    return tuple(rows)


def pair_rows(labels: Sequence[str | None]) -> list[tuple[int, int]]:
    """(target row, source row) pairs: the j-th target row of a half with the j-th source row of it."""
    pairs = []
    for half in ("uncond", "cond"):
        src = [i for i, lab in enumerate(labels) if lab == f"{SOURCE}.{half}"]
        tgt = [i for i, lab in enumerate(labels) if lab == f"{TARGET}.{half}"]
        if src and len(src) != len(tgt):
            raise ValueError(f"{len(tgt)} target rows but {len(src)} source rows in the {half} half; "
                             "give one source row per view (view_labels)")
        pairs += list(zip(tgt, src, strict=False)) if src else []
    return pairs
