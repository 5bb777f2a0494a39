"""Style injection maths on synthetic tensors (issue 18, "Attention algebra"): the output rows' attention
equals softmax(Q K_s^T / sqrt d) V_s computed by hand, the fusion weights reduce to one stream,
StyleID at T = 1 and full preservation is a plain K/V swap, contrast keeps row means and [0, 1],
AdaIN matches the reference's statistics, swap guidance and its schedule, stage-2 fusion."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention

from attn_processors.core import Controller, Site
from attn_processors.style import (
    FUSE,
    STORE,
    SWAP,
    StyleConfig,
    StyleProcessor,
    StyleState,
    adain,
    contrast,
    dissimilarity,
    fuse_queries,
    fused_attention,
    guidance_schedule,
    resize_mask,
    row_labels,
    swap_guidance,
)

SITE = Site("up_blocks.3.attentions.0.transformer_blocks.0.attn1", "unet", "up", 3, "self", 1)
LABELS = row_labels([("out", "content", "edges", "style")])
OUT, CONTENT, EDGES, STYLE = range(4)
HEADS, DIM = 2, 8


def _heads(x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(-1, (HEADS, DIM)).transpose(1, 2)  # (B, N, H*D) -> (B, H, N, D)


@pytest.fixture(scope="module")
def layer():
    """A self-attention module, its inputs (4 rows: out, content, edges, style; 4x4 tokens) and q/k/v."""
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=HEADS, dim_head=DIM).eval()
    hs = torch.randn(4, 16, 16)
    with torch.no_grad():
        q, k, v = (_heads(f(hs)) for f in (attn.to_q, attn.to_k, attn.to_v))
    return attn, hs, q, k, v


def _run(layer, config: StyleConfig, hs: torch.Tensor | None = None) -> torch.Tensor:
    attn, hs0, *_ = layer
    ctrl = Controller()
    proc = StyleProcessor(SITE, ctrl, config)
    ctrl.begin_run(num_steps=10, latent_hw=(4, 4))
    ctrl.begin_step(5, 500)
    ctrl.set_branch(LABELS)
    ctrl.mode = SWAP
    with torch.no_grad():
        return proc(attn, hs0 if hs is None else hs)


def _finish(attn: Attention, heads_out: torch.Tensor) -> torch.Tensor:
    """(H, N, D) attention output of one row -> the module's output (N, C)."""
    with torch.no_grad():
        return attn.to_out[0](heads_out.transpose(0, 1).flatten(1))


def _by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.softmax(q @ k.transpose(-1, -2) * temperature / math.sqrt(DIM), -1) @ v


PLAIN = dict(contrast=1.0, refresh_every=0, temperature=1.0)


def test_style_kv_gives_softmax_q_ks_vs_by_hand(layer):
    attn, _, q, k, v = layer
    out = _run(layer, StyleConfig(mode="kv_swap"))
    expected = _finish(attn, _by_hand(q[OUT], k[STYLE], v[STYLE]))
    torch.testing.assert_close(out[OUT], expected, atol=1e-5, rtol=0)
    geo = StyleConfig(mode="illusign", w_img=1.0, w_edge=0.5, edge_stream="edges", **PLAIN)
    q_geo = q[CONTENT] + 0.5 * q[EDGES]
    torch.testing.assert_close(_run(layer, geo)[OUT], _finish(attn, _by_hand(q_geo, k[STYLE], v[STYLE])),
                               atol=1e-5, rtol=0)


def test_donor_rows_are_untouched(layer):
    attn, hs, *_ = layer
    with torch.no_grad():
        stock = attn(hs)
    for mode in ("illusign", "style_id", "kv_swap"):
        out = _run(layer, StyleConfig(mode=mode))
        torch.testing.assert_close(out[1:], stock[1:], atol=1e-6, rtol=0)
        assert not torch.allclose(out[OUT], stock[OUT], atol=1e-3)


@pytest.mark.parametrize("weights,row", [((1.0, 0.0), CONTENT), ((0.0, 1.0), EDGES)])
def test_fusion_weights_reduce_to_one_stream(layer, weights, row):
    attn, _, q, k, v = layer
    cfg = StyleConfig(mode="illusign", w_img=weights[0], w_edge=weights[1], edge_stream="edges", **PLAIN)
    expected = _finish(attn, _by_hand(q[row], k[STYLE], v[STYLE]))
    torch.testing.assert_close(_run(layer, cfg)[OUT], expected, atol=1e-5, rtol=0)
    assert torch.equal(fuse_queries(q[CONTENT], q[EDGES], *weights), q[row])  # exact in floating point


def test_proxy_reading_uses_the_outputs_own_query(layer):
    """The proxy's Q_out <- Q_out + 0.5 Q_img: w_img=0.5, w_edge=1 on the output's own query."""
    attn, _, q, k, v = layer
    cfg = StyleConfig(mode="illusign", w_img=0.5, w_edge=1.0, edge_stream="out", **PLAIN)
    expected = _finish(attn, _by_hand(q[OUT] + 0.5 * q[CONTENT], k[STYLE], v[STYLE]))
    torch.testing.assert_close(_run(layer, cfg)[OUT], expected, atol=1e-5, rtol=0)


def test_style_id_at_t1_with_full_preservation_is_a_plain_kv_swap(layer):
    _, hs, *_ = layer
    style_id = _run(layer, StyleConfig(mode="style_id", w_img=1.0, w_edge=0.0, temperature=1.0))
    hs_swap = hs.clone()
    hs_swap[OUT] = hs[CONTENT]  # kv_swap with the content's query as the output's own
    kv_swap = _run(layer, StyleConfig(mode="kv_swap"), hs_swap)
    torch.testing.assert_close(style_id[OUT], kv_swap[OUT], atol=1e-5, rtol=0)


def test_temperature_scales_the_output_rows_logits(layer):
    attn, _, q, k, v = layer
    cfg = StyleConfig(mode="style_id", temperature=1.5)  # gamma = 0.75 on the content query
    q_hat = 0.75 * q[CONTENT] + 0.25 * q[OUT]
    expected = _finish(attn, _by_hand(q_hat, k[STYLE], v[STYLE], temperature=1.5))
    torch.testing.assert_close(_run(layer, cfg)[OUT], expected, atol=1e-5, rtol=0)


def test_contrast_row_wise_keeps_row_means_and_stays_in_unit_interval():
    probs = torch.softmax(3 * torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)), -1)
    out = contrast(probs, 1.67, "row_wise")
    torch.testing.assert_close(out.mean(-1), probs.mean(-1), atol=1e-7, rtol=0)
    assert out.min() >= 0 and out.max() <= 1
    assert (out - probs).abs().max() > 1e-3  # it does change the map: peaks up, the rest down
    assert out.amax(-1).mean() > probs.amax(-1).mean()  # sharper on average: peaks rise
    assert (out == 0).sum() > (probs == 0).sum()  # the small entries are cut


def test_contrast_reference_quirk_reproduces_the_upstream_line():
    """enhance_tensor: (A - A.mean(dim=-1)) * s + A.mean(dim=-1), clipped: row j's mean on column j."""
    probs = torch.softmax(torch.randn(64, 64, generator=torch.Generator().manual_seed(2)), -1)
    out = contrast(probs, 1.67, "reference_quirk")
    means = probs.mean(-1)  # [64]: one per row
    by_hand = torch.empty_like(probs)
    for j in range(64):  # column j uses row j's mean
        by_hand[:, j] = ((probs[:, j] - means[j]) * 1.67 + means[j]).clamp(0, 1)
    assert torch.equal(out, by_hand)
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, contrast(probs, 1.67, "row_wise"))
    with pytest.raises(ValueError, match="square map"):
        contrast(probs[:, :32], 1.67, "reference_quirk")


def test_contrast_in_the_processor_acts_on_output_rows(layer):
    attn, _, q, k, v = layer
    cfg = StyleConfig(mode="kv_swap", contrast=1.67)
    probs = torch.softmax(q[OUT] @ k[STYLE].transpose(-1, -2) / math.sqrt(DIM), -1)
    expected = _finish(attn, contrast(probs, 1.67, "row_wise") @ v[STYLE])
    torch.testing.assert_close(_run(layer, cfg)[OUT], expected, atol=1e-5, rtol=0)


def test_adain_matches_the_references_channel_statistics():
    g = torch.Generator().manual_seed(3)
    x, ref = torch.randn(2, 4, 16, 16, generator=g), 3 * torch.randn(2, 4, 16, 16, generator=g) + 1.5
    out = adain(x, ref, dim=(2, 3))
    torch.testing.assert_close(out.mean((2, 3)), ref.mean((2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std((2, 3)), ref.std((2, 3)), atol=1e-4, rtol=0)


def test_style_aligned_adain_on_q_and_k_and_the_key_length_doubles(layer):
    """StyleAligned: the output's Q/K token statistics (per head and channel) become the style's, V is
    untouched, and the output attends to [own K ++ style K]."""
    _, _, q, k, v = layer
    ctrl = Controller()
    proc = StyleProcessor(SITE, ctrl, StyleConfig(mode="style_aligned"))
    ctrl.begin_run(num_steps=10, latent_hw=(4, 4))
    ctrl.begin_step(5, 500)
    ctrl.set_branch(LABELS)
    ctrl.mode = SWAP
    from attn_processors.core.processor import CallInfo

    call = CallInfo(SITE, ctrl, 4, HEADS, DIM, 16, 16, 0, None, ctrl.row_labels(4), (4, 4), None)
    q2, k2, v2 = proc.edit_qkv(q, k, v, call)
    assert k2.shape[2] == v2.shape[2] == 2 * k.shape[2]
    for new, ref in ((q2[OUT], q[STYLE]), (k2[OUT, :, :16], k[STYLE])):
        torch.testing.assert_close(new.mean(1), ref.mean(1), atol=1e-4, rtol=0)
        torch.testing.assert_close(new.std(1), ref.std(1), atol=1e-4, rtol=0)
    assert torch.equal(v2[OUT, :, :16], v[OUT]) and torch.equal(v2[OUT, :, 16:], v[STYLE])
    assert torch.equal(k2[OUT, :, 16:], k[STYLE])
    assert torch.equal(q2[1:], q[1:]) and torch.equal(k2[1:, :, 16:], k[1:])  # donors: own K twice


def test_swap_guidance_and_its_schedule():
    g = torch.Generator().manual_seed(4)
    e = torch.randn(1, 4, 8, 8, generator=g)
    assert torch.equal(swap_guidance(e, e.clone(), 3.5), e)  # equal outputs give eps_noswap
    other = torch.randn(1, 4, 8, 8, generator=g)
    torch.testing.assert_close(swap_guidance(e, other, 2.0), e + 2 * (other - e))
    s = guidance_schedule(100)
    assert s[0] == 3.5 and s[-1] == 1.75 and len(s) == 100
    torch.testing.assert_close(s.diff(), torch.full((99,), -1.75 / 99, dtype=torch.float64))  # linear


def test_stage2_masks_zero_and_one_give_start_and_end_exactly():
    g = torch.Generator().manual_seed(5)
    q1, q2, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(4))
    zero, one = torch.zeros(1, 16), torch.ones(1, 16)
    start = fused_attention(q1, q2, k, v, zero, "start")
    end = fused_attention(q1, q2, k, v, zero, "end")
    assert torch.equal(fused_attention(q1, q2, k, v, zero, "query"), start)
    assert torch.equal(fused_attention(q1, q2, k, v, one, "query"), end)
    for mode in ("mean", "max", "min"):
        assert torch.equal(fused_attention(q1, q2, k, v, zero, mode), start)
    torch.testing.assert_close(start, _by_hand(q1, k, v), atol=1e-6, rtol=0)
    half = fused_attention(q1, q2, k, v, one, "mean")
    a1 = torch.softmax(q1 @ k.transpose(-1, -2) / math.sqrt(8), -1)
    a2 = torch.softmax(q2 @ k.transpose(-1, -2) / math.sqrt(8), -1)
    torch.testing.assert_close(half, (a1 + a2) / 2 @ v, atol=1e-6, rtol=0)


def test_stage2_dissimilarity_is_symmetric_and_masks_stay_binary():
    g = torch.Generator().manual_seed(6)
    q1, q2 = torch.randn(1, 2, 64, 8, generator=g), torch.randn(1, 2, 64, 8, generator=g)
    for tau in (None, 0.5):
        assert torch.equal(dissimilarity(q1, q2, tau), dissimilarity(q2, q1, tau))
    assert torch.equal(dissimilarity(q1, q1, 0.5), torch.zeros(1, 64))  # identical queries: similar
    soft = dissimilarity(q1, -q1)
    torch.testing.assert_close(soft, torch.ones(1, 64))  # opposite queries: dissimilar
    mask = (torch.rand(1, 37, 53, generator=g) > 0.5).float()
    small = resize_mask(mask, (8, 8))
    assert small.shape == (1, 64) and set(small.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("mode", ["query", "mean", "max", "min"])
def test_stage2_processor_matches_the_fusion_formula(layer, mode):
    """Through the processor's hooks (fuse pass, contrast on), the output row is the formula's."""
    attn, hs, q, k, v = layer
    ctrl = Controller()
    mask = torch.zeros(1, 4, 4)
    mask[:, :, 2:] = 1  # the right half of the tokens from the end frame
    ctrl.stores[STORE] = StyleState()
    ctrl.stores[STORE].begin_run(mask)
    proc = StyleProcessor(SITE, ctrl, StyleConfig(stage2=mode))
    ctrl.begin_run(num_steps=10, latent_hw=(4, 4))
    ctrl.begin_step(5, 500)
    ctrl.set_branch(row_labels([("out", "q1", "q2", "style")]))
    ctrl.mode = FUSE
    with torch.no_grad():
        out = proc(attn, hs)
    m = mask.flatten(1)
    fused = fused_attention(q[1:2], q[2:3], k[3:4], v[3:4], m, mode, strength=1.67)[0]
    torch.testing.assert_close(out[0], _finish(attn, fused), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1:], attn(hs)[1:].detach(), atol=1e-6, rtol=0)
