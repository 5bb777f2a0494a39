"""The world's Zero-1-to-3 export loads in our pipeline (pipelines/zero123.py) and samples what the world's
own sampler samples: one folder layout, one loading path for the shipped model and the public checkpoints."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from pipelines.zero123 import Zero123Pipeline
from worlds.shapes3d.models import (
    build_cc_projection,
    build_image_encoder,
    build_world_vae,
    build_zero123_unet,
    pose_embedding,
)
from worlds.shapes3d.render import render
from worlds.shapes3d.scene import sample_scene
from worlds.shapes3d.zero123 import export, load_parts, sample


def _fake_run(run, input_latent: str):
    """A run folder as train_zero123 leaves it: EMA weights in unet_ckpt.pt and a vae/."""
    torch.manual_seed(0)
    modules = (build_zero123_unet(), build_image_encoder(), build_cc_projection())
    ema = [p.detach().clone() + 0.01 * torch.randn_like(p) for m in modules for p in m.parameters()]
    build_world_vae().save_pretrained(run / "vae")
    torch.save({"step": 7, "ema": ema, "args": {"input_latent": input_latent}}, run / "unet_ckpt.pt")


@pytest.mark.parametrize("input_latent", ["raw", "scaled"])
def test_world_export_loads_in_the_pipeline_and_samples_the_same(tmp_path, input_latent):
    run, folder = tmp_path / "run", tmp_path / "model"
    run.mkdir()
    _fake_run(run, input_latent)
    export(run, folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["cc_projection"] == ["pipeline_zero1to3", "CCProjection"]  # the public checkpoints' entry

    pipe = Zero123Pipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.input_latent == input_latent

    scene = sample_scene(3, 1)
    source, target = scene.views[0], scene.views[1]
    rgb = render(scene.objects, source).rgb  # (64, 64, 3) uint8
    x = rgb.permute(2, 0, 1)[None].float() / 127.5 - 1
    pose_deg = [(90 - target.elevation) - (90 - source.elevation), target.azimuth - source.azimuth,
                target.radius - source.radius]
    assert torch.allclose(pose_embedding(source, target).float(),
                          torch.tensor([np.deg2rad(pose_deg[0]), np.sin(np.deg2rad(pose_deg[1])),
                                        np.cos(np.deg2rad(pose_deg[1])), pose_deg[2]]).float(), atol=1e-6)

    ours = pipe(PIL.Image.fromarray(rgb.numpy()), [pose_deg], num_inference_steps=4, guidance_scale=3.0,
                generator=torch.Generator().manual_seed(5), output_type="pt").images  # [0, 1]
    world = sample(load_parts(folder), x, pose_embedding(source, target)[None].float(), steps=4, cfg=3.0,
                   generator=torch.Generator().manual_seed(5))  # (1, 3, 64, 64) in [-1, 1]
    assert ours.shape == world.shape
    gap = float((ours.float() - (world + 1) / 2).abs().max())
    assert gap <= 1e-4, gap


def _resave(run, **extra) -> None:
    state = torch.load(run / "unet_ckpt.pt", weights_only=False)
    state.update(extra)
    torch.save(state, run / "unet_ckpt.pt")


def test_an_export_keeps_the_stage_it_started_from_and_refuses_a_lost_or_overwritten_one(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _fake_run(run, "scaled")
    earlier = {"step": 10308, "input_latent": "scaled", "args": {"out": "runs/first", "front_pairs": 0.75}}
    init = tmp_path / "shipped"
    init.mkdir()
    (init / "training.json").write_text(json.dumps(earlier))
    _resave(run, args={"input_latent": "scaled", "init": str(init), "out": "runs/second"})
    record = json.loads((export(run, tmp_path / "a") / "training.json").read_text())
    assert record["init_record"] == earlier  # read from the init folder (runs saved before the ckpt kept it)

    kept = {**earlier, "step": 99}
    _resave(run, init_record=kept)  # the checkpoint's copy wins over the folder's
    assert json.loads((export(run, tmp_path / "b") / "training.json").read_text())["init_record"] == kept

    _resave(run, init_record=None)
    (init / "training.json").write_text(json.dumps({**earlier, "args": {"out": "runs/second"}}))
    with pytest.raises(ValueError, match="holds this run's own export"):
        export(run, tmp_path / "c")
    (init / "training.json").unlink()
    with pytest.raises(ValueError, match=r"training.json is gone; restore that folder"):
        export(run, tmp_path / "d")
    assert not (tmp_path / "d").exists()  # refused before writing anything

    _resave(run, args={"input_latent": "scaled", "init": None})
    assert "init_record" not in json.loads((export(run, tmp_path / "e") / "training.json").read_text())
