"""Settings tuned for a model travel with it: ``<model folder>/attn_processors.json`` gives
LayoutToImagePipeline its defaults (per-call values win); a folder without the file gets LayoutConfig's
(paper) defaults; a malformed file fails naming its path. Also the shipped shapes model's bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from attn_processors.layout import LayoutConfig
from pipelines.layout_to_image import SETTINGS_FILE, LayoutToImagePipeline, ModelSettings
from tests.test_layout_pipeline import BOXES, PHRASES, PROMPT, tiny_components

SHAPES_SD = Path(__file__).resolve().parents[1] / "assets" / "shapes-sd"
PAPER = {f.name: f.default for f in dataclasses.fields(LayoutConfig)
         if f.default is not dataclasses.MISSING and f.name != "phrases"}


def _steps(pipe: LayoutToImagePipeline, **kwargs) -> tuple[int, list[tuple[int, int, float]]]:
    """(denoising steps run, guidance losses) of one call on the shapes layout."""
    seen: list[int] = []

    def count(p, i, t, kw):
        seen.append(i)
        return kw

    out = pipe(PROMPT, boxes=BOXES, phrases=PHRASES, output_type="latent", callback_on_step_end=count,
               generator=torch.Generator().manual_seed(0), **kwargs)
    return len(seen), out.losses


@pytest.fixture(scope="module")
def shapes_pipe() -> LayoutToImagePipeline:
    pipe = LayoutToImagePipeline.from_pretrained(SHAPES_SD, dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A saved tiny SD pipeline: a model folder with no settings file."""
    folder = tmp_path_factory.mktemp("tiny-sd")
    StableDiffusionPipeline(**tiny_components(), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


def _load(folder: Path) -> LayoutToImagePipeline:
    pipe = LayoutToImagePipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_model_carries_its_tuned_settings(shapes_pipe):
    data = json.loads((SHAPES_SD / SETTINGS_FILE).read_text())
    assert data["description"] and data["sampling"] == {"num_inference_steps": 20, "guidance_scale": 4.0}
    assert shapes_pipe.settings.source == SHAPES_SD / SETTINGS_FILE
    assert shapes_pipe.settings.layout == data["LayoutConfig"] == {
        "scale_factor": 1.0, "guided_steps": 2, "iterations": 17, "redistribute_last_step": 10,
        "res_factor": 1}
    cfg = shapes_pipe.layout_config(PROMPT, PHRASES, BOXES)  # no case file, no parameters
    assert (cfg.scale_factor, cfg.guided_steps, cfg.iterations, cfg.redistribute_last_step, cfg.res_factor) \
        == (1.0, 2, 17, 10, 1)
    assert cfg.topk_coef == PAPER["topk_coef"]  # not in the file: the paper's value
    steps, _ = _steps(shapes_pipe, mode="none")
    assert steps == 20  # the model's sampling default, not Stable Diffusion's 50


def test_per_call_values_win_over_the_model_settings(shapes_pipe):
    steps, losses = _steps(shapes_pipe, mode="guidance", num_inference_steps=3, guidance_scale=1.0,
                           layout_params={"iterations": 2})
    assert steps == 3
    # guided_steps=2 from the model folder, iterations=2 from the call
    assert [(s, i) for s, i, _ in losses] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    cfg = shapes_pipe.layout_config(PROMPT, PHRASES, BOXES, scale_factor=3.0)
    assert cfg.scale_factor == 3.0 and cfg.iterations == 17


def test_settings_follow_from_pipe(shapes_pipe):
    stock = StableDiffusionPipeline.from_pretrained(SHAPES_SD, dtype=torch.float32, local_files_only=True)
    assert LayoutToImagePipeline.from_pipe(stock).settings == shapes_pipe.settings


def test_folder_without_the_file_gets_the_paper_defaults(tiny_folder):
    pipe = _load(tiny_folder)
    assert pipe.settings == ModelSettings() and pipe.settings.source is None
    cfg = pipe.layout_config(PROMPT, PHRASES, BOXES)
    assert {k: getattr(cfg, k) for k in PAPER} == PAPER
    assert (cfg.guided_steps, cfg.iterations, cfg.scale_factor) == (25, 5, 0.5)
    steps, _ = _steps(pipe, mode="none")
    assert steps == 50  # Stable Diffusion's default


def test_a_settings_file_in_another_folder_is_read(tiny_folder, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    (folder / SETTINGS_FILE).write_text(json.dumps({
        "description": "test", "sampling": {"num_inference_steps": 4},
        "LayoutConfig": {"guided_steps": 1, "iterations": 3, "scale_factor": 40.0},
        "SageConfig": {"anything": "another technique's section is left alone"}}))
    pipe = _load(folder)
    steps, losses = _steps(pipe, mode="guidance")
    assert steps == 4 and [(s, i) for s, i, _ in losses] == [(0, 0), (0, 1), (0, 2)]


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", r"is not valid JSON .*; fix it, or delete it to use the LayoutConfig defaults"),
    ("[1, 2]", r"expected a JSON object with sections such as"),
    ('{"LayoutConfig": [1]}', r'section "LayoutConfig" must be a JSON object, got list'),
    ('{"LayoutConfig": {"keep": 0.5}}', r"unknown LayoutConfig parameters \['keep'\]; use some of"),
    ('{"LayoutConfig": {"boxes": [[0, 0, 1, 1]]}}', r"unknown LayoutConfig parameters \['boxes'\]"),
    ('{"LayoutConfig": {"iterations": -2}}', r"iterations=-2 must be >= 0"),
    ('{"LayoutConfig": {"scale_factor": "big"}}', r"LayoutConfig parameters .*scale_factor"),
    ('{"sampling": {"steps": 20}}', r"unknown \"sampling\" keys \['steps'\]; use some of"),
    ('{"sampling": {"num_inference_steps": 0}}', r"num_inference_steps=0; give a positive integer"),
])
def test_a_malformed_settings_file_is_a_clear_error_naming_its_path(tiny_folder, tmp_path, content, message):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    path = folder / SETTINGS_FILE
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        LayoutToImagePipeline.from_pretrained(folder, local_files_only=True)
    assert str(err.value).startswith(str(path))


def test_a_word_outside_the_vocabulary_anywhere_in_the_prompt_is_refused(shapes_pipe):
    """The shapes tokenizer would split an unknown word into characters; the pipeline refuses it
    wherever it stands (inside a phrase, elsewhere in the prompt, in the negative prompt)."""
    call = dict(boxes=[(0.05, 0.05, 0.45, 0.45)], phrases=["red circle"], num_inference_steps=1,
                output_type="latent")
    with pytest.raises(ValueError, match=r"words outside the shapes vocabulary: \['on', 'grass'\]"):
        shapes_pipe("a red circle on grass", **call)
    with pytest.raises(ValueError, match=r"outside the shapes vocabulary: \['dog'\]"):
        shapes_pipe("a red dog", **{**call, "phrases": ["red dog"]})
    with pytest.raises(ValueError, match=r"outside the shapes vocabulary: \['blurry'\]"):
        shapes_pipe("a red circle", negative_prompt="blurry", **call)
    with pytest.raises(ValueError, match=r"outside the shapes vocabulary: \['cat'\]"):
        shapes_pipe("a cat", num_inference_steps=1, mode="none", output_type="latent")


def test_bad_input_on_the_shipped_model(shapes_pipe):
    call = dict(boxes=[(0.05, 0.05, 0.45, 0.45)], phrases=["red circle"], output_type="latent")
    with pytest.raises(ValueError, match=r"height=-64; give a positive multiple of 4 pixels .* height=64"):
        shapes_pipe("a red circle", height=-64, **call)
    with pytest.raises(ValueError, match=r"num_inference_steps=0; give a positive integer"):
        shapes_pipe("a red circle", num_inference_steps=0, **call)
    with pytest.raises(ValueError, match=r"num_inference_steps=-5; give a positive integer"):
        shapes_pipe("a red circle", num_inference_steps=-5, **call)
    with pytest.raises(ValueError, match=r"phrases='red circle' is one string; give a list"):
        shapes_pipe("a red circle", **{**call, "phrases": "red circle"})
