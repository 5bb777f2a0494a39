"""Maths of the cross-attention probe, the grounding loss and the localisation measure."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from worlds.shapes.attention_check import (
    MapAccumulator,
    colour_position,
    cross_attention_names,
    grounding_loss,
    install_probes,
    restore,
    shape_position,
    word_localisation,
)
from worlds.shapes.models import build_text_encoder, build_unet
from worlds.shapes.tokenizer import build_tokenizer


def test_token_positions_match_the_tokenizer():
    tok = build_tokenizer()
    toks = tok.convert_ids_to_tokens(tok("a red circle, a blue square and a yellow triangle").input_ids)
    assert [toks[colour_position(j)] for j in range(3)] == ["red</w>", "blue</w>", "yellow</w>"]
    assert [toks[shape_position(j)] for j in range(3)] == ["circle</w>", "square</w>", "triangle</w>"]


def _probs(maps_16):
    """(B, 16*16) map for every token slot of a 16-token text -> (B, 256, 16) probabilities."""
    p = torch.full((maps_16.shape[0], 256, 16), 1e-6)
    for pos in (colour_position(0), shape_position(0)):
        p[:, :, pos] = maps_16
    return p


def test_grounding_loss_values():
    mask = torch.zeros(1, 3, 16, 16)
    mask[0, 0, 4:8, 4:8] = 1.0  # object 0 covers 16 of 256 cells
    valid = torch.tensor([[True, False, False]])
    inside = mask[0, 0].flatten().clone()
    assert grounding_loss([_probs(inside[None])], mask, valid).item() == pytest.approx(0.0, abs=1e-4)
    uniform = torch.ones(1, 256)
    # mass inside = area share 1/16 -> (1 - 1/16)^2
    assert grounding_loss([_probs(uniform)], mask, valid).item() == pytest.approx((15 / 16) ** 2, rel=1e-3)
    assert grounding_loss([_probs(uniform)], mask, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


def test_localisation_measure():
    box = torch.tensor([0.0, 0.0, 0.25, 0.25])  # area share 1/16 at 64x64
    flat = torch.ones(64, 64)
    ratio, _ = word_localisation(flat, box)
    assert ratio == pytest.approx(1.0)
    peaked = torch.ones(64, 64)
    peaked[:16, :16] = 3.0
    ratio, peak = word_localisation(peaked, box)
    assert ratio == pytest.approx(3 * 16 / (3 + 15)) and peak
    with pytest.raises(ValueError, match="covers no pixel"):
        word_localisation(flat, torch.tensor([0.5, 0.5, 0.501, 0.501]))


def test_probe_matches_stock_attention_and_restores():
    torch.manual_seed(0)
    tok = build_tokenizer()
    unet, te = build_unet().eval(), build_text_encoder(tok).eval()
    unet.set_attn_processor(AttnProcessor())
    ids = tok(["a red circle and a blue square"], padding="max_length", max_length=16,
              return_tensors="pt").input_ids
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    with torch.no_grad():
        text = te(ids)[0]
        ref = unet(x, t, text).sample
        acc = MapAccumulator(cond_half=False)
        previous = install_probes(unet, acc)
        got = unet(x, t, text).sample
        restore(unet, previous)
        again = unet(x, t, text).sample
    assert torch.allclose(got, ref, atol=1e-5) and torch.equal(again, ref)
    names = cross_attention_names(unet)
    assert len(names) == 7 and len(acc.maps) == 7
    resolutions = sorted({m.shape[1] for m in acc.maps.values()})
    assert resolutions == [16, 64, 256]  # attn2 at 4x4, 8x8 and 16x16
    for m in acc.maps.values():
        assert torch.allclose(m.sum(-1), torch.ones_like(m.sum(-1)), atol=1e-5)  # softmax over tokens
