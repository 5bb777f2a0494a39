"""Tile-sparse masks: the k:(F-k) family, its analytic BlockMask, and input validation."""

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from attn_processors.core.blockmask import block_density, group_block_mask
from attn_processors.tile_sparse import (
    VideoGeometry,
    global_frame_indices,
    kept_tile_fraction,
    tile_block_mask,
    tile_keep,
    tile_mask,
    tile_sparse_attention,
)

# the nine masks of the paper (F, k) with their formula sparsities in %
# (Efficient-vDiT Sec. 3.3: 1 - (2kF - k^2 + F - k) / F^2)
PAPER_MASKS = [(8, 4, 18.75), (8, 3, 31.25), (8, 2, 46.88), (8, 1, 65.63),
               (24, 12, 22.92), (24, 8, 41.67), (24, 6, 53.13), (24, 4, 65.97), (24, 3, 72.92)]


def _element_mask(bm, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
    """What flex computes at (q_idx x kv_idx): full blocks True, partial blocks mask_mod, skipped False."""
    bs_q, bs_kv = bm.BLOCK_SIZE
    nkv = bm.kv_indices.shape[-1]

    def blocks(num, idx):  # [nq, nkv] bool from (count, ordered indices)
        dense = torch.zeros(num.shape[-1], nkv, dtype=torch.bool)
        for i, n in enumerate(num[0, 0].tolist()):
            dense[i, idx[0, 0, i, :n].long()] = True
        return dense

    partial = blocks(bm.kv_num_blocks, bm.kv_indices)[q_idx // bs_q][:, kv_idx // bs_kv]
    full = blocks(bm.full_kv_num_blocks, bm.full_kv_indices)[q_idx // bs_q][:, kv_idx // bs_kv]
    assert not (partial & full).any()
    mod = bm.mask_mod(0, 0, q_idx[:, None], kv_idx[None, :])
    return full | (partial & mod)


def _representatives(geometry: VideoGeometry, block_size: int) -> torch.Tensor:
    """First and last index of every interval between block and group boundaries.

    Inside such an interval the reference (a function of the group) and the BlockMask (a function of
    the block and the group) are constant, so checking these rows against all columns (and these
    columns against all rows) is an element-wise check at a fraction of the S^2 cost; the last index
    catches off-by-one spans.
    """
    groups = geometry.groups()
    change = torch.ones_like(groups, dtype=torch.bool)
    change[1:] = groups[1:] != groups[:-1]
    change[::block_size] = True
    starts = change.nonzero().squeeze(1)
    ends = torch.cat([starts[1:], torch.tensor([geometry.seq_len])]) - 1
    return torch.unique(torch.cat([starts, ends]))


def _assert_block_mask_matches(geometry: VideoGeometry, k: int, global_frames, block_size=128):
    ref = tile_mask(geometry.frames, geometry.tokens_per_frame, k, global_frames=global_frames,
                    text_tokens=geometry.text_tokens, text_position=geometry.text_position)
    bm = tile_block_mask(geometry, k, global_frames, block_size=block_size)
    assert bm.seq_lengths == (geometry.seq_len, geometry.seq_len)
    every = torch.arange(geometry.seq_len)
    if geometry.seq_len <= 2048:  # small: literally every element
        assert torch.equal(_element_mask(bm, every, every), ref)
        return
    reps = _representatives(geometry, block_size)
    assert torch.equal(_element_mask(bm, reps, every), ref[reps])
    assert torch.equal(_element_mask(bm, every, reps), ref[:, reps])


def test_tile_keep_matches_paper_definition():
    keep = tile_keep(5, 2, "first")
    for a in range(5):
        for b in range(5):
            assert bool(keep[a, b]) == (a == b or a in (0, 1) or b in (0, 1))
    assert global_frame_indices(8, 3, "uniform") == (0, 2, 5)
    assert global_frame_indices(24, 4, "uniform") == (0, 6, 12, 18)
    assert global_frame_indices(6, 2, [4, 1]) == (1, 4)
    assert tile_keep(4, 0).equal(torch.eye(4, dtype=torch.bool))


def test_dense_mask_text_rows_and_columns_stay_dense():
    mask = tile_mask(3, 4, 1, text_tokens=2, text_position="first")  # S = 14, text at 0..1
    assert mask.shape == (14, 14) and mask.dtype == torch.bool
    assert mask[:2].all() and mask[:, :2].all()
    assert not mask[2 + 4 * 1, 2 + 4 * 2]  # frame 1 -> frame 2 dropped
    assert mask[2 + 4 * 1, 2]  # frame 1 -> frame 0 (global) kept
    last = tile_mask(3, 4, 1, text_tokens=2, text_position="last")
    assert last[-2:].all() and last[:, -2:].all()
    assert last[:12, :12].equal(tile_mask(3, 4, 1))


@pytest.mark.parametrize(
    "frames,tpf,k,gf,text,pos",
    [
        (4, 128, 1, "first", 0, "none"),
        (6, 256, 2, "uniform", 0, "none"),
        (5, 128, 2, [1, 3], 226, "first"),
        (4, 256, 1, "first", 77, "last"),
        (4, 1560, 1, "first", 0, "none"),  # Wan 480p: frames not block-aligned
        (3, 1560, 1, [2], 226, "first"),  # CogVideoX-style text first, unaligned
        (3, 3600, 1, "uniform", 0, "none"),  # 720p
        (3, 3600, 1, [1], 13, "last"),
    ],
)
def test_block_mask_equals_dense_reference_elementwise(frames, tpf, k, gf, text, pos):
    _assert_block_mask_matches(VideoGeometry(frames, tpf, text, pos), k, gf)


def test_block_mask_equals_reference_at_other_block_sizes():
    _assert_block_mask_matches(VideoGeometry(5, 37, 11, "first"), 2, "uniform", block_size=32)
    _assert_block_mask_matches(VideoGeometry(4, 50, 7, "last"), 1, [3], block_size=64)


@pytest.mark.parametrize("geometry,k", [(VideoGeometry(4, 50, 7, "first"), 1),
                                        (VideoGeometry(5, 37, 11, "last"), 2),
                                        (VideoGeometry(6, 32, 0, "none"), 2)])
def test_from_kv_blocks_equals_create_block_mask(geometry, k):
    groups = geometry.groups()
    keep = torch.ones(geometry.frames + 1, geometry.frames + 1, dtype=torch.bool)
    keep[:-1, :-1] = tile_keep(geometry.frames, k)
    ours = group_block_mask(groups, keep, block_size=32)
    s = geometry.seq_len
    ref = create_block_mask(lambda b, h, q, kv: keep[groups[q.clamp(max=s - 1)], groups[kv.clamp(max=s - 1)]],
                            1, 1, s, s, device="cpu", BLOCK_SIZE=32)
    for num, idx, ref_num, ref_idx in [
        (ours.kv_num_blocks, ours.kv_indices, ref.kv_num_blocks, ref.kv_indices),
        (ours.full_kv_num_blocks, ours.full_kv_indices, ref.full_kv_num_blocks, ref.full_kv_indices),
    ]:
        assert torch.equal(num, ref_num)
        for row, n in enumerate(num[0, 0].tolist()):
            assert torch.equal(idx[0, 0, row, :n], ref_idx[0, 0, row, :n])


@pytest.mark.parametrize("frames,k,paper_sparsity", PAPER_MASKS)
def test_paper_masks_kept_fraction_matches_formula(frames, k, paper_sparsity):
    formula = kept_tile_fraction(frames, k)
    assert 100 * (1 - formula) == pytest.approx(paper_sparsity, abs=0.01)
    # element level: exact (small tiles); block level at Open-Sora-Plan 720p (3 600 tokens per frame)
    kept = tile_mask(frames, 4, k).sum().item()
    assert kept == 16 * (2 * k * frames - k * k + frames - k)
    bm = tile_block_mask(VideoGeometry(frames, 3600), k)
    assert 100 * abs(block_density(bm) - formula) <= 1.5


def test_uniform_and_list_global_frames_give_same_sparsity():
    for gf in ("first", "uniform", [1, 4, 6]):
        assert tile_mask(8, 2, 3, global_frames=gf).sum().item() == 4 * 64 * kept_tile_fraction(8, 3)


def test_block_mask_is_cached_per_geometry_and_device():
    g = VideoGeometry(4, 64)
    assert tile_block_mask(g, 1) is tile_block_mask(VideoGeometry(4, 64), 1)
    assert tile_block_mask(g, 1) is not tile_block_mask(g, 2)
    assert tile_block_mask(g, 1, [0]) is tile_block_mask(g, 1, (0,))


def test_from_latent_uses_patch_size():
    g = VideoGeometry.from_latent(21, 60, 104, (1, 2, 2))  # Wan 480p, 81 frames
    assert (g.frames, g.tokens_per_frame) == (21, 1560)
    g = VideoGeometry.from_latent(13, 60, 90, (1, 2, 2), text_tokens=226, text_position="first")
    assert g.seq_len == 13 * 1350 + 226
    with pytest.raises(ValueError, match="divisible by patch_size"):
        VideoGeometry.from_latent(13, 61, 90, (1, 2, 2))


def test_bad_input_raises_with_what_was_expected():
    q = torch.randn(1, 1, 50, 8)
    with pytest.raises(ValueError, match=r"frames x tokens_per_frame \+ text_tokens"):
        tile_sparse_attention(q, q, q, frames=4, tokens_per_frame=12, k_global=1)
    with pytest.raises(ValueError, match=r"k_global must be in \[0, frames=4\]"):
        tile_mask(4, 12, 5)
    with pytest.raises(ValueError, match="'first', 'uniform' or a list"):
        tile_mask(4, 12, 1, global_frames="random")
    with pytest.raises(ValueError, match="distinct frame indices"):
        tile_mask(4, 12, 2, global_frames=[0, 0])
    with pytest.raises(ValueError, match="distinct frame indices"):
        tile_mask(4, 12, 1, global_frames=[4])
    with pytest.raises(ValueError, match="text_position"):
        tile_mask(4, 12, 1, text_tokens=3, text_position="middle")
    with pytest.raises(ValueError, match="text_position 'first' or 'last'"):
        tile_mask(4, 12, 1, text_tokens=3, text_position="none")
