"""Identity: the core's processors on the 3D world's models, no control active, equal stock output."""

from __future__ import annotations

import pytest
import torch

from attn_processors import Passthrough, apply
from attn_processors.core import ControlledProcessor, build_sites
from worlds.shapes3d.models import build_controlnet, build_t2i_unet, build_zero123_unet


def _inputs(in_channels: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"sample": torch.randn(2, in_channels, 16, 16, generator=g), "timestep": torch.tensor([10, 700]),
            "encoder_hidden_states": torch.randn(2, 1, 128, generator=g)}


@pytest.mark.parametrize("path", ["auto", "explicit"])
@torch.no_grad()
def test_zero123_unet_identity(path):
    torch.manual_seed(0)
    unet = build_zero123_unet().eval()
    kw = _inputs(8)  # noisy latent ++ source latent; one cross-attention token from cc_projection
    ref = unet(**kw).sample
    sites = build_sites(unet)
    with apply(unet, Passthrough(path=path)):
        assert all(isinstance(p, ControlledProcessor) for p in unet.attn_processors.values())
        assert len(unet.attn_processors) == len(sites) > 0
        out = unet(**kw).sample
    assert (out - ref).abs().max().item() <= 1e-5
    assert torch.equal(unet(**kw).sample, ref)  # restored


@pytest.mark.parametrize("path", ["auto", "explicit"])
@torch.no_grad()
def test_depth_controlnet_identity(path):
    torch.manual_seed(0)
    unet = build_t2i_unet().eval()
    cn = build_controlnet(unet).eval()
    kw = _inputs(4)
    kw["encoder_hidden_states"] = torch.randn(2, 16, 128, generator=torch.Generator().manual_seed(1))
    cond = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))

    def run() -> torch.Tensor:
        down, mid = cn(**kw, controlnet_cond=cond, return_dict=False)
        return unet(**kw, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample

    ref = run()
    with apply(unet, Passthrough(path=path)), apply(cn, Passthrough(path=path)):
        out = run()
    assert (out - ref).abs().max().item() <= 1e-5
    assert torch.equal(run(), ref)
