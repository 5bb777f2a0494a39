"""The shipped shapes model: loads offline with stock Diffusers, draws what it is asked, attends locally.

Skipped only while ``assets/shapes-sd`` does not exist (before the first export).
"""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from worlds.shapes.attention_check import cross_attention_names, measure
from worlds.shapes.detector import detect
from worlds.shapes.pipeline import CFG_SCALE, DEFAULT_MODEL, load_pipeline

pytestmark = pytest.mark.skipif(
    not (DEFAULT_MODEL / "model_index.json").exists(), reason="assets/shapes-sd not exported yet"
)


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(DEFAULT_MODEL)


def test_asset_layout_is_stock_and_small():
    size = sum(f.stat().st_size for f in DEFAULT_MODEL.rglob("*") if f.is_file())
    assert size <= 30 * 2**20
    index = json.loads((DEFAULT_MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    for cfg in DEFAULT_MODEL.rglob("*.json"):
        assert "_name_or_path" not in cfg.read_text(), cfg
    for part in ("unet", "vae", "text_encoder"):
        assert list((DEFAULT_MODEL / part).glob("*.safetensors")), part
    assert (DEFAULT_MODEL / "MODEL_CARD.md").exists()


def test_stock_loader_generates_offline():
    plain = StableDiffusionPipeline.from_pretrained(DEFAULT_MODEL, dtype=torch.float32, local_files_only=True)
    plain.set_progress_bar_config(disable=True)
    assert isinstance(plain.scheduler, DDIMScheduler)
    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    images = plain(["a red circle"] * 4, num_inference_steps=20, guidance_scale=CFG_SCALE, generator=gens,
                   output_type="np").images
    assert images.shape == (4, 64, 64, 3)
    found = [{d.colour for d in detect((im * 255).round().astype(np.uint8))} for im in images]
    assert sum("red" in f for f in found) >= 3, found


def test_cross_attention_at_several_resolutions(pipe):
    names = cross_attention_names(pipe.unet)
    sizes = set()
    hooks = [pipe.unet.get_submodule(n.removesuffix(".processor")).register_forward_hook(
        lambda m, args, out: sizes.add(out.shape[1])) for n in names]
    with torch.no_grad():
        ids = pipe.tokenizer("a red circle", padding="max_length", return_tensors="pt").input_ids
        text = pipe.text_encoder(ids)[0]
        pipe.unet(torch.randn(1, 4, 16, 16), torch.tensor([10]), text)
    for h in hooks:
        h.remove()
    assert len(sizes) >= 2, sizes  # token counts 256 / 64 / 16 -> 16x16, 8x8, 4x4


def test_out_of_vocabulary_prompt_is_named(pipe):
    with pytest.raises(ValueError, match="pink"):
        pipe("a pink circle", num_inference_steps=1)


def test_colour_words_attend_to_their_objects(pipe):
    # Full measure (50 images) in benchmarks/shapes_eval.py; here 8 images and the averaged maps.
    prompts = ["a red circle", "a blue square", "a yellow triangle", "a green circle and a purple square",
               "a orange square", "a purple triangle and a yellow circle"]
    report = measure(pipe, prompts, seeds=[0], steps=20, cfg=CFG_SCALE)
    avg = report["maps_averaged_over_layers"]
    assert avg["words"] >= 5
    assert avg["mass_ratio"] >= MIN_MASS_RATIO and avg["peak_in_box"] >= MIN_PEAK_IN_BOX, report


# Thresholds from the acceptance (>= 2x the box's area share, peak in box >= 60 %).
MIN_MASS_RATIO = 2.0
MIN_PEAK_IN_BOX = 0.6
