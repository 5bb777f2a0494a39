"""Zero-to-Hero maths on synthetic tensors: the Hourglass schedule and NFE, explicit-timestep DDIM vs
Diffusers' DDIMScheduler, attention map filtering vs a literal implementation of the paper's formulas
(running min, blends, history update only on the last resample, no edits outside the ranges), the
mutual-attention row pairing, and the config (validation, JSON round trip)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDIMScheduler

from attn_processors.core import CallInfo, Controller, config_from_json, config_to_json
from attn_processors.core.sites import Select, Site
from attn_processors.zero_to_hero import (
    STORE,
    ZeroToHeroConfig,
    ZeroToHeroProcessor,
    branch_labels,
    ddim_step,
    hourglass_timesteps,
    renoise,
    resample_counts,
    source_pairs,
    swap_kv,
    uniform_timesteps,
)
from attn_processors.zero_to_hero.schedule import alpha_at, previous_timesteps

SITE = Site("up_blocks.3.attentions.0.transformer_blocks.0.attn1", "unet", "up", 3, "self", 1)


# -- schedule -------------------------------------------------------------------------------------
def test_hourglass_has_26_strictly_decreasing_steps_10_6_10_and_66_evaluations():
    ts = hourglass_timesteps()
    assert len(ts) == 26 and all(a > b for a, b in zip(ts, ts[1:], strict=False))
    assert sum(800 <= t < 1000 for t in ts) == 10
    assert sum(200 <= t < 800 for t in ts) == 6
    assert sum(0 <= t < 200 for t in ts) == 10
    assert ts[:10] == list(range(999, 800, -20)) and ts[10:16] == [799, 699, 599, 499, 399, 299]
    assert ts[16:] == list(range(199, 0, -20))
    counts = resample_counts(ts, 5, (800, 1000))
    assert counts == [5] * 10 + [1] * 16 and sum(counts) == 66
    assert ZeroToHeroConfig().nfe() == 66 and ZeroToHeroConfig(resample_iterations=1).nfe() == 26
    assert ZeroToHeroConfig.plain(50).nfe() == 50


@pytest.mark.parametrize("n", [1, 7, 25, 50, 66])
def test_uniform_timesteps_are_ddim_schedulers(n):
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                          set_alpha_to_one=False, clip_sample=False)
    sched.set_timesteps(n)
    assert uniform_timesteps(n) == sched.timesteps.tolist()


def test_bad_stage_split_is_named():
    with pytest.raises(ValueError, match=r"stage \[800, 1000\) cannot hold 300 distinct steps"):
        hourglass_timesteps((300, 6, 10))
    with pytest.raises(ValueError, match="needs one count per stage"):
        ZeroToHeroConfig(stage_steps=(10, 6))


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_explicit_ddim_equals_ddim_scheduler_on_a_uniform_list(eta):
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                          set_alpha_to_one=False, clip_sample=False)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, 8, generator=g)
    ours, theirs = z.clone(), z.clone()
    ts = uniform_timesteps(10)
    for t, t_prev in zip(ts, previous_timesteps(ts), strict=True):
        eps = torch.randn(2, 4, 8, 8, generator=g)
        noise = torch.randn(2, 4, 8, 8, generator=g)
        a_t = alpha_at(sched.alphas_cumprod, t, float(sched.final_alpha_cumprod))
        a_p = alpha_at(sched.alphas_cumprod, t_prev, float(sched.final_alpha_cumprod))
        ours = ddim_step(ours, eps, a_t, a_p, eta, noise)
        theirs = sched.step(eps, t, theirs, eta=eta, variance_noise=noise).prev_sample
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_renoise_is_the_forward_process_ratio():
    a_t, a_p = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    z, n = torch.randn(3, 5), torch.randn(3, 5)
    torch.testing.assert_close(renoise(z, a_t, a_p, n), 0.5 ** 0.5 * z + 0.5 ** 0.5 * n)
    # the ratio chain: z_prev ~ sqrt(a_p) x0 -> z_t ~ sqrt(a_t) x0 (mean of q(z_t | z_prev))
    x0 = torch.randn(4)
    mean = renoise(a_p.float() ** 0.5 * x0, a_t, a_p, torch.zeros(4))
    torch.testing.assert_close(mean, a_t.float() ** 0.5 * x0)


# -- attention map filtering ----------------------------------------------------------------------
def _reference(maps, ts, counts, cfg):
    """The paper's formulas, literally: f = min(M, all earlier refined maps of the step), blend with H,
    H updated after the last iteration only; M returned unchanged outside [600, 1000]."""
    inr = lambda t, r: r[0] <= t <= r[1]  # noqa: E731
    out, hist, k = [], None, 0
    for t, reps in zip(ts, counts, strict=True):
        refined = []
        for r in range(reps):
            m = maps[k]
            k += 1
            if not (inr(t, cfg.instep_range) or inr(t, cfg.crossstep_range)):
                out.append(m)
                continue
            f = torch.stack([m, *refined]).amin(0) if inr(t, cfg.instep_range) else m
            blend = inr(t, cfg.crossstep_range) and hist is not None
            mt = cfg.alpha_c * f + (1 - cfg.alpha_c) * hist if blend else f
            refined.append(mt)
            if r == reps - 1 and inr(t, cfg.crossstep_range):
                hist = mt if hist is None else cfg.alpha_h * mt + (1 - cfg.alpha_h) * hist
            out.append(mt)
    return out


def _call(ctrl, labels, shape):
    b, h, n, m = shape
    return CallInfo(SITE, ctrl, b, h, 4, n, m, 0, None, labels, (4, 4), None)


def _drive(proc, ctrl, maps, ts, counts, labels=None):
    """Run the processor's edit_logits as the pipeline would announce steps and iterations."""
    state, outs, k = ctrl.stores[STORE], [], 0
    ctrl.begin_run(len(ts), (4, 4))
    state.begin_run()
    for i, (t, reps) in enumerate(zip(ts, counts, strict=True)):
        ctrl.begin_step(i, t)
        for r in range(reps):
            state.begin_iter(r, reps)
            call = _call(ctrl, labels, maps[k].shape)
            outs.append(proc.edit_logits(maps[k], call) if proc.wants(call) else maps[k])
            k += 1
    return outs


def test_filtering_matches_the_formulas_over_a_whole_hourglass_run():
    cfg = ZeroToHeroConfig(msa=False)
    ts = cfg.timesteps()
    counts = cfg.iterations(ts)
    g = torch.Generator().manual_seed(1)
    maps = [torch.randn(2, 3, 16, 16, generator=g) for _ in range(sum(counts))]
    ctrl = Controller()
    proc = ZeroToHeroProcessor(SITE, ctrl, cfg, amf=True, msa=False)
    got, want = _drive(proc, ctrl, maps, ts, counts), _reference(maps, ts, counts, cfg)
    assert len(got) == 66
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # no edits outside [600, 1000]: the very same tensors come back, and nothing is counted there
    k = 0
    for i, (t, reps) in enumerate(zip(ts, counts, strict=True)):
        for _ in range(reps):
            assert (got[k] is maps[k]) == (t < 600)
            k += 1
        assert ((i, SITE.name, "amf") in ctrl.stores[STORE].edits) == (t >= 600)
    # the first map of the run is kept as is (H_T = M~_{T,R} initialisation, no min with nothing)
    assert torch.equal(got[0], maps[0])


def test_history_is_updated_only_on_the_last_resample():
    cfg = ZeroToHeroConfig(msa=False, alpha_c=0.2, alpha_h=0.5)
    ctrl = Controller()
    proc = ZeroToHeroProcessor(SITE, ctrl, cfg, amf=True, msa=False)
    state = ctrl.stores[STORE]
    state.begin_run()
    ctrl.begin_run(2, (4, 4))
    m = [torch.full((1, 1, 2, 2), v) for v in (5.0, 3.0, 4.0, 1.0)]
    ctrl.begin_step(0, 999)
    for r, x in enumerate(m[:3]):
        state.begin_iter(r, 3)
        out = proc.edit_logits(x, _call(ctrl, None, x.shape))
        assert (SITE.name in state.history) == (r == 2)
    assert torch.equal(out, torch.full((1, 1, 2, 2), 3.0))  # min(4, 5, 3); no history to blend yet
    assert torch.equal(state.history[SITE.name], out)  # H_T = M~_{T,R}
    ctrl.begin_step(1, 979)
    state.begin_iter(0, 1)
    out = proc.edit_logits(m[3], _call(ctrl, None, m[3].shape))
    assert torch.allclose(out, torch.full((1, 1, 2, 2), 0.2 * 1.0 + 0.8 * 3.0))
    assert torch.allclose(state.history[SITE.name], 0.5 * out + 0.5 * 3.0)


def test_mean_pooling_and_target_only_rows():
    cfg = ZeroToHeroConfig(msa=False, pooling="mean", filter_rows="target")
    ctrl = Controller()
    proc = ZeroToHeroProcessor(SITE, ctrl, cfg, amf=True, msa=False)
    labels = ("source.cond", "target.cond")
    state = ctrl.stores[STORE]
    state.begin_run()
    ctrl.begin_step(0, 999)
    a, b = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    state.begin_iter(0, 2)
    proc.edit_logits(a, _call(ctrl, labels, a.shape))
    state.begin_iter(1, 2)
    out = proc.edit_logits(b, _call(ctrl, labels, b.shape))
    torch.testing.assert_close(out[1], (a[1] + b[1]) / 2)  # mean of the step's maps so far
    assert torch.equal(out[0], b[0])  # the source row is left as computed


# -- mutual self-attention ------------------------------------------------------------------------
def test_branch_labels_and_pairs_stay_within_each_cfg_half():
    labels = branch_labels(3, cfg=True, source=True)
    assert labels == ("source.uncond", *["target.uncond"] * 3, "source.cond", *["target.cond"] * 3)
    assert source_pairs(labels) == [(1, 0), (2, 0), (3, 0), (5, 4), (6, 4), (7, 4)]
    assert source_pairs(branch_labels(2, cfg=False, source=True)) == [(1, 0), (2, 0)]
    assert source_pairs(branch_labels(2, cfg=True, source=False)) == []
    k, v = torch.randn(4, 2, 5, 3), torch.randn(4, 2, 5, 3)
    k2, v2 = swap_kv(k, v, source_pairs(branch_labels(1, True, True)))
    assert torch.equal(k2[1], k[0]) and torch.equal(k2[3], k[2]) and torch.equal(v2[3], v[2])
    assert torch.equal(k2[0], k[0]) and torch.equal(k2[2], k[2])  # sources untouched
    assert not torch.equal(k2[1], k[1])  # k itself not modified in place
    assert torch.equal(k[1], k[1].clone())


# -- config ----------------------------------------------------------------------------------------
def test_config_defaults_are_the_papers():
    c = ZeroToHeroConfig()
    assert (c.instep_range, c.crossstep_range, c.resample_range) == ((800, 1000), (600, 1000), (800, 1000))
    assert (c.alpha_c, c.alpha_h, c.resample_iterations, c.pooling) == (0.2, 0.5, 5, "min")
    assert c.msa_range == (700, 1000) and ZeroToHeroConfig.zero123_xl().msa_range == (600, 1000)
    assert (c.stage_steps, c.stage_bounds, c.schedule) == ((10, 6, 10), (200, 800), "hourglass")


@pytest.mark.parametrize("change, message", [
    (dict(pooling="max"), r"pooling='max'; use one of \('min', 'mean'\)"),
    (dict(filter_rows="source"), "filter_rows='source'; use one of"),
    (dict(schedule="karras"), "schedule='karras'; use one of"),
    (dict(alpha_c=1.5), r"alpha_c=1.5 must be a weight in \[0, 1\]"),
    (dict(resample_iterations=0), "resample_iterations=0; give R >= 1"),
    (dict(instep_range=(1000, 800)), r"instep_range=\(1000, 800\); give \(lo, hi\)"),
    (dict(msa_res_factors=(0,)), r"msa_res_factors=\(0,\); give downsampling factors >= 1"),
    (dict(amf_layers=Select(resolutions=(16,))), "amf_layers cannot select by resolutions"),
    (dict(schedule="uniform", num_steps=0), "num_steps=0; give 1..1000"),
])
def test_bad_config_values_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        ZeroToHeroConfig(**change)


def test_config_json_round_trip():
    cfg = dataclasses.replace(ZeroToHeroConfig.zero123_xl(), amf_layers=Select(places=("up",)),
                              filter_rows="target", pooling="mean")
    back = config_from_json(config_to_json(cfg))
    assert back == cfg and isinstance(back.msa_range, tuple)
    assert config_from_json(config_to_json(ZeroToHeroConfig())) == ZeroToHeroConfig()
