"""Training script pieces and a tiny end-to-end run: train, resume, export, reload with stock Diffusers."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline

from attn_processors.shapes import export_image, train_image
from attn_processors.shapes.models import train_scheduler


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
    from attn_processors.shapes.pipeline import load_pipeline

    with pytest.raises(ValueError, match="export_image"):
        load_pipeline(tmp_path)
