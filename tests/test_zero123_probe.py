"""The conditioning probe: a condition the model cannot see scores exactly zero use, one it sees does not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from worlds.shapes3d.probe import conditioning_losses
from worlds.shapes3d.zero123 import load_parts

MODEL = Path(__file__).resolve().parents[1] / "assets" / "shapes3d-zero123"


@pytest.fixture()
def parts():
    return load_parts(MODEL)


def test_a_blinded_input_latent_and_pose_score_zero_use(parts):
    with torch.no_grad():
        parts.unet.conv_in.weight[:, 4:] = 0  # the UNet cannot see the input latent
        parts.cc_projection.projection.weight[:, -4:] = 0  # nor the pose
    r = conditioning_losses(parts, scenes=2, pairs_per_scene=2, timesteps=(500,))
    assert r["input_latent_use"] == r["target_latent_gain"] == 0.0
    assert r["pose_use"] == r["azimuth_use"] == 0.0
    assert r["token_use"] != 0.0  # the image embedding still reaches it
    assert r["use_by_timestep"]["azimuth_use"] == r["use_by_timestep"]["pose_use"] == {"500": 0.0}
    assert r["cc_pose_column_norms"] == {"d_polar": 0.0, "sin_d_azimuth": 0.0, "cos_d_azimuth": 0.0,
                                         "d_radius": 0.0}


def test_a_model_that_reads_its_conditions_scores_nonzero_use(parts):
    with torch.no_grad():
        parts.unet.conv_in.weight[:, 4:] *= 50  # make the input latent loud
        parts.cc_projection.projection.weight[:, -3:-1] += 5  # and the azimuth
    r = conditioning_losses(parts, scenes=2, pairs_per_scene=2, timesteps=(100, 900))
    assert r["input_latent_use"] != 0.0 and r["azimuth_use"] != 0.0 and r["pairs"] == 4
    by_t = r["use_by_timestep"]["azimuth_use"]
    assert set(by_t) == {"100", "900"} and by_t["900"] != 0.0
    losses = r["losses"]  # the headline ratio is the ratio of the timestep means
    assert r["azimuth_use"] == round(losses["mirrored_azimuth"] / losses["full"] - 1, 4)


def test_the_benchmark_prints_the_probe_and_refuses_empty_runs(tmp_path, capsys):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "zero123_probe.py"
    spec = importlib.util.spec_from_file_location("zero123_probe", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--model", str(MODEL), "--scenes", "1", "--pairs", "1"])
    assert set(result["losses"]) == {"full", "zero_input_latent", "target_input_latent", "zero_token",
                                     "shuffled_pose", "mirrored_azimuth"}
    assert result["model"] == str(MODEL) and result["seconds"] > 0
    with pytest.raises(SystemExit):
        bench.main(["--scenes", "0"])
    with pytest.raises(ValueError, match="pairs_per_scene=0"):
        conditioning_losses(load_parts(MODEL), scenes=1, pairs_per_scene=0)


def test_the_facing_probe_pairs_each_one_object_scene_from_its_facing_view(parts):
    from worlds.shapes3d.data import facing_views

    r = conditioning_losses(parts, scenes=3, pairs_per_scene=2, timesteps=(900,), facing=True)
    assert r["pairs"] == 6 and r["pairs_from"] == "facing"
    assert len(facing_views(r["seed"], 12)[0]) >= 3  # enough one-object scenes among the first 12
    with torch.no_grad():
        parts.cc_projection.projection.weight[:, -4:] = 0  # a model blind to the pose
    blind = conditioning_losses(parts, scenes=3, pairs_per_scene=2, timesteps=(900,), facing=True)
    assert blind["azimuth_use"] == blind["pose_use"] == 0.0
