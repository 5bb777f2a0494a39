"""QNeRF's query field: one 3D field rendered into every query layer's map (paper §3.2).

The field is nerfacto without view directions: a position encoder (tri-plane or hash grid,
``encoders.py``) and a small MLP give one shared density and a geometry feature ``g`` per point.
Volume rendering composites ``g`` along each ray (plus a learned background feature for the light
that passes through), and one linear head per query layer maps the composited feature to that
layer's channels. Heads are linear, so applying them after compositing is exact::

    sum_i w_i (A g_i + b) + (1 - acc)(A g_bg + b) = A (sum_i w_i g_i + (1 - acc) g_bg) + b

which keeps the per-sample width at ``g``'s 32 channels instead of 6 720 for SD 1.5's nine layers
(``deferred_heads=False`` computes the left side, for the test that proves the equality).

Rays are cast through the centres of each map's cells (``Cameras.rays(h, w)``), sampled stratified
inside the scene's bounding box. :func:`fit_field` fits the field to per-view query maps (the loss
of the paper, squared, plus an optional z-depth loss as in depth-nerfacto); call it again on the
same field to warm-start from the previous fit.

>>> import torch
>>> from attn_processors.qnerf.cameras import from_c2w
>>> c2w = torch.eye(4)[None].repeat(2, 1, 1); c2w[:, 2, 3] = 3.0
>>> cams = from_c2w(c2w, fx=8.0, fy=8.0, cx=4.0, cy=4.0, width=8, height=8)
>>> field = QueryField({"up.attn1": 6}, samples_per_ray=8, generator=torch.Generator().manual_seed(0))
>>> report = fit_field(field, {"up.attn1": torch.randn(2, 4, 4, 6)}, cams, iters=3, lr=1e-2)
>>> len(report.losses), field.render(cams, {"up.attn1": (4, 4)})["up.attn1"].shape
(3, torch.Size([2, 4, 4, 6]))
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import nn

from .cameras import Cameras
from .encoders import HashGrid, TriPlane

Tensor = torch.Tensor
Encoder = Literal[
    "triplane",  # three feature planes, bilinear: the CPU default (fast, consolidates well)
    "hashgrid",  # Instant-NGP multi-resolution hash grid (nerfacto's encoding), pure PyTorch
]


def cpu_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """A CPU generator for the field's draws: ``generator`` itself, or one seeded from it (a CUDA
    generator, as a pipeline on the GPU holds, cannot draw CPU tensors)."""
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator().manual_seed(seed)


def nerfacc_volrend() -> Any | None:
    """``nerfacc.volrend`` (nerfacc >= 0.5) when installed and CUDA is available, else None: its
    kernels need CUDA, and on the CPU the PyTorch path computes the same weights."""
    if not torch.cuda.is_available():
        return None
    try:
        return importlib.import_module("nerfacc.volrend")
    except ImportError:
        return None


def render_weights(sigmas: Tensor, deltas: Tensor) -> Tensor:
    """Volume-rendering weights [R, S]: ``w_i = T_i (1 - exp(-sigma_i delta_i))``.

    On CUDA with nerfacc installed, its ``render_weight_from_density`` computes the same weights.
    """
    volrend = nerfacc_volrend() if sigmas.is_cuda else None
    if volrend is not None:
        ends = deltas.cumsum(-1)
        return volrend.render_weight_from_density(t_starts=ends - deltas, t_ends=ends, sigmas=sigmas)[0]
    tau = sigmas * deltas  # [R, S] optical thickness of each sample
    trans = torch.exp(-(tau.cumsum(-1) - tau))  # light reaching sample i
    return trans * (1 - torch.exp(-tau))


@dataclass
class RayBatch:
    """Rays in world space: origins, unit directions [R, 3] and ``cos`` [R] (z-depth per unit t)."""

    origins: Tensor
    dirs: Tensor
    cos: Tensor

    @classmethod
    def from_cameras(cls, cameras: Cameras, height: int, width: int) -> RayBatch:
        origins, dirs = cameras.rays(height, width)  # [V, h, w, 3]
        cos = (dirs * cameras.forward[:, None, None, :]).sum(-1)
        return cls(origins.reshape(-1, 3), dirs.reshape(-1, 3), cos.reshape(-1))

    def take(self, index: Tensor | slice) -> RayBatch:
        return RayBatch(self.origins[index], self.dirs[index], self.cos[index])

    def to(self, device: torch.device, dtype: torch.dtype) -> RayBatch:
        return RayBatch(*(t.to(device, dtype) for t in (self.origins, self.dirs, self.cos)))


@dataclass
class Composite:
    """What a batch of rays renders to: geometry feature [R, G] (background included), opacity, depth."""

    feature: Tensor
    acc: Tensor  # [R] accumulated opacity
    depth: Tensor  # [R] expected z-depth, the box's far side where the ray sees background
    weights: Tensor  # [R, S]
    samples: Tensor  # [R, S, G] per-sample geometry features (for the per-sample heads)


class QueryField(nn.Module):
    """One density and one geometry feature per point; one linear head per query layer.

    ``channels`` maps each layer name to its query width C_l; ``bounds`` is the scene's box (min,
    max corners, world units) that rays are sampled in.
    """

    def __init__(self, channels: Mapping[str, int], *, encoder: Encoder = "triplane",
                 bounds: tuple[Sequence[float], Sequence[float]] = ((-1.0,) * 3, (1.0,) * 3),
                 samples_per_ray: int = 32, geometry_features: int = 32, hidden: int = 64,
                 deferred_heads: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__()
        generator = cpu_generator(generator)
        self.names = tuple(channels)
        self.channels = {name: int(c) for name, c in channels.items()}
        _check_setup(self.channels, encoder, bounds, samples_per_ray)
        self.samples_per_ray, self.deferred_heads = samples_per_ray, deferred_heads
        encoder_type = TriPlane if encoder == "triplane" else HashGrid
        self.encoder = encoder_type(generator=generator)
        self.mlp = nn.Sequential(nn.Linear(self.encoder.out_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1 + geometry_features))
        self.background = nn.Parameter(torch.zeros(geometry_features))
        self.heads = nn.ModuleList(nn.Linear(geometry_features, c) for c in self.channels.values())
        if generator is not None:  # reproducible MLP and heads too
            for p in [*self.mlp.parameters(), *self.heads.parameters()]:
                bound = 1 / p.shape[-1] ** 0.5 if p.ndim == 2 else 0.01
                nn.init.uniform_(p, -bound, bound, generator=generator)
        self.register_buffer("lo", torch.tensor(bounds[0], dtype=torch.float32))
        self.register_buffer("hi", torch.tensor(bounds[1], dtype=torch.float32))
        for i, c in enumerate(self.channels.values()):  # per-layer target normalisation (fit_field)
            self.register_buffer(f"mean{i}", torch.zeros(c))
            self.register_buffer(f"scale{i}", torch.ones(()))

    # ------------------------------------------------------------------------------ rendering
    @torch.no_grad()
    def render(self, cameras: Cameras, sizes: Mapping[str, tuple[int, int]], chunk: int = 8192
               ) -> dict[str, Tensor]:
        """Query maps ``{layer: [V, h, w, C_l]}`` for the layers in ``sizes`` (layer -> (h, w)).

        Inference only (no graph); rays of one size render once for all its layers, ``chunk`` rays
        at a time.
        """
        out: dict[str, Tensor] = {}
        for (h, w), names in _size_groups(self, sizes).items():
            rays = RayBatch.from_cameras(cameras, h, w).to(self.lo.device, self.lo.dtype)
            parts = [self.heads_out(self.composite(rays.take(slice(s, s + chunk))), names, normalised=False)
                     for s in range(0, rays.cos.shape[0], chunk)]
            for name in names:
                out[name] = torch.cat([p[name] for p in parts]).reshape(len(cameras), h, w, -1)
        return out

    @torch.no_grad()
    def render_depth(self, cameras: Cameras, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Expected z-depth and opacity [V, h, w] (the field's geometry, for checks and plots)."""
        comp = self.composite(RayBatch.from_cameras(cameras, height, width).to(self.lo.device, self.lo.dtype))
        return comp.depth.reshape(len(cameras), height, width), comp.acc.reshape(len(cameras), height, width)

    def composite(self, rays: RayBatch, jitter: Tensor | None = None) -> Composite:
        """March ``rays`` through the box: stratified samples (midpoints, or ``jitter`` [R, S] in [0, 1))."""
        near, far = _box_interval(rays, self.lo, self.hi)  # [R]
        steps = self.samples_per_ray
        offsets = jitter if jitter is not None else torch.full((1, steps), 0.5, device=near.device)
        span = (far - near)[:, None]
        t = near[:, None] + span * (torch.arange(steps, device=near.device) + offsets) / steps  # [R, S]
        points = rays.origins[:, None] + t[..., None] * rays.dirs[:, None]  # [R, S, 3]
        unit = (points - self.lo) / (self.hi - self.lo) * 2 - 1
        raw = self.mlp(self.encoder(unit.reshape(-1, 3))).reshape(*t.shape, -1)  # [R, S, 1 + G]
        sigmas = torch.exp(raw[..., 0].clamp(-15.0, 15.0))  # shared density (nerfacto: trunc_exp)
        weights = render_weights(sigmas, (span / steps).expand_as(t))
        acc = weights.sum(-1)
        feature = (weights[..., None] * raw[..., 1:]).sum(1) + (1 - acc)[:, None] * self.background
        depth = (weights * t).sum(-1) * rays.cos + (1 - acc) * far * rays.cos
        return Composite(feature, acc, depth, weights, raw[..., 1:])

    def heads_out(self, comp: Composite, names: Sequence[str], normalised: bool) -> dict[str, Tensor]:
        """Each layer's queries [R, C_l] from a composite; ``normalised``: in fit_field's units."""
        out = {}
        for name in names:
            i = self.names.index(name)
            head = self.heads[i]
            if self.deferred_heads:
                q = head(comp.feature)
            else:  # per-sample heads, composited (the reference the deferred form equals)
                q = (comp.weights[..., None] * head(comp.samples)).sum(1) + (1 - comp.acc)[:, None] * head(
                    self.background)
            out[name] = q if normalised else q * getattr(self, f"scale{i}") + getattr(self, f"mean{i}")
        return out

    def set_normalisation(self, targets: Mapping[str, Tensor]) -> None:
        """Per layer: subtract the per-channel mean, divide by one std over all values (see fit_field)."""
        for name, target in targets.items():
            i = self.names.index(name)
            flat = target.reshape(-1, target.shape[-1])
            mean = torch.zeros(flat.shape[-1], dtype=torch.float64)
            square = torch.zeros((), dtype=torch.float64)
            for rows in flat.split(65536):  # chunked: targets may be fp16 and large (many views)
                mean += rows.double().sum(0).cpu()
            mean /= flat.shape[0]
            for rows in flat.split(65536):
                square += ((rows.double().cpu() - mean) ** 2).sum()
            std = (square / flat.numel()).sqrt().clamp(min=1e-6)
            getattr(self, f"mean{i}").copy_(mean)
            getattr(self, f"scale{i}").copy_(std)


def bounds_from_depth(cameras: Cameras, depth: Tensor, margin: float = 0.1
                      ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A box around the surfaces seen in ``depth`` [V, H, W] (z-depth, inf = none), grown by ``margin``
    of its size on every side: the ``bounds`` of a field for an object-centric scene."""
    points = cameras.lift(depth)
    points = points[torch.isfinite(points).all(-1)]
    if points.shape[0] == 0:
        raise ValueError("depth has no finite value; give z-depth maps with the object in view (inf = none)")
    lo, hi = points.amin(0), points.amax(0)
    pad = margin * (hi - lo).clamp(min=1e-3)
    return tuple((lo - pad).tolist()), tuple((hi + pad).tolist())


def _check_setup(channels: dict[str, int], encoder: str, bounds: tuple[Sequence[float], Sequence[float]],
                 samples: int) -> None:
    if not channels or any(c < 1 for c in channels.values()):
        raise ValueError(f"channels={channels}; give each query layer's width, e.g. "
                         "{'up_blocks.1.attentions.0.transformer_blocks.0.attn1': 1280}")
    if encoder not in get_args(Encoder):
        raise ValueError(f"encoder={encoder!r}; use one of {get_args(Encoder)}")
    lo, hi = (torch.as_tensor(b, dtype=torch.float64) for b in bounds)
    if lo.shape != (3,) or hi.shape != (3,) or not torch.isfinite(lo).all() or not (hi > lo).all():
        raise ValueError(f"bounds={bounds}; give ((xmin, ymin, zmin), (xmax, ymax, zmax)) with max > min")
    if samples < 2:
        raise ValueError(f"samples_per_ray={samples}; give at least 2 samples per ray")


def _box_interval(rays: RayBatch, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Entry and exit ray parameters [R] of the box (slab test); equal where a ray misses it."""
    inv = 1 / torch.where(rays.dirs.abs() < 1e-9, torch.full_like(rays.dirs, 1e-9), rays.dirs)
    a, b = (lo - rays.origins) * inv, (hi - rays.origins) * inv
    near = torch.minimum(a, b).amax(-1).clamp(min=0)
    far = torch.maximum(a, b).amin(-1)
    return near, torch.maximum(far, near)


def _size_groups(qfield: QueryField, sizes: Mapping[str, tuple[int, int]]
                 ) -> dict[tuple[int, int], list[str]]:
    """Layers grouped by map size (rays of one size are cast once for all of them)."""
    if not sizes:
        raise ValueError("sizes={}; give {layer: (h, w)} for at least one query layer")
    groups: dict[tuple[int, int], list[str]] = {}
    for name, size in sizes.items():
        if name not in qfield.channels:
            raise ValueError(f"layer {name!r} is not a head of this field; its layers are "
                             f"{list(qfield.names)}")
        h, w = (int(s) for s in size)
        if h < 1 or w < 1:
            raise ValueError(f"sizes[{name!r}]={tuple(size)}; give a map size (h, w) >= 1")
        groups.setdefault((h, w), []).append(name)
    return groups


# ---------------------------------------------------------------------------------- fitting
@dataclass
class FitReport:
    """One fit: the loss of every iteration (query + weighted depth) and the wall time."""

    losses: list[float] = field(default_factory=list)
    depth_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _check_targets(qfield: QueryField, targets: Mapping[str, Tensor], cameras: Cameras,
                   depth: Tensor | None) -> None:
    if not targets:
        raise ValueError("targets={}; give {layer: [V, h, w, C]} query maps for at least one layer")
    for name, target in targets.items():
        if name not in qfield.channels:
            raise ValueError(f"targets[{name!r}]: not a head of this field; its layers are "
                             f"{list(qfield.names)}")
        want = qfield.channels[name]
        if target.ndim != 4 or target.shape[0] != len(cameras) or target.shape[-1] != want:
            raise ValueError(f"targets[{name!r}] has shape {tuple(target.shape)}; give "
                             f"[V={len(cameras)}, h, w, C={want}] (one map per camera, the layer's query "
                             "width)")
        if not torch.isfinite(target).all():
            raise ValueError(f"targets[{name!r}] holds non-finite values (fp16 overflow?); extract the "
                             "queries in a wider dtype or clip them")
    if depth is not None and (depth.ndim != 3 or depth.shape[0] != len(cameras)):
        raise ValueError(f"depth has shape {tuple(depth.shape)}; give z-depth maps [V={len(cameras)}, H, W] "
                         "(inf where there is no surface)")


def fit_field(qfield: QueryField, targets: Mapping[str, Tensor], cameras: Cameras, *, iters: int,
              lr: float, depth: Tensor | None = None, depth_weight: float = 0.1, rays: int = 512,
              generator: torch.Generator | None = None) -> FitReport:
    """Fit ``qfield`` to per-view query maps ``{layer: [V, h, w, C_l]}`` seen by ``cameras``.

    Normalisation: each layer's targets are centred by their per-channel mean and divided by one
    standard deviation over all their values (kept on the field, so ``render`` returns queries in
    the targets' units); the query loss is the mean squared error in those units summed over layers,
    so every layer weighs the same whatever its width or scale. Each iteration draws ``rays`` random
    cell-centre rays per map size (all of them when fewer) with jittered samples. ``depth`` [V, H, W]
    (z-depth, inf for background) adds ``depth_weight`` times the squared depth error relative to the
    box diagonal (background rays: their opacity squared), on the rays of its own size (shared with
    the layers of that size). Adam at a constant ``lr``; call again on the same field to warm-start.
    """
    _check_targets(qfield, targets, cameras, depth)
    if iters < 0 or not lr > 0 or depth_weight < 0 or rays < 1:
        raise ValueError(f"iters={iters}, lr={lr}, depth_weight={depth_weight}, rays={rays}; give "
                         "iters >= 0, lr > 0, depth_weight >= 0 and rays >= 1")
    start, generator = time.perf_counter(), cpu_generator(generator)
    qfield.set_normalisation(targets)
    groups = _fit_groups(qfield, targets, cameras, depth if depth_weight > 0 else None)
    optimiser = torch.optim.Adam(qfield.parameters(), lr=lr)
    report = FitReport()
    for _ in range(iters):
        query_loss, depth_loss = zip(*(_group_loss(qfield, group, rays, generator) for group in groups),
                                     strict=True)
        loss = sum(query_loss) + depth_weight * sum(depth_loss)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        report.losses.append(float(loss.detach()))
        report.depth_losses.append(float(sum(depth_loss).detach()))
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class _Group:
    """The maps of one size: their layers' flattened targets [V*h*w, C], the rays, the depth [V*h*w]."""

    targets: dict[str, Tensor]
    rays: RayBatch
    depth: Tensor | None


def _fit_groups(qfield: QueryField, targets: Mapping[str, Tensor], cameras: Cameras,
                depth: Tensor | None) -> list[_Group]:
    sizes = {name: tuple(t.shape[1:3]) for name, t in targets.items()}
    by_size = _size_groups(qfield, sizes)
    if depth is not None:
        by_size.setdefault(tuple(depth.shape[1:]), [])
    device, dtype = qfield.lo.device, qfield.lo.dtype
    return [_Group({name: targets[name].reshape(-1, targets[name].shape[-1]) for name in names},
                   RayBatch.from_cameras(cameras, *size).to(device, dtype),
                   depth.reshape(-1) if depth is not None and tuple(depth.shape[1:]) == size else None)
            for size, names in by_size.items()]


def _group_loss(qfield: QueryField, group: _Group, rays: int, generator: torch.Generator | None
                ) -> tuple[Tensor, Tensor]:
    """Query loss (normalised MSE, summed over layers) and depth loss on ``rays`` random rays of a group."""
    index = _draw(group.rays.cos.shape[0], rays, generator)
    device, dtype = qfield.lo.device, qfield.lo.dtype
    jitter = torch.rand(len(index), qfield.samples_per_ray, generator=generator).to(device)
    comp = qfield.composite(group.rays.take(index.to(device)), jitter)
    pred = qfield.heads_out(comp, list(group.targets), normalised=True)
    query_loss = torch.zeros((), device=device)
    for name, flat in group.targets.items():
        i = qfield.names.index(name)
        target = flat[index.to(flat.device)].to(device, dtype)  # only the drawn rows leave fp16 / the CPU
        target = (target - getattr(qfield, f"mean{i}")) / getattr(qfield, f"scale{i}")
        query_loss = query_loss + (pred[name] - target).pow(2).mean()
    if group.depth is None:
        return query_loss, torch.zeros((), device=device)
    z = group.depth[index.to(group.depth.device)].to(device, dtype)
    surface = torch.isfinite(z)
    error = torch.where(surface, (comp.depth - z.nan_to_num(posinf=0.0)) / (qfield.hi - qfield.lo).norm(),
                        comp.acc)
    return query_loss, error.pow(2).mean()


def _draw(total: int, count: int, generator: torch.Generator | None) -> Tensor:
    """Indices of ``count`` random rays out of ``total`` (all of them, in order, when fewer)."""
    if total <= count:
        return torch.arange(total)
    return torch.randint(total, (count,), generator=generator)
