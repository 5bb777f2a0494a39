"""Kernels: explicit softmax against a float64 reference and SDPA, masks, purity, dispatch fallback."""

import logging

import pytest
import torch

from attn_processors.core.kernels import KernelSpec, dispatch, explicit_attention, sdpa


def _ref64(q, k, v, mask=None, scale=None):
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-1, -2) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_explicit_matches_float64_reference_and_sdpa(mask_kind):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=g) for _ in range(3))
    mask = None
    if mask_kind:
        keep = torch.rand(2, 1, 17, 17, generator=g) > 0.3
        keep[..., 0] = True  # no empty rows
        mask = keep if mask_kind == "bool" else torch.where(keep, 0.0, -1e4)
    ref = _ref64(q, k, v, mask)
    out, probs = explicit_attention(q, k, v, mask=mask, return_probs=True)
    fast = sdpa(q, k, v, mask=mask)
    err_explicit, err_sdpa = (out.double() - ref).abs().max(), (fast.double() - ref).abs().max()
    assert err_explicit <= 1.1 * err_sdpa + 1e-6
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-6)


def test_scale_and_edits():
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    out = explicit_attention(q, k, v, scale=0.1)
    assert torch.allclose(out, sdpa(q, k, v, scale=0.1), atol=1e-6)
    # edit_probs replacing P by uniform attention gives the mean of v
    uni = explicit_attention(q, k, v, edit_probs=lambda p: torch.full_like(p, 1 / p.shape[-1]))
    assert torch.allclose(uni, v.mean(2, keepdim=True).expand_as(uni), atol=1e-6)
    # an infinite temperature in logits does the same
    flat = explicit_attention(q, k, v, edit_logits=lambda s: s * 0)
    assert torch.allclose(flat, uni, atol=1e-6)


def test_kernels_do_not_mutate_inputs():
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    copies = [t.clone() for t in (q, k, v)]
    explicit_attention(q, k, v, edit_logits=lambda s: s.mul_(2), edit_probs=lambda p: p)
    sdpa(q, k, v)
    assert all(torch.equal(a, b) for a, b in zip(copies, (q, k, v), strict=True))


def test_dispatch_table_and_one_time_fallback_warning(caplog):
    q = k = v = torch.randn(1, 1, 4, 4)
    cuda_only = KernelSpec("fast", sdpa, lambda q, k, v, m: None if q.is_cuda else "needs CUDA")
    with caplog.at_level(logging.WARNING, logger="attn_processors"):
        first = dispatch([cuda_only], q, k, v, None)
        second = dispatch([cuda_only], q, k, v, None)
    assert first.kernel is sdpa and "needs CUDA" in first.reason and second.reason == first.reason
    assert sum("attention kernel falls back to SDPA" in r.getMessage() for r in caplog.records) == 1
    ok = KernelSpec("any", explicit_attention, lambda q, k, v, m: None)
    assert dispatch([cuda_only, ok], q, k, v, None).kernel is explicit_attention


def test_sage_and_tile_sparse_dispatch_through_the_core_table(caplog):
    """One dispatcher: both techniques' choices land in one stats sink, with one warning each."""
    from collections import Counter

    from attn_processors.core.kernels import forget_warnings
    from attn_processors.sage import choose_kernel
    from attn_processors.tile_sparse import VideoGeometry
    from attn_processors.tile_sparse import dispatch as tile_dispatch

    forget_warnings("sage:")
    forget_warnings("tile_sparse:")
    stats = Counter()
    q = torch.randn(1, 2, 64, 16)
    with caplog.at_level(logging.WARNING, logger="attn_processors"):
        for _ in range(2):
            assert choose_kernel(q, q, backend="simulate", min_kv_len=128, stats=stats)[0] == "sdpa"
            assert tile_dispatch(VideoGeometry(8, 16), 4, min_block_sparsity=0.25, stats=stats)[0] == "dense"
        assert choose_kernel(q, q, backend="simulate", min_kv_len=0, stats=stats)[0] == "simulate"
    assert stats == {"sage.fallback.short_kv": 2, "sage.kernel.sdpa": 2, "sage.kernel.simulate": 1,
                     "tile_sparse.fallback.low_sparsity": 2, "tile_sparse.kernel.sdpa": 2}
    warnings = [r.getMessage() for r in caplog.records if "kernel falls back to SDPA" in r.getMessage()]
    assert [w.split(" kernel")[0] for w in warnings] == ["sage", "tile_sparse"]  # once each
