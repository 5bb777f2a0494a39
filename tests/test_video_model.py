"""Moving-shapes video model: data, tokenizer, training-time exactness tricks, attention probe."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from worlds.moving_shapes import models as vm
from worlds.moving_shapes import train as tv
from worlds.moving_shapes.attention_check import diagonal_mass, install_probes
from worlds.moving_shapes.data import DIRECTION_VECTORS, eval_prompts, sample_video
from worlds.moving_shapes.detect import score_video
from worlds.moving_shapes.tokenizer import build_video_tokenizer, check_prompt, unknown_words
from worlds.shapes.vocab import WORDS


def test_clip_geometry_and_caption():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = sample_video(rng, num_frames=17, size=64)
        assert s.frames.shape == (17, 64, 64, 3) and s.frames.dtype == np.uint8
        assert s.caption == " and ".join(o.phrase for o in s.objects)
        for o in s.objects:
            b = o.boxes
            assert b.min() >= 0 and b.max() <= 64
            step = np.diff(b[:, :2], axis=0)  # (T-1, 2) per-frame displacement
            dx, dy = DIRECTION_VECTORS[o.direction]
            assert np.allclose(step, step[0], atol=1e-4)  # steady speed
            assert np.sign(step[0][0]) == dx and np.sign(step[0][1]) == dy
            assert 16 <= abs(step[0]).sum() * 16 <= 26  # travel over the clip, px
        if len(s.objects) == 2:
            a, c = s.objects[0].boxes, s.objects[1].boxes
            overlap_x = np.minimum(a[:, 2], c[:, 2]) - np.maximum(a[:, 0], c[:, 0])
            overlap_y = np.minimum(a[:, 3], c[:, 3]) - np.maximum(a[:, 1], c[:, 1])
            assert np.all((overlap_x < 0) | (overlap_y < 0))
            assert s.objects[0].colour != s.objects[1].colour


def test_pinned_object_and_bad_input():
    s = sample_video(
        np.random.default_rng(1), num_objects=1, colour="purple", shape="triangle", direction="up"
    )
    assert s.caption == "a purple triangle moving up"
    with pytest.raises(ValueError, match="unknown colour"):
        sample_video(np.random.default_rng(1), colour="pink")
    with pytest.raises(ValueError, match="num_objects"):
        sample_video(np.random.default_rng(1), num_objects=3)


def test_detector_scores_ground_truth_clips_perfectly():
    rng = np.random.default_rng(3)
    for n in (1, 2):
        s = sample_video(rng, num_objects=n)
        r = score_video(s.frames, [(o.colour, o.shape, o.direction) for o in s.objects])
        assert r["colour_accuracy"] == r["motion_accuracy"] == r["shape_accuracy"] == 1.0
        assert r["temporal_consistency"] == 1.0


def test_static_or_missing_object_is_scored_wrong():
    s = sample_video(np.random.default_rng(4), num_objects=1, colour="red", direction="right")
    frozen = np.repeat(s.frames[:1], len(s.frames), axis=0)  # the object never moves
    r = score_video(frozen, [("red", s.objects[0].shape, "right")])
    assert r["colour_accuracy"] == 1.0 and r["motion_accuracy"] == 0.0
    assert r["objects"][0]["direction"] == "static"
    reversed_clip = s.frames[::-1]
    assert (
        score_video(reversed_clip, [("red", s.objects[0].shape, "right")])["objects"][0]["direction"]
        == "left"
    )
    assert score_video(s.frames, [("blue", "circle", "right")])["colour_accuracy"] == 0.0


def test_eval_prompts_are_balanced_and_fixed():
    one = eval_prompts(40, 1, seed=0)
    assert one == eval_prompts(40, 1, seed=0)
    assert len({p["prompt"] for p in one}) == 40
    colours = [p["objects"][0][0] for p in one]
    assert len(set(colours)) == 6
    two = eval_prompts(5, 2, seed=1)
    assert all(" and " in p["prompt"] and len(p["objects"]) == 2 for p in two)


def test_tokenizer_words_are_single_pieces_and_roundtrip(tmp_path):
    from transformers import AutoTokenizer

    tok = build_video_tokenizer()
    ids = tok("a red circle moving right and a blue square moving up").input_ids
    assert len(ids) == 12 and ids[-1] == tok.eos_token_id == 1
    for w in WORDS:
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").exists()
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("a green triangle moving left").input_ids == tok("a green triangle moving left").input_ids


def test_unknown_words_are_named():
    assert unknown_words("a red circle, a blue square") == []
    assert unknown_words("a Red zebra moving sideways") == ["zebra", "sideways"]
    with pytest.warns(UserWarning, match="zebra"):
        check_prompt("a red zebra")
    with pytest.raises(ValueError, match="zebra"):
        check_prompt("a red zebra", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_prompt("a red circle moving up") == []


def _perturbed_transformer():
    torch.manual_seed(0)
    tr = vm.make_transformer()
    with torch.no_grad():  # non-zero biases so the zero-padding key is not trivial
        for p in tr.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return tr.eval()


def test_padded_cross_attention_equals_512_padding():
    tok = build_video_tokenizer()
    te = vm.make_text_encoder(len(tok)).eval()
    tr = _perturbed_transformer()
    caps = ["a red circle moving right", "", "a red circle moving right and a blue square moving up"]
    x, t = torch.randn(3, vm.Z_DIM, 2, 8, 8), torch.tensor([100.0, 500.0, 900.0])
    with torch.no_grad():
        ref = tr(
            x, timestep=t, encoder_hidden_states=tv.encode_text(te, tok, caps, "cpu"), return_dict=False
        )[0]
        short, lengths = tv.encode_text_short(te, tok, caps, "cpu")
        assert short.shape[1] == 32 and lengths.tolist() == [6, 1, 12]
        proc = tv.install_padded_cross_attn(tr)
        proc.bias = tv.padding_bias(lengths, short.shape[1])
        out = tr(x, timestep=t, encoder_hidden_states=short, return_dict=False)[0]
        proc.bias = None  # without the bias the short padding is a different model
        naive = tr(x, timestep=t, encoder_hidden_states=short, return_dict=False)[0]
    assert torch.allclose(out, ref, atol=1e-4)
    assert (naive - ref).abs().max() > 1e-2


def test_frame_tile_probe_is_exact_and_measures_mass():
    tr = _perturbed_transformer()
    x, c, t = torch.randn(2, vm.Z_DIM, 3, 8, 8), torch.randn(2, 7, 128), torch.tensor([10.0, 900.0])
    with torch.no_grad():
        ref = tr(x, timestep=t, encoder_hidden_states=c, return_dict=False)[0]
        probes = install_probes(tr, frames=3, record=True)
        out = tr(x, timestep=t, encoder_hidden_states=c, return_dict=False)[0]
    assert torch.allclose(out, ref, atol=1e-4)
    assert len(probes) == len(tr.blocks) and probes[0].history[0].shape == (2, 4)
    # reference maps: uniform -> 1/F on the diagonal; block-diagonal -> 1
    f, tpf = 4, 5
    uniform = torch.full((1, 2, f * tpf, f * tpf), 1.0 / (f * tpf))
    assert torch.allclose(diagonal_mass(uniform, f), torch.full((1, 2), 1.0 / f))
    block = torch.block_diag(*[torch.full((tpf, tpf), 1.0 / tpf)] * f)[None, None]
    assert torch.allclose(diagonal_mass(block, f), torch.ones(1, 1))
    with pytest.raises(ValueError, match="multiple"):
        diagonal_mass(torch.ones(1, 1, 7, 7) / 7, 2)


def test_flow_sigmas_follow_the_sampler_shift():
    s = tv.flow_sigmas(20000, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert 0 < s.min() and s.max() < 1
    # shift 3 maps the median u=0.5 to 0.75
    assert abs(s.median().item() - 0.75) < 0.01


def test_training_summary_reads_the_log(tmp_path):
    from worlds.moving_shapes.export import training_summary

    recs = [
        {"time": 0.0, "stage": "vae", "step": 20, "loss": 0.5},
        {"time": 600.0, "stage": "vae", "step": 40, "loss": 0.2},
        {"time": 610.0, "stage": "vae", "done": True, "psnr_full": 28.5},
        {"time": 620.0, "stage": "cache", "clips": 64},
        {"time": 680.0, "stage": "dit", "step": 50, "loss": 0.3},
        {"time": 3680.0, "stage": "dit", "step": 100, "loss": 0.1},
    ]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    s = training_summary(tmp_path)
    assert s["vae"]["steps"] == 40 and s["vae"]["psnr_full"] == 28.5 and s["vae"]["wall_minutes"] == 10.2
    assert s["cache"]["clips"] == 64
    assert s["dit"]["steps"] == 100 and s["dit"]["wall_minutes"] == 50.0 and s["dit"]["last"]["loss"] == 0.1


@pytest.mark.slow
def test_training_script_runs_resumes_and_exports(tmp_path):
    from diffusers import WanPipeline

    from worlds.moving_shapes.export import main as export_main

    args = [
        "--out",
        str(tmp_path / "run"),
        "--vae-steps",
        "4",
        "--vae-batch",
        "4",
        "--cache-size",
        "8",
        "--dit-steps",
        "3",
        "--dit-batch",
        "2",
    ]
    tv.main(args)
    tv.main([*args[:-4], "--dit-steps", "5", "--dit-batch", "2"])  # resumes from step 3
    assert torch.load(tmp_path / "run" / "dit.pt", weights_only=False)["step"] == 5
    export_main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "asset")])
    pipe = WanPipeline.from_pretrained(tmp_path / "asset")
    assert pipe.vae.config.latents_std != [1.0] * vm.Z_DIM
    assert (tmp_path / "asset" / "MODEL_CARD.md").exists()


def test_object_weighted_reconstruction_loss_targets_shape_pixels():
    x = torch.stack([tv.frames_to_tensor(sample_video(np.random.default_rng(i), num_objects=1).frames)
                     for i in range(2)])
    w = tv.object_weights(x, 4.0)
    assert w.shape == (2, 1, *x.shape[2:]) and set(w.unique().tolist()) == {1.0, 4.0}
    assert 0.01 < float((w > 1).float().mean()) < 0.2  # shapes are a few percent of the pixels
    # an error on shape pixels costs more than the same error on the background
    on_shape = (w > 1).expand_as(x)
    y_shape, y_bg = x.clone(), x.clone()
    y_shape[on_shape] += 0.2
    y_bg[~on_shape] += 0.2 * on_shape.float().mean() / (1 - on_shape.float().mean())  # same total error
    assert tv.reconstruction_loss(y_shape, x, 4.0) > 2 * tv.reconstruction_loss(y_bg, x, 4.0)
    assert torch.allclose(tv.reconstruction_loss(x + 0.1, x, 1.0), torch.tensor(0.1 + 0.01))


def test_cross_attention_gain_and_decay_groups():
    torch.manual_seed(0)
    transformer = vm.make_transformer()
    tv.set_cross_attention_gain(transformer, 2.5)
    with torch.no_grad():
        assert all(bool((b.attn2.norm_q.weight == 2.5).all() and (b.attn2.norm_k.weight == 2.5).all())
                   for b in transformer.blocks)
        assert all(bool((b.attn1.norm_q.weight == 1.0).all() and (b.attn1.norm_k.weight == 1.0).all())
                   for b in transformer.blocks)  # self-attention untouched
    decay, keep = tv.decay_groups([transformer], 1e-2)
    assert decay["weight_decay"] == 1e-2 and keep["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in keep["params"])
    assert any(p is transformer.blocks[0].attn2.norm_q.weight for p in keep["params"])
    assert len(decay["params"]) + len(keep["params"]) == len(list(transformer.parameters()))


def test_dit_learning_rate_schedule():
    assert tv.dit_lr_factor(0) == pytest.approx(1 / 200) and tv.dit_lr_factor(5000) == 1.0
    assert tv.dit_lr_factor(1000, 1000, 3000) == 1.0
    assert tv.dit_lr_factor(2000, 1000, 3000) == pytest.approx(0.55)
    assert tv.dit_lr_factor(3000, 1000, 3000) == pytest.approx(0.1) == tv.dit_lr_factor(9000, 1000, 3000)
    for bad in (["--decay-from", "10"], ["--decay-from", "10", "--decay-to", "5"]):
        with pytest.raises(ValueError, match="--decay-from and --decay-to"):
            tv.main(["--out", "/nonexistent/never-created", *bad])


def test_fine_tune_from_the_shipped_pipeline_within_a_time_limit(tmp_path):
    """--init-pipeline starts from the asset (trained gains kept, its VAE statistics reused), the
    cache renders in worker processes, and --time-limit stops long before --dit-steps."""
    from diffusers import WanPipeline, WanTransformer3DModel

    from pipelines.video import DEFAULT_MODEL_DIR as asset

    run = tmp_path / "run"
    common = ["--out", str(run), "--init-pipeline", str(asset), "--cache-size", "70", "--workers", "2"]
    tv.main([*common, "--stage", "cache"])  # then resumed by the training call, as on the GPU machine
    tv.main([*common, "--dit-batch", "2", "--dit-steps", "100000", "--time-limit", "3",
             "--decay-tail", "0.5"])
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any(r.get("init") == str(asset) for r in records)
    step = torch.load(run / "dit.pt", weights_only=False)["step"]
    assert 0 < step < 100000
    tuned = WanPipeline.from_pretrained(run / "pipeline")
    shipped = WanTransformer3DModel.from_pretrained(asset / "transformer")
    assert tuned.vae.config.latents_mean == WanPipeline.from_pretrained(asset).vae.config.latents_mean
    # a few warm-up steps move the weights only slightly: the start was the asset, not a fresh model
    gain = shipped.blocks[0].attn2.norm_q.weight
    assert not torch.allclose(gain, torch.full_like(gain, 2.5))
    assert torch.allclose(tuned.transformer.blocks[0].attn2.norm_q.weight, gain, atol=1e-3)
    cache = torch.load(run / "cache.pt", weights_only=False)
    assert sum(m.shape[0] for m in cache["mean"]) == 70 and len(set(cache["captions"])) > 10
    saved_tok = json.loads((run / "pipeline" / "tokenizer" / "tokenizer.json").read_text())
    assert saved_tok["padding"] is None and saved_tok["truncation"] is None  # no training-call state
    # the card of the exported folder describes the fine-tune as a step of its own
    from worlds.moving_shapes.export import main as export_main

    card_args = ["--card-only", "--run", str(run), "--out", str(run / "pipeline")]
    export_main([*card_args, "--finetune-run", str(run)])
    card = (run / "pipeline" / "MODEL_CARD.md").read_text()
    assert "5. GPU fine-tune of the weights above" in card and "batch 2" in card
    meta = json.loads((run / "pipeline" / "training_meta.json").read_text())
    assert meta["finetune"]["steps"] == step and meta["finetune"]["init"] == str(asset)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "log.jsonl").write_text(json.dumps({"stage": "dit", "step": 1, "loss": 0.3, "time": 0}) + "\n")
    with pytest.raises(ValueError, match="not a fine-tune run"):
        export_main([*card_args, "--finetune-run", str(plain)])
    with pytest.raises(ValueError, match="lacks vae/, transformer/, text_encoder/"):
        tv.main(["--out", str(tmp_path / "bad"), "--init-pipeline", str(tmp_path)])
