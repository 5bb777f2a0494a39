"""Identity: our processors on every attention layer, no control active, equal stock to 1e-5 (fp32)."""

import pytest
import torch

from attn_processors import Passthrough, apply
from attn_processors.core import ControlledProcessor, build_sites
from attn_processors.testing.tiny import denoiser_inputs, tiny_denoiser

FAMILIES = ["sd15", "sdxl", "sd3", "cogvideox", "wan", "wan_i2v", "flux"]
EXPECTED_FAMILY = {
    "sd15": "unet",
    "sdxl": "unet",
    "sd3": "sd3",
    "cogvideox": "cogvideox",
    "wan": "wan",
    "wan_i2v": "wan",
    "flux": "flux",
}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("path", ["auto", "explicit"])
@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_identity_whole_model(family, path):
    model = tiny_denoiser(family)
    kw = denoiser_inputs(family, model)
    ref = _first(model(**kw))
    sites = build_sites(model)
    assert {s.family for s in sites} == {EXPECTED_FAMILY[family]}
    with apply(model, Passthrough(path=path)):
        procs = list(model.attn_processors.values())
        assert len(procs) == len(sites) and all(isinstance(p, ControlledProcessor) for p in procs)
        out = _first(model(**kw))
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item()
    assert err <= 1e-5, f"{family}/{path}: max |ours - stock| = {err}"
    if path == "auto":
        assert err == 0.0  # the fast path is the stock kernel call on the same tensors
    assert torch.equal(_first(model(**kw)), ref)  # restored: bit-identical to before


@pytest.mark.parametrize("family", ["sd15", "wan", "flux"])
@torch.no_grad()
def test_identity_set_attn_processor_directly(family):
    """Processor classes work with model.set_attn_processor(...) without apply()."""
    from attn_processors import Controller

    model = tiny_denoiser(family)
    kw = denoiser_inputs(family, model)
    ref = _first(model(**kw))
    stock = model.attn_processors
    ctrl = Controller()
    model.set_attn_processor(
        {s.key: ControlledProcessor(s, ctrl, path="explicit") for s in build_sites(model)}
    )
    out = _first(model(**kw))
    model.set_attn_processor(dict(stock))
    assert (out - ref).abs().max().item() <= 1e-5
