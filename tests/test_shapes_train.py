"""Training script pieces and a tiny end-to-end run: train, resume, export, reload with stock Diffusers."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from worlds.shapes import export as export_image
from worlds.shapes import train as train_image
from worlds.shapes.models import train_scheduler


def test_min_snr_weights():
    sched = train_scheduler()
    t = torch.tensor([0, 500, 999])
    w = train_image.min_snr_weights(sched, t, gamma=5.0)
    ac = sched.alphas_cumprod[t]
    snr = ac / (1 - ac)
    assert w[0] == pytest.approx(float(5.0 / snr[0]), rel=1e-5)  # high SNR at t=0 -> down-weighted
    assert w[2] == pytest.approx(1.0)  # low SNR -> weight 1
    assert (w <= 1.0 + 1e-6).all()


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        train_image.parse_args(["--batch", "0"])


def test_tiny_run_resumes_and_exports(tmp_path):
    run = tmp_path / "run"
    common = ["--out", str(run), "--vae-steps", "2", "--vae-batch", "2", "--scenes", "8", "--batch", "2",
              "--log-every", "1", "--save-every", "0", "--eval-scenes", "4"]
    train_image.main(common + ["--steps", "1"])
    train_image.main(common + ["--steps", "2"])  # resumes at step 1
    records = [json.loads(line) for line in (run / "train.log").read_text().splitlines()]
    assert any(r.get("resumed_at") == 1 for r in records)
    unet_steps = [r["step"] for r in records if r.get("phase") == "unet" and "loss" in r]
    assert unet_steps == [1, 2]
    assert all(r["ground"] > 0 for r in records if r.get("phase") == "unet" and "loss" in r)
    out = export_image.export(run, tmp_path / "export")
    assert not any("_name_or_path" in f.read_text() for f in out.rglob("*.json"))
    pipe = StableDiffusionPipeline.from_pretrained(out, dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_loading_a_missing_model_says_how_to_export(tmp_path):
    from worlds.shapes.pipeline import load_pipeline

    with pytest.raises(ValueError, match="worlds.shapes.export"):
        load_pipeline(tmp_path)


def test_time_decay_factor_and_deadline():
    from worlds.finetune import Deadline, time_decay_factor

    assert time_decay_factor(0.0, 100.0, 0.3) == 1.0
    assert time_decay_factor(70.0, 100.0, 0.3) == pytest.approx(1.0)  # the tail starts at 70 s
    assert time_decay_factor(85.0, 100.0, 0.3) == pytest.approx(0.55)  # halfway through the tail
    assert time_decay_factor(100.0, 100.0, 0.3) == pytest.approx(0.1)
    assert time_decay_factor(500.0, 100.0, 0.3) == pytest.approx(0.1)  # stays at 0.1 after
    assert time_decay_factor(85.0, None, 0.3) == 1.0 and time_decay_factor(85.0, 100.0, 0.0) == 1.0
    for limit, tail in [(0, 0.3), (-5, 0.3), (10, 1.0), (10, -0.1)]:
        with pytest.raises(ValueError):
            Deadline(limit, tail)
    assert not Deadline(None).passed() and Deadline(None).lr_factor() == 1.0
    d = Deadline(100.0, 0.3)
    assert not d.passed() and d.lr_factor() == 1.0
    d.start -= 85.0
    assert d.lr_factor() == pytest.approx(0.55, abs=1e-3) and not d.passed()
    d.start -= 20.0
    assert d.passed() and d.lr_factor() == pytest.approx(0.1)
    with pytest.raises(SystemExit):
        train_image.parse_args(["--time-limit", "0"])
    with pytest.raises(SystemExit):
        train_image.parse_args(["--time-limit", "10", "--decay-tail", "1"])
    assert train_image.parse_args([]).steps == 8000
    assert train_image.parse_args(["--time-limit", "10"]).steps is None  # no step cap by default


ASSET = Path(__file__).resolve().parents[1] / "assets" / "shapes-sd"


def test_init_pipeline_at_step_0_exports_the_asset_weights(tmp_path):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    train_image.main(["--init-pipeline", str(ASSET), "--phase", "all", "--scenes", "8", "--batch", "4",
                      "--steps", "0", "--out", str(run)])
    assert not (run / "vae_ckpt.pt").exists()  # no VAE training: the asset's VAE was copied
    out = export_image.export(run, tmp_path / "exp")
    for sub, name in [("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors"),
                      ("vae", "diffusion_pytorch_model.safetensors")]:
        ours, theirs = load_file(out / sub / name), load_file(ASSET / sub / name)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), sub
    record = json.loads((out / "training.json").read_text())
    shipped = json.loads((ASSET / "training.json").read_text())
    assert record["step"] == 0
    assert record["args"]["init_pipeline"] == str(ASSET) and record["args"]["init_step"] == shipped["step"]


def test_init_pipeline_trains_for_a_time_limit_and_exports(tmp_path):
    run = tmp_path / "run"
    train_image.main(["--init-pipeline", str(ASSET), "--phase", "all", "--scenes", "16", "--batch", "4",
                      "--time-limit", "3", "--save-every", "1000", "--log-every", "1", "--out", str(run)])
    records = [json.loads(line) for line in (run / "train.log").read_text().splitlines()]
    done = [r for r in records if r.get("done") and r.get("phase") == "unet"]
    assert len(done) == 1 and done[0]["steps"] > 0 and done[0]["stopped"] == "time_limit"
    assert 3.0 <= done[0]["phase_seconds"] < 30.0  # stops at the deadline (generous: loaded CI machines)
    steps = [r for r in records if r.get("phase") == "unet" and "loss" in r]
    assert len(steps) == done[0]["steps"] and all(r["steps_per_s"] > 0 for r in steps)
    factors = [r["lr"] / (8e-4 * min(1.0, r["step"] / 100)) for r in steps]  # LR over the warm-up
    assert factors[0] > factors[-1] and factors[-1] < 0.7  # the last steps ran in the decay tail
    out = export_image.export(run, tmp_path / "exp")
    assert json.loads((out / "training.json").read_text())["args"]["time_limit"] == 3.0
    pipe = StableDiffusionPipeline.from_pretrained(out, dtype=torch.float32, local_files_only=True)
    assert pipe.unet.config.cross_attention_dim == 128


def test_init_pipeline_without_unet_or_vae_is_refused(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ValueError, match="vae/"):
        train_image.main(["--init-pipeline", str(tmp_path), "--out", str(tmp_path / "run")])
