"""The optional xformers row of the core's kernel table: lazy import, rules, `auto` never choosing it
unmeasured, and our glue (layouts, masks, the block-diagonal gather) against a stand-in xformers whose
`memory_efficient_attention` is exact attention (the real package is GPU-only and absent here)."""

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from attn_processors.core import blockmask, kernels


class _BlockDiagonal:
    """Stand-in for fmha.attn_bias.BlockDiagonalMask: block i = q_seqlen[i] queries x kv_seqlen[i] keys."""

    def __init__(self, q_seqlen, kv_seqlen):
        self.q_seqlen, self.kv_seqlen = list(q_seqlen), list(kv_seqlen)

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen):
        return cls(q_seqlen, kv_seqlen)

    def dense(self) -> torch.Tensor:
        keep = torch.zeros(sum(self.q_seqlen), sum(self.kv_seqlen), dtype=torch.bool)
        q0 = k0 = 0
        for nq, nk in zip(self.q_seqlen, self.kv_seqlen, strict=True):
            keep[q0:q0 + nq, k0:k0 + nk] = True
            q0, k0 = q0 + nq, k0 + nk
        return keep


def _fake_xformers(calls: list) -> types.ModuleType:
    def memory_efficient_attention(q, k, v, attn_bias=None, scale=None):
        calls.append((tuple(q.shape), type(attn_bias).__name__))
        assert q.dim() == 4 and q.shape[-1] == k.shape[-1]  # [B, N, H, D]
        if isinstance(attn_bias, torch.Tensor):
            assert attn_bias.stride(-2) % 8 == 0  # xformers' alignment rule for tensor biases
        mask = attn_bias.dense() if isinstance(attn_bias, _BlockDiagonal) else attn_bias
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask, scale=scale)
        return out.transpose(1, 2)

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention
    ops.fmha = types.SimpleNamespace(attn_bias=types.SimpleNamespace(BlockDiagonalMask=_BlockDiagonal))
    return ops


@pytest.fixture
def fake_xformers(monkeypatch):
    calls: list = []
    root = types.ModuleType("xformers")
    root.ops = _fake_xformers(calls)
    monkeypatch.setitem(sys.modules, "xformers", root)
    monkeypatch.setitem(sys.modules, "xformers.ops", root.ops)
    kernels._xformers_ops.cache_clear()
    yield calls
    kernels._xformers_ops.cache_clear()


@pytest.fixture
def no_xformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    kernels._xformers_ops.cache_clear()
    yield
    kernels._xformers_ops.cache_clear()


def _qkv(b=2, h=3, n=20, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, n, d, generator=g) for _ in range(3))


def test_absent_package_is_a_reason_not_an_error(no_xformers):
    q, k, v = _qkv()
    assert not kernels.xformers_available()
    why = kernels.xformers_unsupported(q, k, v)
    assert why.category == "xformers_missing" and "pip install" in why.detail
    stats = kernels.Stats()
    choice = kernels.dense_kernel(q, k, v, backend="xformers", stats=stats, label="t_xf")
    assert choice.name == "sdpa" and stats["t_xf.fallback.xformers_missing"] == 1
    with pytest.raises(ValueError, match="needs the xformers package"):
        kernels.xformers_attention(q, k, v)


def test_cpu_is_skipped_with_a_reason(fake_xformers):
    q, k, v = _qkv()
    assert kernels.xformers_available()
    assert kernels.xformers_unsupported(q, k, v).category == "cpu"
    gqa = kernels.xformers_unsupported(q.cuda() if torch.cuda.is_available() else q, k[:, :1], v[:, :1])
    assert gqa.category in ("cpu", "gqa")


def test_auto_never_picks_unmeasured_xformers(fake_xformers, monkeypatch):
    """No measurement is cited in XFORMERS_FASTER_ON, so auto is SDPA even where xformers could run."""
    q, k, v = _qkv()
    assert kernels.XFORMERS_FASTER_ON == {}
    monkeypatch.setattr(kernels, "cuda_arch", lambda device: "sm90")
    monkeypatch.setattr(kernels, "xformers_unsupported", lambda *a: None)  # as if on a GPU
    assert kernels.dense_kernel(q, k, v).name == "sdpa"
    monkeypatch.setitem(kernels.XFORMERS_FASTER_ON, "sm90", "measured: test")
    table_row = kernels.KernelSpec("xformers", kernels.xformers_attention, lambda *a: None)
    monkeypatch.setattr(kernels, "XFORMERS", table_row)
    assert kernels.dense_kernel(q, k, v).name == "xformers"
    with pytest.raises(ValueError, match="dense backend must be"):
        kernels.dense_kernel(q, k, v, backend="flash")


@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
def test_layout_and_masks_match_sdpa(fake_xformers, mask_kind):
    q, k, v = _qkv(n=21)  # Nk not a multiple of 8: the bias is stored padded and sliced
    mask = None
    if mask_kind:
        keep = torch.rand(2, 1, 21, 21, generator=torch.Generator().manual_seed(1)) > 0.3
        keep[..., 0] = True
        mask = keep if mask_kind == "bool" else torch.where(keep, 0.0, -1e4)
    out = kernels.xformers_attention(q, k, v, mask=mask, scale=0.3)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    assert out.shape == q.shape and torch.allclose(out, ref, atol=1e-5)
    assert fake_xformers[-1][0] == (2, 21, 3, 8)  # called in [B, N, H, D]


def test_block_diagonal_gather_equals_gather_attend(fake_xformers):
    """One xformers call over the whole tile-sparse gather plan == one SDPA call per plan entry."""
    frames, tpf = 4, 5
    groups = torch.arange(frames).repeat_interleave(tpf)
    keep = torch.eye(frames, dtype=torch.bool)
    keep[:, 0] = True  # every frame sees the first (global) frame
    keep[0] = True  # the global frame sees everything
    plan = blockmask.gather_plan(groups, keep)
    q, k, v = _qkv(n=frames * tpf, seed=2)
    out = kernels.xformers_gather_attend(q, k, v, plan, scale=0.4)
    ref = blockmask.gather_attend(q, k, v, plan, scale=0.4)
    assert torch.allclose(out, ref, atol=1e-5)
    assert len(fake_xformers) == 1 and fake_xformers[0][1] == "_BlockDiagonal"
