"""Style processors on tiny UNets: identity with the control off (self and cross-attention), each mode's
default layers on SD1.5 / SDXL (real sizes on `meta`, tiny configs) and on the shapes model, no
dropped kwargs, determinism, only the output rows change, stage 2 through the processor, config JSON."""

from __future__ import annotations

import logging

import pytest
import torch

from attn_processors.core import (
    Controller,
    Select,
    apply,
    build_sites,
    config_from_json,
    config_to_json,
    stock_processors,
)
from attn_processors.style import (
    FUSE,
    STORE,
    SWAP,
    StyleConfig,
    StyleProcessor,
    StyleState,
    default_sites,
    row_labels,
)
from attn_processors.testing.real_configs import real_denoiser
from attn_processors.testing.tiny import denoiser_inputs, tiny_denoiser

ROLES = ("out", "content", "edges", "style")


@pytest.fixture(scope="module")
def unet():
    return tiny_denoiser("sd15")


def _inputs(unet, rows: int, seed: int = 1, same: tuple[int, int] | None = None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, 16, 16, generator=g)
    if same is not None:
        x[same[0]] = x[same[1]]
    emb = torch.randn(1, 8, unet.config.cross_attention_dim, generator=g).expand(rows, -1, -1)
    return x, emb


def _drive(ctrl: Controller, step: int, mode: str, labels, num_steps: int = 10) -> None:
    ctrl.begin_run(num_steps=num_steps, latent_hw=(16, 16))
    ctrl.begin_step(step, 1000 - 100 * step)
    ctrl.set_branch(labels)
    ctrl.mode = mode


@torch.no_grad()
def _forward(unet, x, emb):
    return unet(x, 500, encoder_hidden_states=emb).sample


@torch.no_grad()
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("off", ["plain pass", "outside steps", "no output row"])
def test_identity_with_the_control_off_on_every_self_and_cross_layer(family, off):
    model = tiny_denoiser(family)
    kw = denoiser_inputs(family, model)
    stock = model(**kw)[0]
    ctrl = Controller()
    sites = build_sites(model)
    assert {s.kind for s in sites} == {"self", "cross"}
    model.set_attn_processor({s.key: StyleProcessor(s, ctrl, StyleConfig(mode="illusign")) for s in sites})
    rows = kw["sample"].shape[0]
    labels = row_labels([ROLES])[:rows] if off != "no output row" else ("content.0",) * rows
    ctrl.begin_run(num_steps=10, latent_hw=tuple(kw["sample"].shape[-2:]))
    ctrl.begin_step(0 if off == "outside steps" else 5, 500)
    ctrl.set_branch(labels)
    ctrl.mode = "plain" if off == "plain pass" else SWAP
    try:
        out = model(**kw)[0]
    finally:
        model.set_attn_processor(stock_processors(model))
    torch.testing.assert_close(out, stock, atol=1e-5, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["illusign", "style_id", "kv_swap", "style_aligned"])
def test_only_the_output_row_changes_and_runs_are_deterministic(unet, mode):
    x, emb = _inputs(unet, 4)
    stock = _forward(unet, x, emb)
    cfg = StyleConfig(mode=mode, layers=Select(kinds=("self",)))
    runs = []
    for _ in range(2):
        ctrl = Controller()
        with apply(unet, cfg, controller=ctrl):
            _drive(ctrl, 5, SWAP, row_labels([ROLES]))
            runs.append(_forward(unet, x, emb))
        n_self = sum(s.kind == "self" for s in build_sites(unet))
        assert sum(ctrl.stores[STORE].edits.values()) == n_self == 4  # one edit per self-attention layer
        assert ctrl.stats["style.path.explicit"] + ctrl.stats["style.path.sdpa"] == n_self
    assert torch.equal(runs[0], runs[1])  # same inputs -> bit-identical
    torch.testing.assert_close(runs[0][1:], stock[1:], atol=1e-5, rtol=0)  # donors keep their eps
    assert (runs[0][0] - stock[0]).abs().max() > 1e-3


@torch.no_grad()
def test_refresh_step_makes_the_output_follow_the_edges_row(unet):
    x, emb = _inputs(unet, 4, same=(0, 1))  # output row == content row, so only attention differs
    ctrl = Controller()
    with apply(unet, StyleConfig(layers=Select(kinds=("self",))), controller=ctrl):
        _drive(ctrl, 5, SWAP, row_labels([ROLES]), num_steps=20)  # 5 % 5 == 0 and 5 < 0.4 * 20: refresh
        ctrl.stores[STORE].edits.clear()
        refreshed = _forward(unet, x, emb)
        assert {w for (_, _, w) in ctrl.stores[STORE].edits} == {"refresh"}
        _drive(ctrl, 6, SWAP, row_labels([ROLES]), num_steps=20)  # 6 % 5 != 0: the swap
        swapped = _forward(unet, x, emb)
    assert not torch.allclose(refreshed[0], swapped[0], atol=1e-4)
    assert not torch.allclose(refreshed[0], refreshed[1], atol=1e-4)  # no longer the content's output


def test_missing_donor_rows_raise_naming_them(unet):
    x, emb = _inputs(unet, 2)
    ctrl = Controller()
    with apply(unet, StyleConfig(mode="illusign", refresh_every=0), controller=ctrl):
        _drive(ctrl, 5, SWAP, ("out.0", "style.0"))
        with pytest.raises(ValueError, match=r"needs rows \['content.0', 'edges.0'\]"):
            _forward(unet, x, emb)


SD15_UP = "up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1"


def _names(model, mode):
    return sorted(s.name for s in default_sites(mode, build_sites(model)))


def test_default_layers_on_real_sd15_and_sdxl_sizes():
    with torch.device("meta"):
        sd15, sdxl = real_denoiser("sd15"), real_denoiser("sdxl")
    assert _names(sd15, "illusign") == sorted(SD15_UP.format(b=3, a=a) for a in range(3))
    masa = sorted(SD15_UP.format(b=b, a=a) for b in (2, 3) for a in range(3))
    assert _names(sd15, "style_id") == _names(sd15, "kv_swap") == masa
    every_self = [s.name for s in build_sites(sd15) if s.name.endswith("attn1")]
    assert _names(sd15, "style_aligned") == sorted(every_self) and len(every_self) == 16
    # SDXL: up_blocks.2 has no attention, so the highest decoder resolution is up_blocks.1
    xl = _names(sdxl, "illusign")
    assert xl and all(n.startswith("up_blocks.1.") and n.endswith("attn1") for n in xl) and len(xl) == 6
    assert {n.split(".")[1] for n in _names(sdxl, "kv_swap")} == {"0", "1"}
    with apply(sd15, StyleConfig(), controller=Controller()):
        installed = sorted(k.removesuffix(".processor") for k, p in sd15.attn_processors.items()
                           if isinstance(p, StyleProcessor))
    assert installed == _names(sd15, "illusign")
    assert not any(isinstance(p, StyleProcessor) for p in sd15.attn_processors.values())  # restored


def test_default_layers_resolve_on_tiny_sdxl_and_by_name():
    xl = tiny_denoiser("sdxl")
    names = _names(xl, "illusign")
    assert names and all(n.startswith("up_blocks.0.") and n.endswith("attn1") for n in names)
    cfg = StyleConfig(layers=Select(names=("up_blocks.0.attentions.0.*attn1",)))
    with apply(xl, cfg, controller=Controller()):
        got = [k for k, p in xl.attn_processors.items() if isinstance(p, StyleProcessor)]
    assert got and all(k.startswith("up_blocks.0.attentions.0.") and "attn1" in k for k in got)
    with pytest.raises(ValueError, match="picks no self-attention layer"):
        with apply(xl, StyleConfig(layers=Select(kinds=("cross",))), controller=Controller()):
            pass


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@torch.no_grad()
def test_no_kwarg_warning_for_our_calls_and_a_misnamed_kwarg_warns(unet):
    """State lives on the controller; Diffusers still warns about a kwarg nobody names."""
    x, emb = _inputs(unet, 4)
    cap, logger = _Capture(), logging.getLogger("diffusers")
    logger.addHandler(cap)
    try:
        ctrl = Controller()
        with apply(unet, StyleConfig(layers=Select(kinds=("self",))), controller=ctrl):
            _drive(ctrl, 5, SWAP, row_labels([ROLES]))
            _forward(unet, x, emb)
            assert not [m for m in cap.messages if "are not expected by" in m]
            unet(x, 500, encoder_hidden_states=emb, cross_attention_kwargs={"perform_swap": True})
        assert any("perform_swap" in m and "StyleProcessor" in m for m in cap.messages)
    finally:
        logger.removeHandler(cap)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["query", "mean"])
def test_stage2_through_the_processor(unet, mode):
    """m = 0 gives the start-only output, m = 1 ('query') the end-only one; donors are untouched."""
    x, emb = _inputs(unet, 4)
    labels = row_labels([("out", "q1", "q2", "style")])

    def run(stage2: str, mask: float | None):
        ctrl = Controller()
        state = ctrl.stores.setdefault(STORE, StyleState())
        state.begin_run(None if mask is None else torch.full((1, 5, 5), mask))
        with apply(unet, StyleConfig(stage2=stage2, layers=Select(kinds=("self",))), controller=ctrl):
            _drive(ctrl, 5, FUSE, labels)
            return _forward(unet, x, emb)

    start, end = run("start", None), run("end", None)
    assert not torch.allclose(start[0], end[0], atol=1e-4)
    zero, one = run(mode, 0.0), run(mode, 1.0)
    if mode == "query":
        assert torch.equal(zero, start) and torch.equal(one, end)
    else:
        torch.testing.assert_close(zero, start, atol=1e-5, rtol=0)
    torch.testing.assert_close(run(mode, None)[1:], start[1:], atol=1e-5, rtol=0)


def test_config_round_trips_and_bad_values_raise():
    cfg = StyleConfig(mode="style_id", layers=Select(names=("up_blocks.2.*attn1",)), w_img=0.3,
                      steps=(0.0, 0.5), contrast_mode="reference_quirk", stage2="max", tau_sim=None)
    assert config_from_json(config_to_json(cfg)) == cfg
    assert StyleConfig(steps=[0.1, 0.9]).steps == (0.1, 0.9)
    for bad, match in ((dict(mode="masactrl"), "mode='masactrl'"), (dict(steps=(0.5, 0.2)), "steps="),
                       (dict(temperature=0.0), "temperature"), (dict(contrast_mode="rows"), "contrast_mode"),
                       (dict(stage2="blend"), "stage2"), (dict(layers="up_blocks.3"), "give a Select"),
                       (dict(skip=1.0), "skip=1.0"), (dict(adain_qk=True), "style_aligned' only")):
        with pytest.raises(ValueError, match=match):
            StyleConfig(**bad)
