"""Position encoders of the query field: points in [-1, 1]^3 -> feature vectors, pure PyTorch.

- ``TriPlane``: three axis-aligned feature planes (xy, xz, yz), bilinear, features concatenated.
  The CPU default: at equal iterations it fits faster and consolidated better than the hash grid in
  our prototype (docs/qnerf.md).
- ``HashGrid``: Instant-NGP's multi-resolution hash encoding (nerfacto's, which the paper builds
  on): L levels of a 2^T-entry table, trilinear over the 8 cell corners, XOR-of-primes hash where
  a level's grid does not fit the table (a direct index where it does).

>>> import torch
>>> enc = TriPlane(resolution=8, features=4, generator=torch.Generator().manual_seed(0))
>>> enc(torch.zeros(5, 3)).shape, enc.out_dim
(torch.Size([5, 12]), 12)
>>> HashGrid(levels=3, features=2)(torch.rand(7, 3) * 2 - 1).shape
torch.Size([7, 6])
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

Tensor = torch.Tensor
_PRIMES = (1, 2654435761, 805459861)  # Instant-NGP's spatial hash primes
_CORNERS = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)])  # [8, 3] cell corners


class TriPlane(nn.Module):
    """Three ``features x resolution x resolution`` planes sampled at a point's projections."""

    def __init__(self, resolution: int = 64, features: int = 16, init_scale: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if resolution < 2 or features < 1:
            raise ValueError(f"resolution={resolution}, features={features}; give resolution >= 2 and "
                             "features >= 1")
        planes = torch.randn(3, features, resolution, resolution, generator=generator) * init_scale
        self.planes = nn.Parameter(planes)  # [3, F, R, R]: xy, xz, yz
        self.out_dim = 3 * features

    def forward(self, x: Tensor) -> Tensor:
        """[N, 3] in [-1, 1] -> [N, 3F]."""
        coords = torch.stack([x[:, [0, 1]], x[:, [0, 2]], x[:, [1, 2]]])[:, None]  # [3, 1, N, 2]
        feats = F.grid_sample(self.planes, coords.to(self.planes.dtype), mode="bilinear",
                              padding_mode="border", align_corners=True)  # [3, F, 1, N]
        return feats[:, :, 0].permute(2, 0, 1).reshape(x.shape[0], self.out_dim)


class HashGrid(nn.Module):
    """Multi-resolution hash grid: ``levels`` grids from ``base_resolution`` to ``max_resolution``."""

    def __init__(self, levels: int = 8, features: int = 2, log2_table: int = 13, base_resolution: int = 8,
                 max_resolution: int = 64, generator: torch.Generator | None = None) -> None:
        super().__init__()
        sizes_ok = 2 <= base_resolution <= max_resolution
        if levels < 1 or features < 1 or not 4 <= log2_table <= 24 or not sizes_ok:
            raise ValueError(f"levels={levels}, features={features}, log2_table={log2_table}, resolutions "
                             f"{base_resolution}..{max_resolution}; give levels, features >= 1, "
                             "log2_table in 4..24, 2 <= base_resolution <= max_resolution")
        growth = math.exp(math.log(max_resolution / base_resolution) / max(levels - 1, 1))
        self.resolutions = [math.floor(base_resolution * growth ** level + 1e-6) for level in range(levels)]
        self.table_size = 2 ** log2_table
        tables = (torch.rand(levels, self.table_size, features, generator=generator) * 2 - 1) * 1e-4
        self.tables = nn.Parameter(tables)  # [L, T, F], Instant-NGP's U(-1e-4, 1e-4) init
        self.out_dim = levels * features

    def _index(self, corner: Tensor, resolution: int) -> Tensor:
        """Table rows [...] of integer grid corners [..., 3] (direct when the grid fits the table)."""
        side = resolution + 1
        if side ** 3 <= self.table_size:
            return corner[..., 0] + side * (corner[..., 1] + side * corner[..., 2])
        hashed = corner[..., 0] * _PRIMES[0] ^ corner[..., 1] * _PRIMES[1] ^ corner[..., 2] * _PRIMES[2]
        return hashed % self.table_size

    def forward(self, x: Tensor) -> Tensor:
        """[N, 3] in [-1, 1] -> [N, levels * features]."""
        unit = ((x + 1) / 2).clamp(0, 1).to(self.tables.dtype)  # [N, 3]
        corners = _CORNERS.to(x.device)
        out = []
        for level, resolution in enumerate(self.resolutions):
            scaled = unit * resolution
            base = scaled.floor().clamp(max=resolution - 1)
            frac = scaled - base  # [N, 3]
            corner = base.long()[:, None, :] + corners  # [N, 8, 3]
            weight = torch.where(corners.bool(), frac[:, None, :], 1 - frac[:, None, :]).prod(-1)  # [N, 8]
            rows = self.tables[level][self._index(corner, resolution)]  # [N, 8, F]
            out.append((weight[..., None] * rows).sum(1))
        return torch.cat(out, -1)
