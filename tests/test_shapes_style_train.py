"""The style model's training path: styled data, a vocabulary that grows from shapes-sd's, a VAE
fine-tuned on styled renders, and an export that a stock StableDiffusionPipeline reloads."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTextModel, CLIPTokenizer

from worlds.shapes import export as export_image
from worlds.shapes import train as train_image
from worlds.shapes.data import prefetched, render_arrays
from worlds.shapes.models import build_text_encoder
from worlds.shapes.styles import STYLES
from worlds.shapes.tokenizer import build_tokenizer, style_words

ASSET = Path(__file__).resolve().parents[1] / "assets" / "shapes-sd"
ALL = ",".join(STYLES)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train.log").read_text().splitlines()]


def test_styles_argument_is_checked():
    assert train_image.parse_args([]).styles == ("flat",)
    assert train_image.parse_args(["--styles", "flat, outline"]).styles == ("flat", "outline")
    for bad in ["sketch", "flat,flat", ""]:
        with pytest.raises(SystemExit):
            train_image.parse_args(["--styles", bad])
    with pytest.raises(SystemExit):
        train_image.parse_args(["--workers", "-1"])


def test_init_vae_mode_fine_tunes_only_for_styles():
    assert train_image.init_vae_mode(train_image.parse_args([])) == "copy"
    assert train_image.init_vae_mode(train_image.parse_args(["--styles", ALL])) == "finetune"
    explicit = train_image.parse_args(["--styles", ALL, "--init-vae", "copy"])
    assert train_image.init_vae_mode(explicit) == "copy"


def test_grown_text_encoder_keeps_every_old_token():
    """Old tokens keep their rows by token (BOS / EOS move to new ids), so an unstyled caption encodes
    exactly as in shapes-sd; the style words get fresh rows."""
    tok = build_tokenizer(style_words(STYLES))
    old_tok = CLIPTokenizer.from_pretrained(ASSET / "tokenizer")
    assert tok.eos_token_id != old_tok.eos_token_id  # the ids really moved
    te = build_text_encoder(tok).eval()
    fresh = te.get_input_embeddings().weight.detach().clone()
    unet = train_image.build_unet()
    new_words = train_image.load_init_weights(ASSET, unet, te, tok)
    assert new_words == sorted(["outline", "hatched", "dotted", "style"])
    old = CLIPTextModel.from_pretrained(ASSET / "text_encoder").eval()
    prompt = "a red circle, a blue square and a yellow triangle"
    kw = {"padding": "max_length", "max_length": 16, "return_tensors": "pt"}
    with torch.no_grad():
        ours = te(tok(prompt, **kw).input_ids)[0]
        theirs = old(old_tok(prompt, **kw).input_ids)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    rows = te.get_input_embeddings().weight.detach()
    for word in ("outline", "style"):
        i = tok.convert_tokens_to_ids(word + "</w>")
        assert torch.equal(rows[i], fresh[i])


def test_parallel_rendering_gives_the_same_batches():
    calls = [(4, s, 3, 64, 16, STYLES) for s in (0, 3, 6)]
    alone = list(prefetched(render_arrays, calls, workers=0))
    pooled = list(prefetched(render_arrays, iter(calls), workers=2, depth=2))
    assert [a["captions"] for a in alone] == [b["captions"] for b in pooled]
    assert all((a["pixels"] == b["pixels"]).all() and (a["masks"] == b["masks"]).all()
               for a, b in zip(alone, pooled, strict=True))


def test_tiny_style_run_resumes_exports_and_reloads(tmp_path):
    """VAE fine-tune (time-boxed) + UNet fine-tune from shapes-sd on styled captions, resume, export
    with a filled card, reload with the stock pipeline and with the vocabulary-checked loader."""
    run = tmp_path / "run"
    common = ["--out", str(run), "--init-pipeline", str(ASSET), "--styles", ALL, "--vae-steps", "1000",
              "--vae-batch", "2", "--vae-time-limit", "1.5", "--vae-lr", "4e-4", "--eval-scenes", "4",
              "--scenes", "8", "--batch", "2", "--log-every", "1", "--save-every", "0"]
    train_image.main(common + ["--steps", "1"])
    train_image.main(common + ["--steps", "2"])  # resumes the UNet at step 1
    records = _records(run)
    vae_done = next(r for r in records if r.get("phase") == "vae" and r.get("done"))
    assert vae_done["stopped"] == "time_limit" and 0 < vae_done["steps"] < 1000
    assert {f"psnr_{s}_db" for s in STYLES} <= vae_done.keys()
    assert any(r.get("resumed_at") == 1 for r in records)
    init = next(r for r in records if "new_words" in r)
    assert init["init_pipeline"] == str(ASSET) and "outline" in init["new_words"]
    cache = torch.load(run / "latents.pt", weights_only=False)
    assert cache["styles"] == list(STYLES) and cache["ids"].shape == (8, 16)
    with pytest.raises(ValueError, match="--styles"):  # a run keeps its styles
        train_image.main(["--out", str(run), "--init-pipeline", str(ASSET), "--styles", "flat,outline",
                          "--scenes", "8", "--batch", "2", "--steps", "3"])

    out = tmp_path / "shapes-style-sd"
    export_image.main(["--run", str(run), "--out", str(out), "--card"])
    words = json.loads((out / "tokenizer" / "shapes_words.json").read_text())
    assert words[-4:] == ["outline", "hatched", "dotted", "style"]
    card = (out / "MODEL_CARD.md").read_text()
    assert f"{vae_done['psnr_hatched_db']} dB" in card and "outline style" in card
    assert json.loads((out / "attn_processors.json").read_text())["sampling"]["guidance_scale"] == 4.0
    assert json.loads((out / "training.json").read_text())["args"]["styles"] == list(STYLES)

    pipe = StableDiffusionPipeline.from_pretrained(out, dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    ids = pipe.tokenizer("a red circle, outline style", add_special_tokens=False).input_ids
    assert len(ids) == 6  # one token per word (",", "outline" and "style" included)
    image = pipe("a red circle, hatched style", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3)

    from worlds.shapes.pipeline import load_pipeline

    checked = load_pipeline(out)
    assert checked.tokenizer("a red circle, dotted style").input_ids == pipe.tokenizer(
        "a red circle, dotted style").input_ids
    with pytest.raises(ValueError, match="sketchy"):
        checked.tokenizer("a red circle, sketchy style")
