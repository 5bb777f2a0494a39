"""Install/restore, composition of two techniques on one layer, registry JSON, kwarg filter warnings."""

import logging
from dataclasses import dataclass

import pytest
import torch

from attn_processors.core import (
    ComposedProcessor,
    ControlledProcessor,
    Passthrough,
    Select,
    apply,
    config_from_json,
    config_to_json,
    register_json_type,
    register_technique,
    sdpa,
)
from attn_processors.testing.tiny import denoiser_inputs, tiny_denoiser


def _types(model):
    return {k: type(v) for k, v in model.attn_processors.items()}


@pytest.fixture
def sd15():
    model = tiny_denoiser("sd15")
    return model, denoiser_inputs("sd15", model)


# -- small techniques used to test composition ------------------------------------------------------
class _ScaleQ(ControlledProcessor):
    factor = 2.0

    def edit_qkv(self, q, k, v, call):
        return q * self.factor, k, v


class _Temperature(ControlledProcessor):
    def edit_logits(self, logits, call):
        return logits / 2.0


class _KernelA(ControlledProcessor):
    def kernel(self, call):
        return sdpa


class _KernelB(_KernelA):
    pass


@dataclass(frozen=True)
class _Cfg:
    which: str = "scale"
    layers: Select = Select(kinds=("self",))


_CLASSES = {"scale": _ScaleQ, "temp": _Temperature, "ka": _KernelA, "kb": _KernelB}
register_technique(_Cfg)(lambda cfg, sites, ctrl: {s.name: _CLASSES[cfg.which](s, ctrl) for s in sites})


@torch.no_grad()
def test_restore_after_normal_exit_and_exception(sd15):
    model, kw = sd15
    before_objs = dict(model.attn_processors)
    before_types = _types(model)
    ref = model(**kw)[0]
    with apply(model, _Cfg("scale")):
        changed = model(**kw)[0]
    assert _types(model) == before_types
    assert all(model.attn_processors[k] is p for k, p in before_objs.items())  # the exact objects
    assert torch.equal(model(**kw)[0], ref)
    assert not torch.allclose(changed, ref)  # the technique did act
    with pytest.raises(RuntimeError, match="boom"), apply(model, _Cfg("temp")):
        model(**kw)
        raise RuntimeError("boom")
    assert _types(model) == before_types and torch.equal(model(**kw)[0], ref)


@torch.no_grad()
def test_only_selected_layers_change(sd15):
    model, _ = sd15
    with apply(model, _Cfg("scale", Select(kinds=("cross",)))):
        procs = model.attn_processors
        assert all(isinstance(p, _ScaleQ) == k.endswith("attn2.processor") for k, p in procs.items())


@torch.no_grad()
def test_compose_qkv_edit_with_logits_edit_matches_manual(sd15):
    """Composition rule: edits run in install order; nested apply composes with the outer layer."""
    model, kw = sd15

    class _Both(_ScaleQ):
        def edit_logits(self, logits, call):
            return logits / 2.0

    @dataclass(frozen=True)
    class _BothCfg:
        layers: Select = Select(kinds=("self",))

    register_technique(_BothCfg)(lambda cfg, sites, ctrl: {s.name: _Both(s, ctrl) for s in sites})
    with apply(model, _BothCfg()):
        want = model(**kw)[0]
    with apply(model, _Cfg("scale"), _Cfg("temp")):
        assert all(isinstance(p, ComposedProcessor) for k, p in model.attn_processors.items() if "attn1" in k)
        got = model(**kw)[0]
    with apply(model, _Cfg("scale")), apply(model, _Cfg("temp")):
        nested = model(**kw)[0]
    assert (got - want).abs().max() < 1e-5 and (nested - want).abs().max() < 1e-5


def test_two_kernel_choosers_raise_with_the_fix(sd15):
    model, _ = sd15
    with pytest.raises(ValueError, match=r"choose the attention kernel.*TileSparseConfig\(kernel=SageConfig"):
        with apply(model, _Cfg("ka"), _Cfg("kb")):
            pass
    assert all(not isinstance(p, ControlledProcessor) for p in model.attn_processors.values())
    with apply(model, _Cfg("ka"), _Cfg("kb", Select(kinds=("cross",)))):  # disjoint layers: fine
        pass


class _CountingKernel(ControlledProcessor):
    """Chooses a kernel that counts its calls (an exact SDPA, so outputs equal the stock ones)."""

    stats_key = "counting"

    def kernel(self, call):
        def attend(q, k, v, *, mask=None, scale=None):
            call.controller.stats["counting.ran"] += 1
            return sdpa(q, k, v, mask=mask, scale=scale)

        return attend


class _FirstStepTemperature(_Temperature):
    """A logits editor that wants step 0 only."""

    stats_key = "temperature"

    def wants(self, call):
        return call.step == 0


@torch.no_grad()
def test_kernel_and_score_editor_compose_per_call(sd15):
    """Per call: the calls an editor wants take the explicit path with its edits, the rest the kernel."""
    from attn_processors.core import Controller

    model, kw = sd15
    classes = {"count": _CountingKernel, "temp0": _FirstStepTemperature}
    register_technique(_PerCallCfg)(
        lambda cfg, sites, ctrl: {s.name: classes[cfg.which](s, ctrl) for s in sites})
    n_self = sum(k.endswith("attn1.processor") for k in model.attn_processors)
    outs = {}
    cases = {"temp": [_PerCallCfg("temp0")], "both": [_PerCallCfg("count"), _PerCallCfg("temp0")]}
    for name, configs in cases.items():
        ctrl = Controller()
        with apply(model, *configs, controller=ctrl):
            for step in (0, 1):
                ctrl.begin_step(step, 999 - step)
                outs[name, step] = model(**kw)[0]
        outs[name] = dict(ctrl.stats)
    stock = model(**kw)[0]
    assert torch.equal(outs["both", 0], outs["temp", 0])  # step 0: the editor's explicit path
    assert not torch.allclose(outs["both", 0], stock)
    torch.testing.assert_close(outs["both", 1], stock, atol=1e-5, rtol=0)  # step 1: the (exact) kernel
    assert outs["both"] == {"counting.ran": n_self, "counting.path.kernel": n_self,
                            "counting.path.explicit": n_self, "temperature.path.explicit": n_self,
                            "temperature.path.stock": n_self}


@dataclass(frozen=True)
class _PerCallCfg:
    which: str = "count"
    layers: Select = Select(kinds=("self",))


def test_unregistered_config_and_empty_apply(sd15):
    model, _ = sd15

    @dataclass(frozen=True)
    class NotRegistered:
        x: int = 1

    with pytest.raises(ValueError, match="NotRegistered is not a registered"), apply(model, NotRegistered()):
        pass
    with pytest.raises(ValueError, match="at least one"), apply(model):
        pass


def test_pipeline_denoisers_only(tiny_pipe_cache):
    pipe = tiny_pipe_cache("sd15")
    vae_before = dict(pipe.vae.attn_processors)
    with apply(pipe, Passthrough()):
        assert all(isinstance(p, ControlledProcessor) for p in pipe.unet.attn_processors.values())
        assert pipe.vae.attn_processors == vae_before
    with apply(pipe, Passthrough(), models=("vae",)):  # only when asked
        assert all(isinstance(p, ControlledProcessor) for p in pipe.vae.attn_processors.values())
    assert pipe.vae.attn_processors == vae_before


@register_json_type
@dataclass(frozen=True)
class _Box:
    label: str
    xyxy: tuple[float, float, float, float]


@dataclass(frozen=True)
class _Nested:
    boxes: tuple[_Box, ...] = ()
    weights: tuple[float, ...] = (1.0, 0.5)
    layers: Select = Select(names=("up_blocks.1.*",), kinds=("cross",), resolutions=(16, (24, 16)))
    mode: str = "soft"


register_technique(_Nested)(lambda cfg, sites, ctrl: {})


def test_config_json_round_trip():
    cfg = _Nested(boxes=(_Box("cat", (0.1, 0.2, 0.5, 0.9)),))
    text = config_to_json(cfg)
    assert config_from_json(text) == cfg
    assert config_from_json(config_to_json(Passthrough(path="explicit"))) == Passthrough(path="explicit")
    with pytest.raises(ValueError, match="unknown config type"):
        config_from_json('{"__type__": "Nope"}')


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@torch.no_grad()
@pytest.mark.parametrize("family", ["sd15", "flux", "cogvideox"])
def test_no_kwarg_filter_warning_for_our_processors(family):
    """Diffusers drops (and warns about) kwargs a processor's signature lacks; ours names them all."""
    model = tiny_denoiser(family)
    kw = denoiser_inputs(family, model)
    cap = _Capture()
    logger = logging.getLogger("diffusers")
    logger.addHandler(cap)
    try:
        with apply(model, Passthrough(path="explicit")):
            model(**kw)
        assert not [m for m in cap.messages if "are not expected by" in m]
        if family == "sd15":  # a misnamed kwarg still warns
            with apply(model, Passthrough()):
                model(**kw, cross_attention_kwargs={"not_a_kwarg": 1})
            assert any("not_a_kwarg" in m and "ControlledProcessor" in m for m in cap.messages)
    finally:
        logger.removeHandler(cap)


@torch.no_grad()
def test_attention_backend_reaches_our_processors(monkeypatch):
    """A backend set before apply is inherited; one set during apply reaches dispatch_attention_fn."""
    import attn_processors.core.processor as proc_mod

    seen = []
    real = proc_mod.dispatch_attention_fn

    def spy(*args, backend=None, **kw):
        seen.append(backend)
        return real(*args, backend=backend, **kw)

    monkeypatch.setattr(proc_mod, "dispatch_attention_fn", spy)
    model = tiny_denoiser("flux")
    kw = denoiser_inputs("flux", model)
    ref = model(**kw)[0]
    attn = model.transformer_blocks[0].attn
    attn.set_attention_backend("_native_math")  # per module: does not touch the global backend
    with apply(model, Passthrough()):
        assert str(model.transformer_blocks[0].attn.processor._attention_backend.value) == "_native_math"
        model.single_transformer_blocks[0].attn.set_attention_backend("_native_math")
        out = model(**kw)[0]
    assert [str(b.value) for b in seen] == ["_native_math", "_native_math"]
    assert (out - ref).abs().max() <= 1e-5


@torch.no_grad()
def test_processors_for_builds_a_full_dict_for_set_attn_processor(sd15):
    from attn_processors.core import Controller, processors_for

    model, kw = sd15
    ref = model(**kw)[0]
    stock = dict(model.attn_processors)
    procs = processors_for(model, lambda s: _ScaleQ(s, Controller()), Select(kinds=("cross",)))
    assert len(procs) == len(stock)
    assert all(isinstance(p, _ScaleQ) == ("attn2" in k) for k, p in procs.items())
    model.set_attn_processor(procs)
    changed = model(**kw)[0]
    model.set_attn_processor(stock)
    assert not torch.allclose(changed, ref) and torch.equal(model(**kw)[0], ref)
