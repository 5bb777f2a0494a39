"""The text + depth trainer: cache, both phases on CPU in seconds, resume, an export stock Diffusers loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

from worlds.shapes3d.models import depth_control
from worlds.shapes3d.render import render
from worlds.shapes3d.scene import View, sample_scene
from worlds.shapes3d.train_depth import main

SHIPPED_VAE = Path(__file__).resolve().parents[1] / "assets" / "shapes-sd" / "vae"
TINY = ["--vae", str(SHIPPED_VAE), "--scenes", "2", "--batch", "2", "--log-every", "1",
        "--save-every", "1000", "--warmup", "2"]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train.log").read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd3d")
    main(["--out", str(out), "--steps", "2", "--controlnet-steps", "2", *TINY])
    return out


def test_cache_and_both_phases(run):
    data = torch.load(run / "depth_cache.pt", weights_only=False)
    assert data["mean"].shape == (12, 4, 16, 16) and data["control"].shape == (12, 64, 64)
    assert data["ids"].shape[0] == 12 and float(data["control"].max()) == 1.0
    done = {r["phase"]: r for r in _log(run) if r.get("done")}
    assert done["unet"]["steps"] == 2 and done["controlnet"]["steps"] == 2
    starts = [r for r in _log(run) if "start" in r]  # each invocation's recipe, for the model card
    assert [r["phase"] for r in starts] == ["unet", "controlnet"]
    assert starts[0]["start"]["batch"] == 2 and starts[0]["start"]["init_pipeline"] is None


def test_controlnet_phase_resumes(run, tmp_path):
    import shutil

    out = tmp_path / "more"
    shutil.copytree(run, out)
    main(["--out", str(out), "--steps", "2", "--controlnet-steps", "3", *TINY])
    records = _log(out)
    assert any(r.get("phase") == "controlnet" and r.get("resumed_at") == 2 for r in records)
    assert torch.load(out / "controlnet_ckpt.pt", weights_only=False)["step"] == 3


def test_export_loads_in_the_stock_controlnet_pipeline_offline(run, tmp_path):
    dest = tmp_path / "shapes3d-sd"
    main(["--out", str(run), "--export", str(dest)])
    controlnet = ControlNetModel.from_pretrained(dest / "controlnet-depth", local_files_only=True)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(dest, controlnet=controlnet,
                                                             local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    depth = render(sample_scene(0, 0).objects, View(20, 0, 2.4)).depth
    img = pipe("a red cube and a blue sphere", image=depth_control(depth)[None], num_inference_steps=2,
               height=64, width=64, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 64, 64, 3)
    assert json.loads((dest / "training.json").read_text())["steps"] == {"unet": 2, "controlnet": 2}


def test_missing_text_to_image_checkpoint_is_named(tmp_path):
    with pytest.raises(ValueError, match="unet_ckpt.pt is missing"):
        main(["--out", str(tmp_path), "--export", str(tmp_path / "x")])


def test_text_depth_eval_runs_on_an_exported_model(run, tmp_path):
    import importlib.util

    dest = tmp_path / "shapes3d-sd"
    main(["--out", str(run), "--export", str(dest)])
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "shapes3d_eval.py"
    spec = importlib.util.spec_from_file_location("shapes3d_eval", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--model", str(dest), "--per-group", "1", "--steps", "2"])
    for key in ("mask_iou", "colour_accuracy", "depth_adherence", "seconds_per_image"):
        assert key in result
    assert result["images"] == 4 and set(result["groups"]) == {"one", "two"}
    assert 0.0 <= result["depth_adherence"] <= 1.0
    with pytest.raises(ValueError, match="controlnet-depth"):
        bench.main(["--model", str(tmp_path)])


def test_init_from_the_2d_world_keeps_shared_words(tmp_path):
    """--init-pipeline assets/shapes-sd: the UNet starts as shapes-sd's; a caption of shared words
    encodes exactly as there; the 3D shape words get fresh rows; a resumed run ignores the init."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from worlds.shapes.train import load_init_weights
    from worlds.shapes3d.models import build_t2i_unet, build_text_encoder3d, build_tokenizer3d

    shapes_sd = SHIPPED_VAE.parent
    unet, tok = build_t2i_unet(), build_tokenizer3d()
    te = build_text_encoder3d(tok).eval()
    with pytest.raises(ValueError, match="knows tokens"):
        load_init_weights(shapes_sd, build_t2i_unet(), build_text_encoder3d(tok), tok)
    assert load_init_weights(shapes_sd, unet, te, tok, drop_unknown=True) == ["cone", "cube", "cylinder",
                                                                              "sphere"]
    old_tok = CLIPTokenizer.from_pretrained(shapes_sd / "tokenizer")
    old = CLIPTextModel.from_pretrained(shapes_sd / "text_encoder").eval()
    kw = {"padding": "max_length", "max_length": 16, "return_tensors": "pt"}
    with torch.no_grad():
        torch.testing.assert_close(te(tok("a red and a blue", **kw).input_ids)[0],
                                   old(old_tok("a red and a blue", **kw).input_ids)[0], atol=1e-5, rtol=1e-5)
    out = tmp_path / "run"
    main(["--out", str(out), "--steps", "1", "--controlnet-steps", "1", "--init-pipeline", str(shapes_sd),
          *TINY])
    assert any(r.get("init") == str(shapes_sd) for r in _log(out))
    main(["--out", str(out), "--steps", "2", "--controlnet-steps", "1", "--init-pipeline", str(shapes_sd),
          *TINY])
    assert sum("init" in r for r in _log(out)) == 1


def test_joint_phase_starts_from_the_run_and_export_prefers_it(run, tmp_path):
    """--phase joint: UNet, text encoder and ControlNet move together from the two phases' EMA weights;
    the export then ships the joint weights, and its training.json names the phase."""
    import shutil

    from worlds.shapes3d.train_depth import JOINT_MODULES, trained_weights

    out = tmp_path / "joint"
    shutil.copytree(run, out)
    before = trained_weights(out)
    main(["--out", str(out), "--phase", "joint", "--joint-steps", "2", "--multi-object-frac", "1", *TINY])
    records = _log(out)
    assert any(r.get("phase") == "joint" and r.get("init") == str(out) for r in records)
    start = next(r for r in records if r.get("phase") == "joint" and "start" in r)["start"]
    assert start["multi_object_frac"] == 1
    state = torch.load(out / "joint_ckpt.pt", weights_only=False)
    assert state["step"] == 2 and set(JOINT_MODULES) <= set(state)
    after = trained_weights(out)
    for old, new in zip(before, after, strict=True):  # every module trained
        assert any(not torch.equal(a, b) for a, b in zip(old.parameters(), new.parameters(), strict=True))
    dest = tmp_path / "exported"
    main(["--out", str(out), "--export", str(dest)])
    steps = json.loads((dest / "training.json").read_text())["steps"]
    assert steps == {"unet": 2, "controlnet": 2, "joint": 2}
    cn = ControlNetModel.from_pretrained(dest / "controlnet-depth", local_files_only=True)
    torch.testing.assert_close(dict(cn.named_parameters())["conv_in.weight"],
                               dict(after[2].named_parameters())["conv_in.weight"])


def test_joint_phase_from_an_exported_folder_and_its_errors(run, tmp_path):
    from worlds.shapes3d.train_depth import trained_weights

    folder = tmp_path / "exported"
    main(["--out", str(run), "--export", str(folder)])
    out = tmp_path / "fresh"
    with pytest.raises(ValueError, match="--phase joint needs"):
        main(["--out", str(out), "--phase", "joint", "--joint-steps", "1", *TINY])
    main(["--out", str(out), "--phase", "joint", "--joint-steps", "1", "--init-pipeline", str(folder),
          "--lr", "0", *TINY])
    unet, _, cn = trained_weights(out)
    shipped = ControlNetModel.from_pretrained(folder / "controlnet-depth")
    for a, b in zip(cn.parameters(), shipped.parameters(), strict=True):  # lr 0: the folder's weights
        torch.testing.assert_close(a, b)
    base = json.loads((folder / "training.json").read_text())["steps"]
    main(["--out", str(out), "--export", str(folder)])  # over the folder it started from
    assert json.loads((folder / "training.json").read_text()) == {
        "steps": {"joint": 1}, "fine_tuned_from": {"pipeline": str(folder), "steps": base}}
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--multi-object-frac", "1.5"])


def test_multi_object_views_count_the_objects_in_a_caption():
    from worlds.shapes3d.models import build_tokenizer3d
    from worlds.shapes3d.train_depth import multi_object_views

    tok = build_tokenizer3d()
    ids = tok(["a red cube", "a red cube and a blue sphere", "a red cube, a blue cone and a green sphere"],
              padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    assert multi_object_views(ids).tolist() == [False, True, True]
