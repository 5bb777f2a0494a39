"""Attention redistribution (the paper's method section; reference ``ARAttnProcessor``): move each
layout token's cross-attention mass into its box, at the chosen cross-attention layers of the CFG
forward.

Paper / reference -> function: attention redistribution -> :func:`redistribute`.

>>> import torch
>>> p = torch.full((1, 4, 3), 1 / 3)                  # (rows, N=4 cells, K=3 text positions)
>>> m = torch.tensor([[1.0, 1.0, 0.0, 0.0]])          # token 1 lives in cells 0-1
>>> q = redistribute(p, torch.tensor([1]), m)
>>> q[0, 2:, 1].tolist(), [round(s, 6) for s in q.sum(-1)[0].tolist()]
([0.0, 0.0], [1.0, 1.0, 1.0, 1.0])
"""

from __future__ import annotations

import torch


def redistribute(probs: torch.Tensor, token_idx: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Redistributed probabilities, same shape as ``probs`` (..., N, K); the input is not modified.

    With L = layout positions ``token_idx`` (L,) and ``masks`` (L, N) their boxes:
      1. T[..., q] = sum_{t in L} P[..., q, t]        (total layout mass of query cell q)
      2. P'[..., q, L_j] = T[..., q] * m_j[q]         (all from the unedited P; other columns kept)
      3. P' /= sum_K P'                                (row renormalisation)
    A multi-token phrase appears as several entries of ``token_idx`` sharing its mask. A row whose
    new sum is 0 (layout tokens held all its mass and the cell is in no box) keeps its old values.
    """
    idx = token_idx.to(probs.device)
    total = probs[..., idx].sum(-1, keepdim=True)  # (..., N, 1)
    out = probs.clone()
    out[..., idx] = total * masks.to(probs.dtype).transpose(0, 1)  # (..., N, L)
    den = out.sum(-1, keepdim=True)  # (..., N, 1)
    return torch.where(den > 0, out / den.clamp_min(torch.finfo(probs.dtype).tiny), probs)
