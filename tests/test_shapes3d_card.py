"""The novel-view model card is written from its files: architecture and parameter counts from the folder,
recipe from training.json, compute from train.log, figures and the issue-15/16 verdicts from the eval JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_shapes3d_zero123_export import _fake_run
from worlds.shapes3d import card
from worlds.shapes3d.models import count_parameters
from worlds.shapes3d.zero123 import export, load_parts

REPO = Path(card.__file__).resolve().parents[2]  # wherever this checkout is (CI clones elsewhere)

RECIPE = {"steps": 20000, "batch": 16, "lr": 0.0002, "warmup": 200, "ema": 0.999, "drop_prob": 0.1,
          "input_latent": "raw", "vae_steps": 50, "vae_batch": 12, "vae_lr": 0.001, "scenes": 4000,
          "eval_scenes": 16, "seed": 0, "threads": 1, "device": "cpu", "time_limit": None,
          "init_vae": "assets/shapes-sd/vae"}
LOG = [{"phase": "vae", "step": 0, "psnr_db": 18.17},
       {"phase": "vae", "step": 25, "loss": 0.08, "s_per_step": 1.0},
       {"phase": "vae", "step": 50, "loss": 0.05, "s_per_step": 1.2},
       {"phase": "vae", "done": True, "steps": 50, "psnr_db": 29.5, "scaling_factor": 0.47469},
       {"phase": "cache", "scenes": 64},
       {"phase": "unet", "step": 25, "loss": 0.06, "lr": 0.0002, "s_per_step": 0.4},
       {"phase": "unet", "step": 50, "loss": 0.04321, "lr": 0.0002, "s_per_step": 0.5}]


def _group(psnr: float, iou: float) -> dict:
    return {"views": 6, "objects": 9, "psnr": psnr, "ssim": 0.61, "fg_iou": 0.5, "mask_iou": iou,
            "colour_present": 0.9, "centroid_px": 3.0}


NOVEL_VIEW = {"scenes_file": "cases.json", "scenes": 4, "seeds": 2, "steps": 50, "cfg": 3.0, "device": "cpu",
              "headline_groups": ["off_centre_1", "off_centre_2"], "psnr": 17.0, "ssim": 0.62,
              "mask_iou": 0.45, "colour_present": 0.9, "psnr_copy_input": 14.5, "ssim_copy_input": 0.55,
              "mask_iou_copy_input": 0.28, "seconds_per_view": 0.25,
              "groups": {"off_centre_1": {"model": _group(17.25, 0.47), "copy_input": _group(14.75, 0.31)},
                         "three": {"model": _group(15.5, 0.33), "copy_input": _group(13.5, 0.21)}}}
METHOD = {"ssim": 0.6, "colour_present": 0.9, "nfe": 50, "seconds_per_view": 0.3, "seed_std": 0.05}
Z2H = {"scenes": 4, "seeds": 2, "cfg": 3.0, "device": "cpu",
       "methods": {"plain": {**METHOD, "psnr": 17.0, "mask_iou": 0.45},
                   "plain_equal_nfe": {**METHOD, "psnr": 17.2, "mask_iou": 0.46, "nfe": 66},
                   "z2h": {**METHOD, "psnr": 17.4, "mask_iou": 0.44, "nfe": 66}}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A fake run exported to a model folder with the recipe in training.json, and its train.log."""
    root = tmp_path_factory.mktemp("card")
    run = root / "run"
    run.mkdir()
    _fake_run(run, "raw")
    model = export(run, root / "model")
    (model / "training.json").write_text(json.dumps({"step": 50, "input_latent": "raw", "args": RECIPE}))
    (run / "train.log").write_text("".join(json.dumps(r) + "\n" for r in LOG) + '{"phase": "un')  # torn line
    return model, run / "train.log"


def test_the_card_holds_the_numbers_of_its_files_and_the_computed_verdicts(exported, tmp_path):
    model, log = exported
    nv, z2h = tmp_path / "nv.txt", tmp_path / "z2h.json"
    nv.write_text("a progress line\n" + json.dumps(NOVEL_VIEW) + "\n")  # the eval's stdout: last line counts
    z2h.write_text(json.dumps(Z2H))
    out = card.main(["--model", str(model), "--run-log", str(log), "--novel-view", str(nv),
                     "--z2h", str(z2h)])
    text = out.read_text()
    assert out == model / "MODEL_CARD.md"
    parts = load_parts(model)
    for module in (parts.unet, parts.image_encoder, parts.cc_projection, parts.vae):
        assert f"| {count_parameters(module) / 1e6:.2f} M |" in text
    assert "Zero123Pipeline.from_pretrained" in text and "kxic/zero123-165000" in text
    for fact in ("50 steps done (target 20000), batch 16, AdamW lr 0.0002 (200-step", "EMA 0.999",
                 "min-SNR-5", "0.1 joint condition dropout", "Input latent: `raw`",
                 "4000 scenes (seed 0) x 6",
                 "= 24000 images", "VAE: 100 other scenes", "Machine: cpu, 1 intra-op thread(s)",
                 "VAE: 50 steps at a median 1.100 s/step", "18.17 -> 29.50 dB", "scaling_factor 0.47469",
                 "64 scenes encoded", "UNet: 50 steps logged (run still going) at a median 0.450 s/step",
                 "last logged loss 0.04321",
                 "| off_centre_1 | 6 | 17.250 / 14.750 | 0.610 / 0.610 | 0.470 / 0.310 | 0.900 / 0.900 |",
                 "| three | 6 | 15.500 / 13.500 |", "Measured in the bars' setting (2 seeds, 50 DDIM steps)",
                 "- PSNR >= copy-the-input + 2 dB: **met** (17.00 vs 14.50 dB: +2.50 dB)",
                 "- mask IoU >= 0.5: **not met** (0.450; copy-the-input 0.280)",
                 "- colour present >= 0.8: **met** (0.900)",
                 "| z2h | 17.400 | 0.600 | 0.440 | 0.900 | 66 | 0.300 | 0.050 |",
                 "- Zero-to-Hero PSNR >= plain + 0.3 dB: **met** (17.40 vs 17.00 dB: +0.40 dB)",
                 "- Zero-to-Hero mask IoU >= plain: **not met** (0.440 vs 0.450)",
                 "- Zero-to-Hero PSNR > plain at equal network evaluations: **met** (17.40 vs 17.20 dB)",
                 "## Limitations"):
        assert fact in text, fact


def test_verdicts_follow_the_numbers_and_missing_figures_say_so(exported):
    model, log = exported
    worse = {**NOVEL_VIEW, "psnr": 15.0, "mask_iou": 0.6, "seeds": 1, "steps": 10}
    text = card.build_card(model, log, worse, None)
    assert "- PSNR >= copy-the-input + 2 dB: **not met** (15.00 vs 14.50 dB: +0.50 dB)" in text
    assert "- mask IoU >= 0.5: **met**" in text
    assert "1 seed(s) and 10 DDIM steps" in text and "provisional" in text
    assert "Zero-to-Hero not measured" in text
    bare = card.build_card(model, None)
    assert "compute not recorded" in bare and "`--novel-view`): not measured" in bare


def test_bad_inputs_are_one_clear_error(exported, tmp_path):
    model, log = exported
    with pytest.raises(SystemExit):
        card.main(["--model", str(tmp_path), "--run-log", str(log)])
    bad = tmp_path / "bad.json"
    bad.write_text("not json\n")
    with pytest.raises(SystemExit):
        card.main(["--model", str(model), "--run-log", str(log), "--novel-view", str(bad)])


def test_the_recipe_names_the_pair_sources_the_loss_and_a_given_vae(exported, tmp_path):
    model, _ = exported
    mine = shutil.copytree(model, tmp_path / "model")
    recipe = {**RECIPE, "loss_weights": "x0_floor", "front_pairs": 0.75, "orbit_pairs": 0.0,
              "orbit_scenes": 1500, "azimuth_curriculum": 8000, "copy_pairs": 0.3}
    (mine / "training.json").write_text(json.dumps({"step": 50, "input_latent": "scaled", "args": recipe}))
    log = tmp_path / "train.log"  # the VAE was put in the run folder: no VAE phase in its log
    log.write_text("".join(json.dumps(r) + "\n" for r in [*LOG, {"phase": "cache", "file": "views_orbit.pt",
                                                              "scenes": 1500}] if r["phase"] != "vae"))
    text = card.build_card(mine, log)
    for fact in ("x0-floor weights (min-SNR-5, but the implied x0 error weighs at least 1",
                 "a share of 0.75 front pairs and 0 orbit pairs from a second cache of 1500 scenes",
                 "(seed + 40000, twelve views at one elevation per scene)",
                 "growing to 180 over 8000 steps; copies (target = source) 0.3 of the pairs at first",
                 "- VAE: not trained by this run (Recipe).", "VAE: not trained by this run: its `vae/`",
                 "- VAE: none in this run (given).", "View cache: 64 scenes encoded"):
        assert fact in text, fact
    assert "VAE fine-tune first" not in text and "VAE: 100 other scenes" not in text
    plain = card.build_card(model, exported[1])  # the first recipe: none of these lines
    assert "min-SNR-5 weights;" in plain and "front pairs" not in plain and "curriculum" not in plain


def test_a_model_trained_on_from_another_names_every_stage_and_the_steps_of_all(exported, tmp_path):
    model, log = exported
    mine = shutil.copytree(model, tmp_path / "model")
    first = {"step": 10308, "input_latent": "scaled",
             "args": {**RECIPE, "input_latent": "scaled", "time_limit": 4800.0, "loss_weights": "x0_floor",
                      "front_pairs": 0.75, "orbit_scenes": 1500, "azimuth_curriculum": 8000,
                      "copy_pairs": 0.3, "init": None}}
    second = {"step": 4553, "input_latent": "scaled", "init_record": first,
              "args": {**RECIPE, "input_latent": "scaled", "front_pairs": 0.5, "orbit_scenes": 1500,
                       "init": str(REPO / "assets/shapes3d-zero123")}}
    third = {"step": 9000, "input_latent": "scaled", "init_record": second,
             "args": {**RECIPE, "input_latent": "scaled", "front_pairs": 0.5, "orbit_scenes": 1500,
                      "init": "runs/export_second"}}
    (mine / "training.json").write_text(json.dumps(third))
    run_log = tmp_path / "train.log"  # an --init run logs the VAE it took, and trains none
    run_log.write_text("".join(json.dumps(r) + "\n" for r in
                               [{"phase": "vae", "copied_from": str(REPO / "assets/shapes3d-zero123/vae")},
                                *(r for r in LOG if r["phase"] != "vae")]))
    text = card.build_card(mine, run_log)
    assert "VAE: not trained by this run: taken with `--init` from `assets/shapes3d-zero123/vae`" in text
    assert "VAE fine-tune first" not in text and "- VAE: none in this run (given)." in text
    assert ("- Started from `runs/export_second` as it was then: 4553 steps from `assets/shapes3d-zero123`, "
            "time limit None s on cpu with 1 thread(s)") in text
    assert ("- Started from `assets/shapes3d-zero123` as it was then: 10308 steps from random weights, time "
            "limit 4800.0 s") in text
    assert "growing to 180 over 8000 steps; copies (target = source) 0.3" in text
    assert "- Steps over all stages: 23861." in text
    assert "Started from" not in card.build_card(model, log)  # one stage: no lineage lines
