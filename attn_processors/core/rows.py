"""Row donors: a batch row's K/V replaced by another row's, for the techniques whose branches share one
denoiser call (Zero-to-Hero's source view, QNeRF's and MasaCtrl's inverted source, style donors).

Which row gives to which is the technique's business (it reads the controller's branch labels); the
copy itself lives here once.

>>> import torch
>>> k = torch.arange(3.0).view(3, 1, 1, 1); v = 10 * k
>>> k2, v2 = swap_kv(k, v, [(2, 0)])         # row 2 takes row 0's K/V
>>> k2.flatten().tolist(), v2.flatten().tolist(), k.flatten().tolist()
([0.0, 1.0, 0.0], [0.0, 10.0, 0.0], [0.0, 1.0, 2.0])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensor = torch.Tensor


def swap_kv(k: Tensor, v: Tensor, pairs: Sequence[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """K, V [B, H, N, D] with each (receiver, donor) row pair's receiver taking the donor's K/V.

    The inputs are not modified (callers may still need the originals); no pairs returns them as is.
    """
    if not pairs:
        return k, v
    receivers = torch.tensor([p[0] for p in pairs], device=k.device)
    donors = torch.tensor([p[1] for p in pairs], device=k.device)
    k, v = k.clone(), v.clone()
    k[receivers], v[receivers] = k[donors], v[donors]  # (n_pairs, H, N, D)
    return k, v
