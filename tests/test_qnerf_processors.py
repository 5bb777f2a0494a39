"""QNeRF processors on UNets: identity with the controls off, the paper's layers on SD 1.5 (meta) and a
tiny SD-1.5-shaped UNet (and an SDXL-shaped one), query capture per layer and view, MasaCtrl K/V per
view, and the guidance step: alpha = 0 is a no-op, one step lowers the query distance, and the
gradient matches finite differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from attn_processors.core import Controller, Select, apply, build_sites, config_from_json, config_to_json
from attn_processors.core.registry import installer_for
from attn_processors.qnerf import (
    STORE,
    GuidanceForwardDone,
    QNeRFConfig,
    QNeRFProcessor,
    decoder_sites,
    guidance_step,
    pair_rows,
    query_distance,
    view_labels,
)
from attn_processors.testing.real_configs import real_denoiser
from attn_processors.testing.tiny import tiny_denoiser

Q_LAYERS = [f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1" for b in (1, 2, 3) for a in range(3)]
KV_LAYERS = Q_LAYERS[3:]  # up_blocks.2-3


def sd15_shaped_unet(seed: int = 0) -> UNet2DConditionModel:
    """SD 1.5's attention-layer names and counts (16 self-attention layers, 9 in up_blocks.1-3), tiny."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64, 64, 64), layers_per_block=2, sample_size=16, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32, attention_head_dim=8).eval()


@pytest.fixture(scope="module")
def unet() -> UNet2DConditionModel:
    return sd15_shaped_unet()


def _forward(unet, z, text, ctrl, labels, mode="denoise", step=0):
    ctrl.mode = mode
    ctrl.begin_step(step, 500)
    ctrl.set_branch(labels)
    return unet(z, 500, encoder_hidden_states=text, return_dict=False)[0]


def _inputs(views: int, seed: int = 0, hw: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2 * views, 4, hw, hw, generator=g), torch.randn(2 * views, 5, 32, generator=g)


# -- registration and layers -------------------------------------------------------------------------
def test_config_is_registered_and_round_trips():
    cfg = QNeRFConfig(alpha=3.0, tau=3, query_factors=(1, 2), encoder="hashgrid")
    assert installer_for(cfg) is not None
    assert config_from_json(config_to_json(cfg)) == cfg


@pytest.mark.parametrize("bad, match", [
    (dict(tau=0), "tau=0"), (dict(alpha=float("nan")), "alpha=nan"), (dict(encoder="voxels"), "encoder="),
    (dict(query_factors=(0,)), "query_factors"), (dict(layers=Select(resolutions=(16,))), "resolutions"),
    (dict(guidance_steps=0), "guidance_steps=0"), (dict(guidance_steps=2.0), "guidance_steps=2.0"),
])
def test_bad_config_values_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        QNeRFConfig(**bad)


def test_sd15_selects_the_nine_decoder_self_attention_layers_on_meta():
    with torch.device("meta"):
        big = real_denoiser("sd15")
    sites = build_sites(big)
    cfg = QNeRFConfig()
    assert [s.name for s in decoder_sites(sites, cfg.query_factors)] == Q_LAYERS
    assert [s.name for s in decoder_sites(sites, cfg.kv_factors)] == KV_LAYERS
    res = {s.name: s.resolution((64, 64)) for s in decoder_sites(sites, cfg.query_factors)}
    assert [res[n][0] for n in Q_LAYERS] == [16] * 3 + [32] * 3 + [64] * 3  # the paper's 16 / 32 / 64


def test_tiny_sd15_shape_and_sdxl_shape_resolve(unet):
    sites = build_sites(unet)
    assert sum(s.kind == "self" for s in sites) == 16
    assert [s.name for s in decoder_sites(sites, (1, 2, 4))] == Q_LAYERS
    with apply(unet, QNeRFConfig(), controller=Controller()):
        ours = {k.removesuffix(".processor") for k, p in unet.attn_processors.items()
                if isinstance(p, QNeRFProcessor)}
    assert ours == set(Q_LAYERS)
    assert not any(isinstance(p, QNeRFProcessor) for p in unet.attn_processors.values())  # restored
    xl = build_sites(tiny_denoiser("sdxl"))
    chosen = decoder_sites(xl, (1, 2, 4))
    assert chosen and all(s.place == "up" and s.kind == "self" for s in chosen)
    decoder = {s.res_factor for s in xl if s.place == "up" and s.kind == "self"}
    assert {s.res_factor for s in chosen} == decoder


def test_factors_the_unet_lacks_are_named(unet):
    with pytest.raises(ValueError, match=r"query_factors=\(16,\): this UNet has decoder self-attention at"):
        with apply(unet, QNeRFConfig(query_factors=(16,)), controller=Controller()):
            pass


# -- identity --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cross", [False, True])
def test_processor_with_controls_off_equals_attn_processor_2_0(cross):
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=24 if cross else None, heads=4, dim_head=8).eval()
    x, ctx = torch.randn(2, 16, 32), torch.randn(2, 7, 24)
    attn.set_processor(AttnProcessor2_0())
    want = attn(x, ctx if cross else None)
    ctrl = Controller()
    ctrl.stores[STORE] = None
    site = next(s for s in build_sites(_Wrap(attn)) if s.kind == ("cross" if cross else "self"))
    for capture, kv in ((False, False), (True, True)):  # capture/kv on, but mode and rows say "off"
        attn.set_processor(QNeRFProcessor(site, ctrl, QNeRFConfig(), capture, kv))
        ctrl.begin_step(10, 500)
        got = attn(x, ctx if cross else None)
        assert (got - want).abs().max() <= 1e-5


class _Wrap(torch.nn.Module):
    """One Attention module as a 'model' with attn_processors (for build_sites)."""

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        self.attn = attn

    @property
    def attn_processors(self):
        return {"attn.processor": self.attn.processor}


def test_capture_and_masactrl_off_leave_the_unet_exact(unet):
    z, text = _inputs(2)
    want = unet(z, 500, encoder_hidden_states=text, return_dict=False)[0]
    ctrl = Controller()
    with apply(unet, QNeRFConfig(mutual=False), controller=ctrl):
        ctrl.begin_run(4, (16, 16))
        ctrl.stores[STORE].begin_views([0, 1], total=2)
        got = _forward(unet, z, text, ctrl, view_labels(2, cfg=False), mode="extract")
    assert (got - want).abs().max() <= 1e-5  # capture only reads the queries


def test_state_travels_on_the_controller_and_no_kwarg_is_dropped(unet, caplog):
    """Diffusers drops cross_attention_kwargs a processor does not name, with a warning: ours take none
    (nothing warns), while a misnamed one does warn, so the check can fail."""
    import logging

    from diffusers.utils import logging as dlogging

    z, text = _inputs(1)
    ctrl = Controller()
    dlogging.enable_propagation()
    try:
        with apply(unet, QNeRFConfig(), controller=ctrl), torch.no_grad(), caplog.at_level(logging.WARNING):
            ctrl.begin_run(4, (16, 16))
            ctrl.stores[STORE].begin_views([0], total=1)
            _forward(unet, z, text, ctrl, view_labels(1, cfg=False), mode="extract")
            assert "are not expected by" not in caplog.text
            assert len(ctrl.stores[STORE].queries(Q_LAYERS[0])) == 1
            unet(z, 500, encoder_hidden_states=text, cross_attention_kwargs={"qnerf_alpha": 1.0})
            assert "are not expected by" in caplog.text
    finally:
        dlogging.disable_propagation()


# -- capture --------------------------------------------------------------------------------------
def test_extract_stores_fp16_cpu_queries_per_layer_and_view(unet):
    z, text = _inputs(3)
    ctrl = Controller()
    with apply(unet, QNeRFConfig(), controller=ctrl), torch.no_grad():
        ctrl.begin_run(4, (16, 16))
        store = ctrl.stores[STORE]
        store.begin_views([2, 0, 1], total=3)  # rows in a different order from the views
        _forward(unet, z, text, ctrl, view_labels(3, cfg=False), mode="extract")
        maps = store.maps()
    sizes = {1: 4, 2: 8, 3: 16}  # up block -> token grid side of a 16x16 latent
    for name in Q_LAYERS:
        q, side = store.queries(name), sizes[int(name.split(".")[1])]
        channels = unet.get_submodule(name).to_q.out_features
        assert q.shape == (3, side**2, channels) and q.dtype == torch.float16 and q.device.type == "cpu"
        assert not q.requires_grad and maps[name].shape == (3, side, side, channels)
    assert store.nbytes() == sum(store.queries(n).numel() * 2 for n in Q_LAYERS)


def test_extract_rows_follow_the_announced_views(unet):
    z, text = _inputs(2, seed=3)
    ctrl = Controller()
    with apply(unet, QNeRFConfig(mutual=False), controller=ctrl), torch.no_grad():
        ctrl.begin_run(4, (16, 16))
        store = ctrl.stores[STORE]
        store.begin_views([0, 1], total=2)
        _forward(unet, z, text, ctrl, view_labels(2, cfg=False), mode="extract")
        first = {n: store.queries(n).clone() for n in Q_LAYERS}
        store.clear()
        store.begin_views([1, 0], total=2)
        _forward(unet, z, text, ctrl, view_labels(2, cfg=False), mode="extract")
    for n in Q_LAYERS:
        assert torch.equal(store.queries(n), first[n].flip(0))


def test_guide_keeps_the_graph_and_stops_after_the_last_query_layer(unet):
    z, text = _inputs(2)
    ctrl = Controller()
    with apply(unet, QNeRFConfig(), controller=ctrl):
        ctrl.begin_run(4, (16, 16))
        store = ctrl.stores[STORE]
        store.begin_views([0, 1], total=2)
        zg = z.clone().requires_grad_(True)
        with pytest.raises(GuidanceForwardDone):
            _forward(unet, zg, text, ctrl, view_labels(2, cfg=False), mode="guide")
    assert sorted(store.live) == sorted(Q_LAYERS)
    assert all(q.requires_grad and q.dtype == torch.float32 for q in store.live.values())
    with pytest.raises(ValueError, match="no extracted queries"):
        store.queries(Q_LAYERS[0])  # guide mode stores nothing off the graph


def test_wrong_view_count_is_named(unet):
    z, text = _inputs(2)
    ctrl = Controller()
    with apply(unet, QNeRFConfig(), controller=ctrl), torch.no_grad():
        ctrl.begin_run(4, (16, 16))
        ctrl.stores[STORE].begin_views([0], total=2)
        with pytest.raises(ValueError, match="2 target rows for 1 announced views"):
            _forward(unet, z, text, ctrl, view_labels(2, cfg=False), mode="extract")
    with pytest.raises(ValueError, match="distinct view indices in 0..1"):
        ctrl.stores[STORE].begin_views([0, 2], total=2)


# -- MasaCtrl -------------------------------------------------------------------------------------
def test_target_rows_attend_to_their_own_views_source_kv():
    torch.manual_seed(1)
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    x = torch.randn(4, 16, 32)  # rows: source v0, source v1, target v0, target v1
    ctrl = Controller()
    ctrl.stores[STORE] = None
    site = build_sites(_Wrap(attn))[0]
    attn.set_processor(QNeRFProcessor(site, ctrl, QNeRFConfig(kv_start_step=2), False, True))
    ctrl.set_branch(view_labels(2, cfg=False))
    assert pair_rows(view_labels(2, cfg=False)) == [(2, 0), (3, 1)]
    ctrl.begin_step(1, 500)
    before = attn(x)  # step 1 < kv_start_step: plain self-attention
    ctrl.begin_step(2, 400)
    after = attn(x)

    def heads(t):
        return t.unflatten(-1, (4, 8)).transpose(1, 2)

    q, k, v = heads(attn.to_q(x)), heads(attn.to_k(x)), heads(attn.to_v(x))
    for tgt, src in ((2, 0), (3, 1)):
        o = F.scaled_dot_product_attention(q[tgt:tgt + 1], k[src:src + 1], v[src:src + 1])
        want = attn.to_out[0](o.transpose(1, 2).flatten(2))
        assert (after[tgt] - want[0]).abs().max() <= 1e-5
    assert torch.equal(after[:2], before[:2])  # source rows are untouched
    assert (after[2:] - before[2:]).abs().max() > 1e-3


# -- guidance ------------------------------------------------------------------------------------
def _loss_of(unet, ctrl, text, rendered):
    store = ctrl.stores[STORE]

    def loss(zt):
        z = torch.cat([zt.detach(), zt])  # source rows (no grad) + target rows
        try:
            _forward(unet, z, text, ctrl, view_labels(len(zt), cfg=False), mode="guide", step=0)
        except GuidanceForwardDone:
            pass
        return query_distance(store.live, rendered)

    return loss


def test_alpha_zero_is_a_bit_exact_no_op():
    z = torch.randn(2, 4, 8, 8)
    out, loss = guidance_step(z, 0.0, lambda t: (_ for _ in ()).throw(AssertionError("no forward")))
    assert out is z and loss is None


def test_one_guidance_step_lowers_the_query_distance(unet):
    z, text = _inputs(2, seed=5)
    zt, text = z[2:], text[:2].repeat(2, 1, 1)
    ctrl = Controller()
    with apply(unet, QNeRFConfig(), controller=ctrl):
        ctrl.begin_run(4, (16, 16))
        store = ctrl.stores[STORE]
        store.begin_views([0, 1], total=2)
        g = torch.Generator().manual_seed(7)
        other = torch.randn(2, 4, 16, 16, generator=g)  # queries of another latent: the "rendered" target
        with torch.no_grad():
            try:
                _forward(unet, torch.cat([other, other]), text, ctrl, view_labels(2, cfg=False), "guide")
            except GuidanceForwardDone:
                pass
        rendered = {n: q.detach().clone() for n, q in store.live.items()}
        loss = _loss_of(unet, ctrl, text, rendered)
        with torch.no_grad():
            before = float(loss(zt))
        stepped, reported = guidance_step(zt, 0.5, loss)
        with torch.no_grad():
            after = float(loss(stepped))
    assert reported == pytest.approx(before, rel=1e-6)
    assert after < before - 1e-4, (before, after)
    assert not torch.equal(stepped, zt)


def test_repeated_guidance_moves_take_fresh_gradients():
    """On a curved loss one big move overshoots; the same distance in small moves keeps lowering it."""
    target = torch.tensor([1.0, -2.0])

    def loss(z: torch.Tensor) -> torch.Tensor:
        return ((z - target) ** 2).sum() + (z ** 4).sum()

    z = torch.zeros(2)
    calls = []
    small, first = guidance_step(z, 0.1, lambda t: calls.append(1) or loss(t), steps=4)
    assert len(calls) == 4 and first == pytest.approx(float(loss(z)))
    big, _ = guidance_step(z, 0.4, loss)
    one_small = float(loss(guidance_step(z, 0.1, loss)[0]))
    assert float(loss(small)) < one_small < float(loss(z)) < float(loss(big))
    with pytest.raises(ValueError, match="steps=0"):
        guidance_step(z, 0.05, loss, steps=0)


def test_gradient_matches_finite_differences_on_a_patch():
    unet = sd15_shaped_unet().double()
    z, text = _inputs(1, seed=9, hw=8)
    z, text = z.double(), text.double()
    zt = z[1:]
    ctrl = Controller()
    with apply(unet, QNeRFConfig(), controller=ctrl):
        ctrl.begin_run(4, (8, 8))
        store = ctrl.stores[STORE]
        store.begin_views([0], total=1)
        g = torch.Generator().manual_seed(11)
        with torch.no_grad():
            try:
                _forward(unet, torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64), text, ctrl,
                         view_labels(1, cfg=False), "guide")
            except GuidanceForwardDone:
                pass
        rendered = {n: q.detach().clone() for n, q in store.live.items()}
        loss = _loss_of(unet, ctrl, text, rendered)
        zg = zt.clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(loss(zg), zg)
        h = 1e-5
        with torch.no_grad():
            for i, j in ((3, 3), (3, 4), (4, 3), (4, 4)):  # a 2x2 patch of channel 1
                e = torch.zeros_like(zt)
                e[0, 1, i, j] = h
                fd = (float(loss(zt + e)) - float(loss(zt - e))) / (2 * h)
                an = float(grad[0, 1, i, j])
                assert abs(fd - an) <= 1e-2 * abs(fd) + 1e-9, (i, j, fd, an)


# -- hard injection (the paper's ablation) ---------------------------------------------------------
def _by_view(store) -> dict[str, torch.Tensor]:
    """The live queries of rows [view 1, view 0] as rendered maps {layer: (V, h, w, C)} by view."""
    order = torch.tensor([1, 0])
    return {n: torch.zeros_like(q).index_copy(0, order, q).unflatten(1, store.hw[n])
            for n, q in store.live.items()}


def test_hard_injection_replaces_the_target_queries_by_the_rendered_ones(unet):
    """Injecting a view's own queries changes nothing; injecting another latent's changes the target
    rows only, and the source rows stay exact."""
    z, text = _inputs(2, seed=3)
    labels = view_labels(2, cfg=False)  # source rows, then target rows
    ctrl = Controller()
    with apply(unet, QNeRFConfig(hard_inject=True, mutual=False, early_exit=False), controller=ctrl):
        ctrl.begin_run(4, (16, 16))
        store = ctrl.stores[STORE]
        store.begin_views([1, 0], total=2)
        with torch.no_grad():
            plain = _forward(unet, z, text, ctrl, labels)
            _forward(unet, z, text, ctrl, labels, mode="guide")
            store.set_rendered(_by_view(store))
            same = _forward(unet, z, text, ctrl, labels, mode="inject")
            other = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(8))
            _forward(unet, other, text, ctrl, labels, mode="guide")
            store.set_rendered(_by_view(store))
            moved = _forward(unet, z, text, ctrl, labels, mode="inject")
    assert (same - plain).abs().max() < 1e-5
    assert (moved[:2] - plain[:2]).abs().max() < 1e-6
    assert (moved[2:] - plain[2:]).abs().max() > 1e-3
