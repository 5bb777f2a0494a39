"""Controller: driven from stock pipelines (steps, timesteps, CFG labels) and from an explicit loop."""

from dataclasses import dataclass

import pytest
import torch

from attn_processors.core import ControlledProcessor, Controller, Select, apply, register_technique

SEEN = []


class _Recorder(ControlledProcessor):
    def wants(self, call):
        SEEN.append((call.step, call.timestep, call.labels, call.grid, call.q_len))
        return False


@dataclass(frozen=True)
class _RecordConfig:
    layers: Select = Select()


register_technique(_RecordConfig)(lambda cfg, sites, ctrl: {sites[0].name: _Recorder(sites[0], ctrl)})


def _run(pipe, **kw):
    SEEN.clear()
    with apply(pipe, _RecordConfig()) as ctrl:
        pipe(output_type="np", **kw)
    return ctrl


def test_stock_sd15_pipeline_steps_timesteps_and_cfg_labels(tiny_pipe_cache):
    pipe = tiny_pipe_cache("sd15")
    ctrl = _run(pipe, prompt="a red cat", num_inference_steps=4, height=32, width=24)
    ts = [float(t) for t in pipe.scheduler.timesteps]
    assert [s for s, *_ in SEEN] == [0, 1, 2, 3]
    assert [t for _, t, *_ in SEEN] == ts and ts == sorted(ts, reverse=True)
    assert all(lab == ("uncond", "cond") for _, _, lab, *_ in SEEN)
    assert ctrl.num_steps == 4 and ctrl.latent_hw == (16, 12) and not ctrl.in_run
    # no CFG: one branch; a second run on the same pipe restarts at step 0
    _run(pipe, prompt="a red cat", num_inference_steps=2, height=32, width=32, guidance_scale=1.0)
    assert [(s, lab) for s, _, lab, *_ in SEEN] == [(0, ("cond",)), (1, ("cond",))]


def test_stock_wan_pipeline_two_calls_per_step(tiny_pipe_cache):
    """Wan runs cond then uncond as two B=1 calls in one step: one step index, two labels."""
    pipe = tiny_pipe_cache("wan")
    _run(
        pipe,
        prompt="a red cat",
        negative_prompt="a blue dog",
        num_inference_steps=2,
        height=32,
        width=32,
        num_frames=9,
    )
    ts = [float(t) for t in pipe.scheduler.timesteps]
    assert [(s, t, lab) for s, t, lab, *_ in SEEN] == [
        (0, ts[0], ("cond",)),
        (0, ts[0], ("uncond",)),
        (1, ts[1], ("cond",)),
        (1, ts[1], ("uncond",)),
    ]
    assert all(grid == (3, 2, 2) and n == 12 for *_, grid, n in SEEN)  # 9 frames -> 3 latent, 2x2 tokens


def test_stock_flux_true_cfg_labels(tiny_pipe_cache):
    pipe = tiny_pipe_cache("flux")
    _run(
        pipe,
        prompt="a red cat",
        negative_prompt="a blue dog",
        true_cfg_scale=2.0,
        num_inference_steps=2,
        height=32,
        width=32,
    )
    assert [(s, lab) for s, _, lab, *_ in SEEN] == [
        (0, ("cond",)),
        (0, ("uncond",)),
        (1, ("cond",)),
        (1, ("uncond",)),
    ]
    assert SEEN[0][3] == (1, 8, 8)


def test_stock_cogvideox_batched_cfg(tiny_pipe_cache):
    pipe = tiny_pipe_cache("cogvideox")
    _run(
        pipe,
        prompt="a red cat",
        num_inference_steps=2,
        height=16,
        width=16,
        num_frames=9,
        max_sequence_length=16,
    )
    assert [(s, lab) for s, _, lab, *_ in SEEN] == [(0, ("uncond", "cond")), (1, ("uncond", "cond"))]
    assert SEEN[0][3] == (3, 1, 1) and SEEN[0][4] == 16 + 3  # text first, then 3 video tokens


@torch.no_grad()
def test_explicit_loop_drives_a_given_controller():
    from attn_processors.testing.tiny import denoiser_inputs, tiny_denoiser

    model = tiny_denoiser("sd15")
    kw = denoiser_inputs("sd15", model)
    ctrl = Controller()
    SEEN.clear()
    with apply(model, _RecordConfig(), controller=ctrl) as got:
        assert got is ctrl
        ctrl.begin_run(num_steps=2, latent_hw=(16, 12))
        for i, t in enumerate([900, 400]):
            ctrl.begin_step(i, t)
            ctrl.set_branch(("uncond", "cond"))
            model(**kw)
        ctrl.end_run()
    assert [(s, t, lab) for s, t, lab, *_ in SEEN] == [
        (0, 900.0, ("uncond", "cond")),
        (1, 400.0, ("uncond", "cond")),
    ]


def test_row_labels_and_rows():
    ctrl = Controller()
    ctrl.set_branch(("uncond", "cond"))
    assert ctrl.row_labels(4) == ("uncond", "uncond", "cond", "cond")
    assert ctrl.row_labels(3) is None


# -- the usage example at the top of core/processor.py, run for real ----------------------------
class TemperatureProcessor(ControlledProcessor):
    def __init__(self, site, controller, tau: float, until: int):
        super().__init__(site, controller)
        self.tau, self.until = tau, until

    def wants(self, call):
        return call.step is not None and call.step < self.until

    def edit_logits(self, logits, call):
        return logits / self.tau


@dataclass(frozen=True)
class TemperatureConfig:
    tau: float = 0.5
    until: int = 10
    layers: Select = Select(kinds=("cross",))


register_technique(TemperatureConfig)(
    lambda config, sites, controller: {
        s.name: TemperatureProcessor(s, controller, config.tau, config.until) for s in sites
    }
)


@pytest.mark.parametrize("until,changes", [(0, False), (2, True)])
def test_docstring_example_technique(tiny_pipe_cache, until, changes):
    pipe = tiny_pipe_cache("sd15")
    kw = dict(prompt="a red cat", num_inference_steps=2, height=32, width=32, output_type="np")
    ref = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    with apply(pipe, TemperatureConfig(tau=0.5, until=until)):
        out = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    diff = abs(out - ref).max()
    assert (diff > 1e-4) if changes else (diff == 0.0)


def test_nested_apply_on_a_pipeline_unwinds_cleanly(tiny_pipe_cache):
    from attn_processors.core.store import StoreConfig

    pipe = tiny_pipe_cache("sd15")
    kw = dict(prompt="a red cat", num_inference_steps=2, height=32, width=32, output_type="np")
    with apply(pipe, StoreConfig(aggregate="steps")) as outer:
        with apply(pipe, _RecordConfig()):
            pipe(**kw)
        assert {s for _, s in outer.stores["attention"].by_step} == {0, 1}
        outer.stores.clear()
        pipe(**kw)  # the outer attach still drives its controller after the inner one left
        assert {s for _, s in outer.stores["attention"].by_step} == {0, 1}
    assert "step" not in vars(pipe.scheduler) and "set_timesteps" not in vars(pipe.scheduler)
    assert "encode_prompt" not in vars(pipe)
    assert not pipe.unet._forward_pre_hooks


def test_a_loop_driven_controller_is_left_alone_by_the_stock_driver(tiny_pipe_cache):
    pipe = tiny_pipe_cache("sd15")
    kw = dict(prompt="a red cat", num_inference_steps=2, height=32, width=32, output_type="np")
    ctrl = Controller()
    with ctrl.attach(pipe):
        pipe(**kw)
        assert ctrl.branch == ("uncond", "cond") and ctrl.step == 1  # the stock driver labelled the rows
        ctrl.begin_step(7, 3.0)
        ctrl.set_branch(("source", "target"))
        with ctrl.driven_by_loop():
            pipe(**kw)
        assert (ctrl.step, ctrl.branch) == (7, ("source", "target"))
    assert not ctrl.loop_driven
