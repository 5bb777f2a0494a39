"""Layer sites and selection: real-size names on the meta device, resolutions, bad input."""

from dataclasses import dataclass

import pytest
import torch

from attn_processors.core import ControlledProcessor, Select, apply, build_sites, register_technique, select
from attn_processors.testing.real_configs import real_denoiser
from attn_processors.testing.tiny import tiny_denoiser


@pytest.fixture(scope="module")
def sd15_meta():
    with torch.device("meta"):
        return real_denoiser("sd15")


def test_sd15_512px_up_blocks_1_self_attention_at_16x16(sd15_meta):
    chosen = select(
        sd15_meta, Select(names=("up_blocks.1.*",), kinds=("self",), resolutions=(16,)), latent_hw=(64, 64)
    )
    assert [s.name for s in chosen] == [
        f"up_blocks.1.attentions.{j}.transformer_blocks.0.attn1" for j in range(3)
    ]
    assert all(s.resolution((64, 64)) == (16, 16) and s.place == "up" and s.block == 1 for s in chosen)


def test_sd15_512px_nine_decoder_self_attention_layers(sd15_meta):
    chosen = select(sd15_meta, Select(places=("up",), kinds=("self",)), latent_hw=(64, 64))
    res = [s.resolution((64, 64))[0] for s in chosen]
    assert len(chosen) == 9 and sorted(res) == [16] * 3 + [32] * 3 + [64] * 3
    # the same layers by resolution alone
    assert (
        select(
            sd15_meta, Select(places=("up",), kinds=("self",), resolutions=(16, 32, 64)), latent_hw=(64, 64)
        )
        == chosen
    )


def test_sd15_resolution_map_and_counts(sd15_meta):
    sites = build_sites(sd15_meta)
    assert len(sites) == 32 and sum(s.kind == "cross" for s in sites) == 16
    by_block = {(s.place, s.block): s.resolution((64, 64)) for s in sites}
    assert by_block == {
        ("down", 0): (64, 64),
        ("down", 1): (32, 32),
        ("down", 2): (16, 16),
        ("mid", 0): (8, 8),
        ("up", 1): (16, 16),
        ("up", 2): (32, 32),
        ("up", 3): (64, 64),
    }


def test_non_square_latent_resolution(sd15_meta):
    """768x512 px -> latent 96x64: the 4x layers are 24x16; an int resolution matches the shorter side."""
    chosen = select(sd15_meta, Select(resolutions=(16,)), latent_hw=(96, 64))
    assert {s.resolution((96, 64)) for s in chosen} == {(24, 16)}
    assert select(sd15_meta, Select(resolutions=((24, 16),)), latent_hw=(96, 64)) == chosen
    # odd latent: stride-2 convs round up
    assert chosen[0].resolution((63, 65)) == (16, 17)


@pytest.mark.parametrize(
    "name,count,family",
    [
        ("sdxl", 140, "unet"),
        ("wan2.1-1.3b", 60, "wan"),
        ("cogvideox-2b", 30, "cogvideox"),
        ("flux-dev", 57, "flux"),
    ],
)
def test_real_size_counts_match_stock(name, count, family):
    with torch.device("meta"):
        model = real_denoiser(name)
    sites = build_sites(model)
    assert len(sites) == len(model.attn_processors) == count
    assert [s.key for s in sites] == list(model.attn_processors)
    assert {s.family for s in sites} == {family}
    if family == "flux":
        assert sum(s.place == "single" for s in sites) == 38 and sum(s.place == "block" for s in sites) == 19
    if family == "wan":
        assert sum(s.kind == "cross" for s in sites) == 30 and max(s.block for s in sites) == 29


log = []


class _Shapes(ControlledProcessor):
    def wants(self, call):
        log.append((self.site.name, call.hw, call.q_len, call.labels))
        return False


@dataclass(frozen=True)
class _ShapesConfig:
    layers: Select = Select(kinds=("self",))


register_technique(_ShapesConfig)(lambda cfg, sites, ctrl: {s.name: _Shapes(s, ctrl) for s in sites})


def test_meta_forward_sees_16x16_in_up_blocks_1(sd15_meta):
    """A 512 px CFG batch through our processors on meta: call geometry agrees with the sites."""
    log.clear()
    with torch.device("meta"), apply(sd15_meta, _ShapesConfig()) as ctrl:
        ctrl.set_branch(("uncond", "cond"))
        sd15_meta(torch.randn(2, 4, 64, 64), torch.tensor([999, 999]), torch.randn(2, 77, 768))
    assert len(log) == 16
    up1 = [(hw, n, lab) for name, hw, n, lab in log if name.startswith("up_blocks.1.")]
    assert up1 == [((16, 16), 256, ("uncond", "cond"))] * 3
    assert all(hw[0] * hw[1] == n for _, hw, n, _ in log)


def test_selector_matching_nothing_lists_names():
    model = tiny_denoiser("sd15")
    with pytest.raises(ValueError, match=r"matches none.*down_blocks\.0\.attentions\.0"):
        select(model, Select(names=("nonexistent.*",)))
    with pytest.raises(ValueError, match="latent_hw"):
        select(model, Select(resolutions=(16,)))
    with pytest.raises(ValueError, match="kinds"):
        Select(kinds=("selfish",))
    with pytest.raises(ValueError, match="tuple"):
        Select(names="up_blocks.*")


def test_unknown_attention_processor_class_is_named():
    class MyOddProcessor:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
            return hidden_states

    model = tiny_denoiser("sd15")
    model.down_blocks[0].attentions[0].transformer_blocks[0].attn1.set_processor(MyOddProcessor())
    with pytest.raises(ValueError, match="MyOddProcessor"):
        build_sites(model)


def test_unknown_attention_module_class_is_named():
    from diffusers.models.attention_processor import AttnProcessor2_0

    class WeirdAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.processor = AttnProcessor2_0()

        def get_processor(self):
            return self.processor

    model = tiny_denoiser("sd15")
    model.down_blocks[0].attentions[0].transformer_blocks[0].attn1 = WeirdAttention()
    with pytest.raises(ValueError, match="WeirdAttention"):
        build_sites(model)
