"""Zero-to-Hero processors on UNets: the SD-size Zero-1-to-3 layer selection (on `meta`), and mutual
self-attention on the tiny Zero-1-to-3 UNet: identical source/target rows give the output without it,
only the listed layers and steps change, and each target row attends to its own CFG half's source."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from attn_processors.core import ControlledProcessor, Controller, Select, apply, build_sites, processors_for
from attn_processors.testing.tiny_zero123 import tiny_zero123_parts, zero123_unet
from attn_processors.zero_to_hero import (
    ZeroToHeroConfig,
    ZeroToHeroProcessor,
    amf_sites,
    branch_labels,
    msa_sites,
    source_pairs,
)

MSA_LAYERS = [f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1" for b in (2, 3) for a in range(3)]


@pytest.fixture(scope="module")
def unet():
    return tiny_zero123_parts()["unet"]


def test_sd_size_zero123_selects_the_papers_layers_on_meta():
    with torch.device("meta"):
        big = zero123_unet("sd")
    assert big.config.in_channels == 8 and big.config.cross_attention_dim == 768
    sites = build_sites(big)
    cfg = ZeroToHeroConfig()
    assert [s.name for s in msa_sites(sites, cfg.msa_res_factors)] == MSA_LAYERS  # decoder 16x16 + 32x32
    amf = [s.name for s in amf_sites(sites, cfg)]
    assert len(amf) == 16 and all(n.endswith("attn1") for n in amf)  # every self-attention layer
    with apply(big, cfg, controller=Controller()):
        procs = {k.removesuffix(".processor"): p for k, p in big.attn_processors.items()
                 if isinstance(p, ZeroToHeroProcessor)}
        assert sorted(procs) == sorted(amf)
        assert sorted(n for n, p in procs.items() if p.msa) == sorted(MSA_LAYERS)
        assert all(p.amf for p in procs.values())
    assert not any(isinstance(p, ZeroToHeroProcessor) for p in big.attn_processors.values())  # restored


def test_unet_without_the_layers_gets_a_clear_error(unet):
    with pytest.raises(ValueError, match=r"msa_res_factors=\(16,\): this UNet has decoder self-attention at"):
        with apply(unet, ZeroToHeroConfig(msa_res_factors=(16,)), controller=Controller()):
            pass


def _inputs(seed: int, same_source_target: bool):
    """[src_u, tgt_u, src_c, tgt_c] UNet inputs: uncond rows zeroed as the pipeline does."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 4, 8, 8, generator=g)  # (source, target)
    cond_latent = torch.randn(1, 4, 8, 8, generator=g).expand(2, -1, -1, -1)
    tokens = torch.randn(2, 1, 32, generator=g)  # (source pose, target pose)
    if same_source_target:
        z, tokens = z[:1].expand(2, -1, -1, -1), tokens[:1].expand(2, -1, -1)
    sample = torch.cat([torch.cat([z, torch.zeros_like(cond_latent)], 1), torch.cat([z, cond_latent], 1)])
    ehs = torch.cat([torch.zeros_like(tokens), tokens])
    return sample, ehs


def _run(unet, sample, ehs, t, cfg=None, capture=False):
    ctrl, seen = Controller(), {}
    hooks = []
    if capture:
        for name, mod in unet.named_modules():
            if isinstance(mod, Attention) and name.endswith("attn1"):
                hooks.append(mod.register_forward_hook(
                    lambda m, a, kw, out, name=name: seen.__setitem__(name, (a[0], out)), with_kwargs=True))
    try:
        ctrl.begin_run(1, (8, 8))
        ctrl.begin_step(0, t)
        ctrl.set_branch(branch_labels(1, cfg=True, source=True))
        if cfg is None:
            out = unet(sample, t, encoder_hidden_states=ehs).sample
        else:
            with apply(unet, cfg, controller=ctrl):
                out = unet(sample, t, encoder_hidden_states=ehs).sample
    finally:
        for h in hooks:
            h.remove()
    return out, seen, ctrl


MSA_ONLY = ZeroToHeroConfig(amf=False)


@torch.no_grad()
def test_cross_attention_has_one_key_so_its_probabilities_are_all_one(unet):
    """Why every intervention targets self-attention (§4.1): softmax over the single pose token is 1."""
    seen = []

    class Probe(ControlledProcessor):
        def edit_probs(self, probs, call):  # [B, H, Nq, 1] fp32
            seen.append(probs)
            return probs

    ctrl = Controller()
    before = unet.attn_processors
    unet.set_attn_processor(processors_for(unet, lambda s: Probe(s, ctrl), Select(kinds=("cross",))))
    try:
        sample, ehs = _inputs(2, same_source_target=False)
        unet(sample, 900, encoder_hidden_states=ehs)
    finally:
        unet.set_attn_processor(before)
    assert len(seen) == 10 and all(p.shape[-1] == 1 and torch.equal(p, torch.ones_like(p)) for p in seen)


@torch.no_grad()
def test_identical_source_and_target_give_the_output_without_mutual_attention(unet):
    sample, ehs = _inputs(0, same_source_target=True)
    plain, _, _ = _run(unet, sample, ehs, 900)
    msa, _, ctrl = _run(unet, sample, ehs, 900, MSA_ONLY)
    torch.testing.assert_close(msa, plain, atol=1e-5, rtol=0)
    assert {layer for (_, layer, what) in ctrl.stores["zero_to_hero"].edits} == set(
        s.name for s in msa_sites(build_sites(unet), (1, 2)))


def _attend(attn: Attention, h: torch.Tensor, pairs) -> torch.Tensor:
    """Direct attention of one self-attention module on its input h (B, N, C), target rows taking the
    K/V of the paired source rows."""
    b, n, _ = h.shape
    q, k, v = (f(h).view(b, n, attn.heads, -1).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
    k, v = k.clone(), v.clone()
    for tgt, src in pairs:
        k[tgt], v[tgt] = k[src], v[src]
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)  # (B, N, C)
    return attn.to_out[1](attn.to_out[0](o))


@torch.no_grad()
@pytest.mark.parametrize("t, active", [(900, True), (500, False)])
def test_only_listed_layers_and_steps_change_and_cfg_halves_never_mix(unet, t, active):
    sample, ehs = _inputs(1, same_source_target=False)
    _, seen, ctrl = _run(unet, sample, ehs, t, MSA_ONLY, capture=True)
    pairs = source_pairs(branch_labels(1, cfg=True, source=True))
    assert pairs == [(1, 0), (3, 2)]  # target uncond <- source uncond, target cond <- source cond
    listed = {s.name for s in msa_sites(build_sites(unet), (1, 2))}
    assert listed == {n for n in MSA_LAYERS if "attentions.2" not in n}  # tiny UNet: 2 attentions per block
    assert len(seen) == 10  # every self-attention layer was checked
    for name, (h, out) in seen.items():
        attn = unet.get_submodule(name)
        swapped = name in listed and active
        torch.testing.assert_close(out, _attend(attn, h, pairs if swapped else []), atol=1e-5, rtol=0)
        if swapped:  # the halves matter: the other half's source gives a different answer
            crossed = _attend(attn, h, [(1, 2), (3, 0)])
            assert (out[[1, 3]] - crossed[[1, 3]]).abs().max() > 1e-4
    assert bool(ctrl.stores["zero_to_hero"].edits) == active
    assert not ctrl.stats.get("z2h.path.explicit")  # mutual attention alone stays on SDPA
