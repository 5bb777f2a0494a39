"""The text + depth model card is written from its files: architecture and parameter counts from the
exported folder, recipe and compute from the trainer's own train.log, figures and the issue-15/17 verdicts
from the eval JSON; bad inputs are one clear error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import CLIPTextModel

from tests.test_shapes3d_depth_train import TINY
from worlds.shapes3d import depth_card
from worlds.shapes3d.models import count_parameters
from worlds.shapes3d.train_depth import main as train

GROUP = {"images": 12, "objects": 18, "mask_iou": 0.61, "psnr": 21.5}
EVAL = {"model": "m", "scenes_file": "cases.json", "scenes": 8, "steps": 20, "cfg": 4.0, "mask_iou": 0.6,
        "colour_accuracy": 0.93, "depth_adherence": 0.85, "seconds_per_image": 0.125, "images": 24,
        "device": "cpu", "groups": {"one": {**GROUP, "colour_accuracy": 0.95, "depth_adherence": 0.9},
                                    "two": {**GROUP, "colour_accuracy": 0.875, "depth_adherence": 0.8}}}
METHOD = {"consistency_raw": 9.0, "seconds": 30.0}
QNERF = {"scenes": 8, "views": 8, "steps": 20, "model": "m",
         "methods": {"per_view": {**METHOD, "consistency_error": 10.0, "gt_psnr": 18.0, "edit_success": 0.5},
                     "qnerf": {**METHOD, "consistency_error": 6.5, "gt_psnr": 18.25, "edit_success": 0.5}}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny run of the real trainer, exported: the model folder and the run's train.log."""
    root = tmp_path_factory.mktemp("depth_card")
    out, dest = root / "run", root / "shapes3d-sd"
    train(["--out", str(out), "--steps", "2", "--controlnet-steps", "2", *TINY])
    train(["--out", str(out), "--export", str(dest)])
    with open(out / "train.log", "a") as f:
        f.write('{"phase": "contr')  # a torn last line, as a live run leaves it
    return dest, out / "train.log"


def _log(path: Path) -> list[dict]:
    return depth_card.read_log(path)


def _write(path: Path, obj: object) -> Path:
    path.write_text("a progress line\n" + json.dumps(obj) + "\n")  # the eval's stdout: last line counts
    return path


def test_the_card_holds_the_numbers_of_its_files(exported, tmp_path):
    model, log = exported
    out = depth_card.main(["--model", str(model), "--run-log", str(log), "--eval",
                           str(_write(tmp_path / "ev.txt", EVAL)), "--qnerf",
                           str(_write(tmp_path / "q.txt", QNERF))])
    assert out == model / "MODEL_CARD.md"
    text = out.read_text()
    parts = (UNet2DConditionModel.from_pretrained(model / "unet"), CLIPTextModel.from_pretrained(
        model / "text_encoder"), AutoencoderKL.from_pretrained(model / "vae"),
             ControlNetModel.from_pretrained(model / "controlnet-depth"))
    for module in parts:
        assert f"| {count_parameters(module) / 1e6:.2f} M |" in text
    total = sum(count_parameters(m) for m in parts)
    assert f"{total / 1e6:.2f} M parameters)" in text
    records = _log(log)
    seconds = {p: sum(r["s_per_step"] for r in records if r.get("phase") == p and "s_per_step" in r)
               for p in ("unet", "controlnet")}  # --log-every 1: one step per progress line
    losses = {p: [r["loss"] for r in records if r.get("phase") == p and "loss" in r]
              for p in ("unet", "controlnet")}
    for phase in ("unet", "controlnet"):
        assert (f"(`{phase}`): 2 steps (reached the step target; target 2, no time limit), shipped at step 2 "
                "(`training.json`); batch 2, lr 0.0004 (2-step warm-up)") in text
        assert (f"logged loss {losses[phase][0]:.5f} -> {losses[phase][-1]:.5f}; "
                f"{seconds[phase]:.1f} s of training, 0 resume(s)") in text
    for fact in ("StableDiffusionControlNetPipeline.from_pretrained(folder, controlnet=controlnet",
                 'ControlNetModel.from_pretrained(folder / "controlnet-depth", local_files_only=True)',
                 "height=64, width=64, num_inference_steps=20, guidance_scale=4.0",
                 "init: random initialisation", "init: the text-to-image UNet's EMA weights",
                 "min-SNR-5", "Machine: cpu, 1 intra-op thread(s).", "Cache: 2 scenes x 6 views = 12 images",
                 "no `vae` phase in this log", "14 words (one token each)", "`model_max_length` 16",
                 "| one | 12 | 18 | 0.610 | 0.950 | 0.900 | 21.500 |",
                 "| **all** | 24 | | 0.600 | 0.930 | 0.850 | |", "Seconds per image: 0.125.",
                 "- colour accuracy >= 0.9 (one-object group): **met** (0.950 over 12 images)",
                 "- colour accuracy >= 0.9 (two-object group): **not met** (0.875 over 12 images)",
                 "- depth adherence >= 0.8 (one-object group): **met** (0.900",
                 "- depth adherence >= 0.8 (two-object group): **met** (0.800",
                 "| qnerf | all | 6.500 | 9.000 | 18.250 | 0.500 | 30.000 |",
                 "- consistency error >= 30% below per-view: **met** (6.500 vs 10.000: 35 % lower)",
                 "- edit success not lower than per-view: **met** (0.500 vs 0.500)",
                 "- ground-truth PSNR not lower than per-view: **met** (18.250 vs 18.000)",
                 "Closed vocabulary of 14 words", "`cube`", "trained on cpu for", "## Limitations"):
        assert fact in text, fact


def test_verdicts_follow_the_numbers_and_missing_figures_say_so(exported):
    model, log = exported
    groups = {"one": {**EVAL["groups"]["one"], "depth_adherence": 0.7}}  # no two-object group
    worse_q = {"methods": {"per_view": QNERF["methods"]["per_view"],
                           "qnerf": {"consistency_error": 8.0, "gt_psnr": 17.5, "edit_success": 0.75}}}
    text = depth_card.build_card(model, log, {**EVAL, "groups": groups}, [worse_q])
    assert "- depth adherence >= 0.8 (one-object group): **not met** (0.700 over 12 images)" in text
    assert "- colour accuracy >= 0.9 (two-object group): not measured (no `two` group in the eval)" in text
    assert "- consistency error >= 30% below per-view: **not met** (8.000 vs 10.000: 20 % lower)" in text
    assert "- edit success not lower than per-view: **met** (0.750 vs 0.500)" in text
    assert "- ground-truth PSNR not lower than per-view: **not met** (17.500 vs 18.000)" in text
    (model / "MODEL_CARD.md").unlink(missing_ok=True)  # no earlier card to keep a recipe from
    bare = depth_card.build_card(model, None)
    assert "`--eval`): text + depth not measured" in bare and "`--qnerf`): QNeRF not measured" in bare
    assert "recipe and compute not recorded" in bare and "{'unet': 2, 'controlnet': 2}" in bare


def test_bad_inputs_are_one_clear_error(exported, tmp_path, capsys):
    model, log = exported

    def error(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exc:
            depth_card.main(argv)
        assert exc.value.code == 2
        return capsys.readouterr().err

    assert "no model_index.json" in error(["--model", str(tmp_path), "--run-log", str(log)])
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model_index.json").write_text("{}")
    assert "no controlnet-depth/config.json" in error(["--model", str(bare), "--run-log", str(log)])
    wrong = _write(tmp_path / "wrong.json", {"mask_iou": 0.5})
    msg = error(["--model", str(model), "--run-log", str(log), "--eval", str(wrong)])
    assert str(wrong) in msg and "colour_accuracy" in msg and "shapes3d_eval.py" in msg
    msg = error(["--model", str(model), "--run-log", str(log), "--qnerf", str(wrong)])
    assert str(wrong) in msg and "per_view" in msg and "qnerf_eval.py" in msg
    notjson = tmp_path / "bad.txt"
    notjson.write_text("not json\n")
    assert "not JSON" in error(["--model", str(model), "--run-log", str(log), "--eval", str(notjson)])
    assert "no such file" in error(["--model", str(model), "--run-log", str(tmp_path / "none.log")])
    with pytest.raises(ValueError, match="controlnet-depth"):
        depth_card.build_card(bare, None)


def test_the_log_adds_up_across_resumes_and_recipe_changes():
    """Seconds = s/step x the steps since the previous line (or the step an invocation started at); a
    second invocation's changed lr shows as "then"; an init line and a VAE phase are reported."""
    start = {"step": 0, "target_steps": 100, "time_limit": None, "batch": 16, "lr": 0.0004, "warmup": 10,
             "decay_tail": 0.3, "ema": 0.999, "empty_prob": 0.1, "init_pipeline": "assets/shapes-sd",
             "device": "cpu", "threads": 1}
    records = [{"phase": "vae", "step": 0, "psnr_db": 18.2},
               {"phase": "vae", "done": True, "steps": 40, "psnr_db": 30.1, "scaling_factor": 0.5},
               {"phase": "unet", "init": "assets/shapes-sd", "new_words": ["cone", "cube"]},
               {"phase": "unet", "start": start},
               {"phase": "unet", "step": 25, "loss": 0.2, "s_per_step": 1.0},
               {"phase": "unet", "step": 50, "loss": 0.1, "s_per_step": 2.0},
               {"phase": "unet", "resumed_at": 40},
               {"phase": "unet", "start": {**start, "step": 40, "lr": 0.0002, "time_limit": 600.0}},
               {"phase": "unet", "step": 50, "loss": 0.09, "s_per_step": 3.0},
               {"phase": "unet", "step": 75, "loss": 0.08, "s_per_step": 4.0}]
    lg = depth_card.phase_log(records, "unet")
    assert lg["seconds"] == 25 * 1.0 + 25 * 2.0 + 10 * 3.0 + 25 * 4.0
    assert lg["steps"] == 75 and not lg["done"] and lg["resumes"] == 1
    assert (lg["first_loss"], lg["last_loss"]) == (0.2, 0.08)
    logs = {"unet": lg, "controlnet": depth_card.phase_log(records, "controlnet")}
    text = "\n".join(depth_card.recipe(logs, {"unet": 75}))
    assert "75 steps (no `done` line after the last start: still running or interrupted" in text
    assert "time limit none then 600.0 s" in text and "lr 0.0004 then 0.0002" in text
    assert "decayed over the last 30% of the time limit" in text
    assert "init: `assets/shapes-sd` (shared words keep their embeddings; new words cone, cube)" in text
    assert "`controlnet`): not in this log" in text
    vae = "\n".join(depth_card.compute(records, logs))
    assert "VAE: fine-tuned in this run, 40 steps; held-out PSNR 18.20 -> 30.10 dB" in vae
    assert "`unet`: 75 steps, 3.4 min at a median 2.500 s/step" in vae


def test_several_qnerf_settings_get_a_section_each_with_their_groups(exported, tmp_path):
    model, log = exported
    source = {**QNERF, "control": "source", "alpha": 20.0, "guidance_steps": 16,
              "groups": {"shape": {"per_view": {**METHOD, "consistency_error": 16.0},
                                   "qnerf": {**METHOD, "consistency_error": 8.0}}}}
    out = depth_card.main(["--model", str(model), "--run-log", str(log),
                           "--qnerf", str(_write(tmp_path / "q.txt", QNERF)),
                           "--qnerf", str(_write(tmp_path / "s.txt", source))])
    text = out.read_text()
    assert "gets the edited scene's depth" in text and "gets the source views' depth" in text
    assert "alpha 20.0, guidance_steps 16" in text
    assert "| qnerf | shape | 8.000 |" in text and "| per_view | shape | 16.000 |" in text
    assert "**Issue 17 bars** (edited depth)" in text and "**Issue 17 bars** (source depth)" in text


def test_new_figures_without_the_run_log_keep_the_recipe_read_from_it_before(exported, tmp_path):
    model, log = exported
    started = tmp_path / "train.log"  # the run as the shipped one was: its UNet started from shapes-sd
    init = {"phase": "unet", "init": "assets/shapes-sd", "new_words": ["cone"]}
    started.write_text(json.dumps(init) + "\n" + log.read_text())
    card = model / "MODEL_CARD.md"
    card.write_text(depth_card.build_card(model, started, EVAL), encoding="utf-8")
    before = card.read_text()
    recipe = before[before.index("## Recipe"):before.index("## Figures")]
    limitation = next(x for x in before.splitlines() if x.startswith("- Small ("))
    encoder = next(x for x in before.splitlines() if x.startswith("- The depth control"))
    out = depth_card.main(["--model", str(model), "--qnerf", str(_write(tmp_path / "q.txt", QNERF))])
    after = out.read_text()
    assert recipe in after and "steps (reached the step target" in recipe
    assert limitation in after and "trained on cpu for" in limitation
    assert encoder in after and ", through `" in encoder  # the UNet's starting folder, read from the recipe
    assert "| qnerf | all | 6.500 |" in after and "No train.log was given" not in after
    card.unlink()  # with no earlier card and no log, the card says so instead
    assert "recipe and compute not recorded" in depth_card.build_card(model, None)


def test_the_qnerf_bar_words_a_change_either_way_and_none():
    assert depth_card._change(0.054) == "5 % lower"
    assert depth_card._change(-0.02) == "2 % higher"
    assert depth_card._change(-0.0001) == "no change"


def test_a_joint_fine_tune_of_the_shipped_weights_adds_its_section_to_the_carried_recipe(exported, tmp_path):
    """A later `--phase joint` run from the exported folder: its log holds no base phase, so the card keeps
    the recipe read before and appends the fine-tune (once, however often it is regenerated)."""
    import shutil

    model, log = exported
    (model / "MODEL_CARD.md").write_text(depth_card.build_card(model, log, EVAL), encoding="utf-8")
    tuned, run = tmp_path / "tuned", tmp_path / "ft_run"
    shutil.copytree(model, tuned)
    train(["--out", str(run), "--phase", "joint", "--joint-steps", "2", "--init-pipeline", str(model),
           "--multi-object-frac", "0.5", *TINY])
    train(["--out", str(run), "--export", str(tuned)])
    first = depth_card.main(["--model", str(tuned), "--run-log", str(run / "train.log")]).read_text()
    again = depth_card.main(["--model", str(tuned), "--run-log", str(run / "train.log")]).read_text()
    ev = str(_write(tmp_path / "e.txt", EVAL))
    kept = depth_card.main(["--model", str(tuned), "--eval", ev]).read_text()
    for text in (first, again, kept):
        assert text.count("## Fine-tune") == 1 and "(`unet`): 2 steps" in text
        assert "(`joint`): 2 steps" in text and "0.5 of each batch from views of two or more" in text
        assert f"the EMA weights of `{model}`" in text and "shipped at step 2" in text
        assert re.search(r"for [0-9.]+ \S+ plus a [0-9.]+ s fine-tune of logged training", text)
    assert "| two | 12 | 18 |" in kept
    orphan = tmp_path / "orphan"
    shutil.copytree(tuned, orphan)
    (orphan / "MODEL_CARD.md").unlink()
    with pytest.raises(ValueError, match="no unet or controlnet phase"):
        depth_card.build_card(orphan, run / "train.log")
