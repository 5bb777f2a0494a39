"""The novel-view trainer: three phases on CPU in seconds, checkpoints, exact resume, stops on time."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL

from worlds.shapes3d.train_zero123 import main

TINY = ["--vae-steps", "1", "--vae-batch", "6", "--scenes", "3", "--eval-scenes", "1", "--batch", "2",
        "--log-every", "1", "--save-every", "1000", "--warmup", "2"]


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train.log").read_text().splitlines()]


def _fresh_unet_run(run, out):
    """A new run folder with ``run``'s VAE and view cache but no UNet checkpoint."""
    import shutil

    out.mkdir()
    shutil.copytree(run / "vae", out / "vae")
    shutil.copy(run / "views.pt", out / "views.pt")
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("z123")
    main(["--out", str(out), "--steps", "2", *TINY])
    return out


def test_all_phases_write_their_outputs(run):
    vae = AutoencoderKL.from_pretrained(run / "vae")
    assert vae.config.scaling_factor > 0
    views = torch.load(run / "views.pt", weights_only=False)
    assert views["images"].shape == (3, 6, 64, 64, 3) and views["mean"].shape == (3, 6, 4, 16, 16)
    state = torch.load(run / "unet_ckpt.pt", weights_only=False)
    assert state["step"] == 2 and state["args"]["input_latent"] == "raw"
    records = _log(run)
    assert any(r.get("phase") == "vae" and r.get("done") for r in records)
    losses = [r["loss"] for r in records if r.get("phase") == "unet" and "loss" in r]
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)


def test_resume_continues_exactly_where_a_straight_run_would_be(run, tmp_path):
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    main(["--out", str(resumed), "--steps", "4", *TINY])
    straight = tmp_path / "straight"
    straight.mkdir()
    for name in ("vae", "views.pt"):  # same VAE and cache, fresh UNet phase
        src = run / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, straight / name)
    main(["--out", str(straight), "--steps", "4", *TINY])
    a = torch.load(resumed / "unet_ckpt.pt", weights_only=False)
    b = torch.load(straight / "unet_ckpt.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    assert any(r.get("resumed_at") == 2 for r in _log(resumed))
    for key in ("unet", "image_encoder", "cc_projection"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    assert all(torch.equal(x, y) for x, y in zip(a["ema"], b["ema"], strict=True))


def test_time_limit_stops_the_unet_phase(run, tmp_path):
    import shutil

    out = tmp_path / "timed"
    shutil.copytree(run, out)
    main(["--out", str(out), "--time-limit", "0.5", *TINY])
    done = [r for r in _log(out) if r.get("done") and r.get("phase") == "unet"][-1]
    assert done["stopped"] == "time_limit" and done["steps"] >= 2


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--time-limit", "-3"])
    with pytest.raises(ValueError, match="--init-vae .* has no config.json"):
        main(["--out", str(tmp_path), "--init-vae", str(tmp_path / "nowhere"), *TINY])


def test_export_loads_with_plain_from_pretrained_and_samples(run, tmp_path):
    from transformers import CLIPVisionModelWithProjection

    from worlds.shapes3d.models import CCProjection
    from worlds.shapes3d.zero123 import export, load_parts, sample

    folder = export(run, tmp_path / "z123")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "Zero1to3StableDiffusionPipeline"
    assert index["cc_projection"] == ["pipeline_zero1to3", "CCProjection"]
    assert index["feature_extractor"] == [None, None]
    state = torch.load(run / "unet_ckpt.pt", weights_only=False)
    cc = CCProjection.from_pretrained(folder / "cc_projection")
    assert torch.equal(cc.projection.weight, state["ema"][-2])  # EMA weights exported, in order
    assert isinstance(CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder"),
                      CLIPVisionModelWithProjection)
    parts = load_parts(folder)
    assert parts.input_latent == "raw"
    x = torch.zeros(2, 3, 64, 64)
    poses = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.1, 1.0, 0.0, 0.0]])
    a = sample(parts, x, poses, steps=2, generator=torch.Generator().manual_seed(0))
    b = sample(parts, x, poses, steps=2, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 64, 64) and torch.equal(a, b) and a.abs().max() <= 1
    with pytest.raises(ValueError, match="lacks"):
        load_parts(tmp_path)


def test_novel_view_eval_runs_on_an_exported_model(run, tmp_path):
    import importlib.util
    from pathlib import Path

    from worlds.shapes3d.scene import first_per_group, load_scenes
    from worlds.shapes3d.score import copy_input_baseline, summarise
    from worlds.shapes3d.zero123 import export

    folder = export(run, tmp_path / "z123")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "novel_view_eval.py"
    spec = importlib.util.spec_from_file_location("novel_view_eval", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--model", str(folder), "--per-group", "1", "--seeds", "1", "--steps", "2",
                         "--save", str(tmp_path / "grids")])
    for key in ("psnr", "ssim", "mask_iou", "colour_present", "seconds_per_view", "psnr_copy_input",
                "mask_iou_copy_input"):
        assert key in result
    assert result["headline_groups"] == ["off_centre_1", "off_centre_2"]
    scenes = first_per_group(load_scenes(bench.DEFAULT_SCENES), 1)
    heads = [s for s in scenes if s.extra["group"].startswith("off_centre")]
    copy = summarise([r for s in heads for r in copy_input_baseline(s)])
    assert result["psnr_copy_input"] == copy["psnr"] and result["mask_iou_copy_input"] == copy["mask_iou"]
    assert set(result["groups"]) == {"off_centre_1", "off_centre_2", "centred_1", "three"}
    assert len(list((tmp_path / "grids").glob("*.png"))) == 4


def test_the_azimuth_curriculum_grows_from_30_to_180_degrees():
    from worlds.shapes3d.train_zero123 import azimuth_cap

    assert azimuth_cap(0, 100) == 30.0 and azimuth_cap(50, 100) == 105.0
    assert azimuth_cap(100, 100) == azimuth_cap(7, 0) == 180.0


def test_copy_pairs_fall_from_their_share_to_none_over_the_curriculum():
    from worlds.shapes3d.train_zero123 import copy_share

    assert copy_share(0, 0.5, 100) == 0.5 and copy_share(50, 0.5, 100) == 0.25
    assert copy_share(100, 0.5, 100) == copy_share(3, 0.5, 0) == copy_share(3, 0.0, 100) == 0.0
    for bad in (["--copy-pairs", "1.5", "--azimuth-curriculum", "10"], ["--copy-pairs", "0.5"]):
        with pytest.raises(SystemExit):
            main(["--out", "unused", *bad])


def test_near_targets_stay_within_the_cap_and_fall_back_to_the_nearest_view():
    from worlds.shapes3d.train_zero123 import near_targets

    az = torch.tensor([[0.0, 10.0, 350.0, 90.0, 180.0, 270.0]] * 64
                      + [[0.0, 100.0, 200.0, 280.0, 60.0, 150.0]])
    src = torch.zeros(65, dtype=torch.long)
    tgt = near_targets(az, src, 20.0, torch.Generator().manual_seed(0))
    assert set(tgt[:64].tolist()) == {1, 2}  # 10 and 350 degrees are 10 away (wrapped); never the source
    assert tgt[64].item() == 4  # none within 20: the nearest other view, 60 degrees away


def test_init_starts_from_an_exported_model_with_its_vae_and_logs_the_curriculum(run, tmp_path):
    import shutil

    from worlds.shapes3d.zero123 import export

    folder = export(run, tmp_path / "z123")
    out = tmp_path / "ft"
    out.mkdir()
    shutil.copy(run / "views.pt", out / "views.pt")  # the same cache: only the UNet phase runs
    main(["--out", str(out), "--steps", "0", "--init", str(folder), *TINY])
    state = torch.load(out / "unet_ckpt.pt", weights_only=False)
    shipped = torch.load(run / "unet_ckpt.pt", weights_only=False)["ema"]
    assert all(torch.equal(a, b) for a, b in zip(state["ema"], shipped, strict=True))  # EMA = shipped weights
    assert (out / "vae" / "config.json").is_file()
    first = [r for r in _log(out) if r.get("init")][0]
    assert first["init_step"] == 2 and first["input_latent"] == "raw"
    main(["--out", str(out), "--steps", "2", "--azimuth-curriculum", "100", "--copy-pairs", "0.5", *TINY])
    steps = [r for r in _log(out) if "azimuth_cap" in r]
    assert [r["azimuth_cap"] for r in steps] == [30.0, 31.5]  # the caps steps 0 and 1 drew their pairs with
    assert [r["copy_share"] for r in steps] == [0.5, 0.495]
    with pytest.raises(ValueError, match="lacks"):
        main(["--out", str(tmp_path / "other"), "--init", str(tmp_path), *TINY])


def test_orbit_pairs_come_from_a_second_cache_of_one_elevation_per_scene(run, tmp_path):

    out = _fresh_unet_run(run, tmp_path / "orbit")
    main(["--out", str(out), "--steps", "2", "--orbit-pairs", "0.5", "--orbit-scenes", "2", *TINY])
    orbit = torch.load(out / "views_orbit.pt", weights_only=False)
    assert orbit["images"].shape == (2, 12, 64, 64, 3) and orbit["mean"].shape == (2, 12, 4, 16, 16)
    elevations = orbit["views"][..., 0]
    assert torch.equal(elevations, elevations[:, :1].expand_as(elevations))  # one elevation per scene
    assert elevations[0, 0] != elevations[1, 0] and orbit["views"][0, :, 1].unique().numel() == 12
    assert torch.load(out / "unet_ckpt.pt", weights_only=False)["step"] == 2
    for bad in (["--orbit-pairs", "1.0"], ["--orbit-pairs", "-0.1"], ["--orbit-scenes", "0"]):
        with pytest.raises(SystemExit):
            main(["--out", "unused", *bad])


def test_every_scene_stream_of_the_trainer_is_distinct_from_the_probes():
    """The probe measures on scenes no cache holds: every seed offset differs from it and from each other."""
    from worlds.shapes3d.probe import PROBE_SEED
    from worlds.shapes3d.train_zero123 import HOLDOUT_SEED_OFFSET, ORBIT_SEED_OFFSET, VAE_SEED_OFFSET

    seeds = [0, VAE_SEED_OFFSET, HOLDOUT_SEED_OFFSET, ORBIT_SEED_OFFSET, PROBE_SEED]  # default --seed 0
    assert len(set(seeds)) == len(seeds)


def test_layout_weights_are_min_snr_at_low_noise_and_weigh_the_x0_error_one_at_high_noise(run, tmp_path):
    import shutil

    from worlds.shapes3d.models import train_scheduler
    from worlds.shapes3d.train_zero123 import layout_weights, min_snr_weights

    alphas = train_scheduler().alphas_cumprod
    t = torch.arange(1000)
    snr = alphas / (1 - alphas)
    w, m = layout_weights(alphas, t), min_snr_weights(alphas, t)
    assert torch.allclose(w[snr >= 1], m[snr >= 1])  # min-SNR where SNR >= 1 ...
    assert torch.allclose((w * snr)[snr < 1], torch.ones(int((snr < 1).sum())))  # ... x0 weight 1 below
    assert (snr < 1).sum() > 300 and w[999] / m[999] > 100  # the high-noise third weighs far more

    out = tmp_path / "layout"
    shutil.copytree(run, out)
    (out / "unet_ckpt.pt").unlink()
    main(["--out", str(out), "--steps", "2", "--loss-weights", "x0_floor", "--t-min", "900", *TINY])
    state = torch.load(out / "unet_ckpt.pt", weights_only=False)
    assert state["step"] == 2 and (state["args"]["loss_weights"], state["args"]["t_min"]) == ("x0_floor", 900)
    for bad in (["--t-min", "1000"], ["--t-min", "-1"], ["--loss-weights", "snr"]):
        with pytest.raises(SystemExit):
            main(["--out", "unused", *bad])


def test_front_pairs_start_facing_the_one_object_which_then_moves_against_sin_d_azimuth(run, tmp_path):
    import dataclasses

    from worlds.shapes3d.data import ORBIT_SPEC, facing_views
    from worlds.shapes3d.render import render
    from worlds.shapes3d.scene import sample_scene

    scenes = [sample_scene(5, i, ORBIT_SPEC) for i in range(16)]
    idx, src = facing_views(5, 16)
    assert len(idx) >= 3 and all(len(scenes[i].objects) == 1 for i in idx.tolist())

    def column(scene, view) -> float:  # the object's mean image column
        mask = render(scene.objects, view, size=64).masks[0].float().sum(0)
        return float((mask * torch.arange(64.0)).sum() / mask.sum())

    for i, s in zip(idx.tolist(), src.tolist(), strict=True):
        view = scenes[i].views[s]
        centre = column(scenes[i], view)
        assert abs(centre - 31.5) < 8  # in front of the look-at point: near the middle column
        left = column(scenes[i], dataclasses.replace(view, azimuth=view.azimuth + 60))
        right = column(scenes[i], dataclasses.replace(view, azimuth=view.azimuth - 60))
        assert left < centre < right and right - left > 6  # sin d azimuth alone says which way

    out = _fresh_unet_run(run, tmp_path / "front")
    main(["--out", str(out), "--steps", "2", "--front-pairs", "0.5", "--orbit-scenes", "6", *TINY])
    assert torch.load(out / "unet_ckpt.pt", weights_only=False)["args"]["front_pairs"] == 0.5
    for bad in (["--front-pairs", "-0.5"], ["--front-pairs", "0.5", "--orbit-pairs", "0.5"]):
        with pytest.raises(SystemExit):
            main(["--out", "unused", *bad])
    with pytest.raises(ValueError, match="none of the 0 scenes of seed 5 has one object"):
        facing_views(5, 0)
