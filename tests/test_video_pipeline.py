"""pipelines/video.py: loading, generation under each attention choice, validation, MP4 export."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from attn_processors.core.registry import config_to_json
from pipelines import video
from pipelines.video import (
    TINY_RANDOM_NAME,
    build_tiny_wan,
    generate_video,
    load_video_pipeline,
    read_mp4,
    write_mp4,
)

TINY = dict(num_frames=5, height=32, width=32, num_inference_steps=2, guidance_scale=3.0, progress=False)


@pytest.fixture(scope="module")
def wan():
    return build_tiny_wan()


def test_default_without_shipped_model_is_labelled_random(monkeypatch, tmp_path):
    monkeypatch.setattr(video, "DEFAULT_MODEL_DIR", tmp_path / "missing")
    model = load_video_pipeline()
    assert model.random_weights and model.name == TINY_RANDOM_NAME and model.family == "wan"
    assert model.describe()["random_weights"] is True
    assert not any(m.training for m in model.pipe.components.values() if isinstance(m, torch.nn.Module))


def test_generate_video_frames_are_uint8_and_seeded(wan):
    a = generate_video(wan, "a red circle moving right", seed=3, **TINY)
    b = generate_video(wan, "a red circle moving right", seed=3, **TINY)
    c = generate_video(wan, "a red circle moving right", seed=4, **TINY)
    assert a.frames.shape == (5, 32, 32, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames)  # same seed, same video (eval mode, CPU generator)
    assert not np.array_equal(a.frames, c.frames)
    assert a.timings["steps"] == 2 and a.timings["total_s"] >= a.timings["denoise_s"] > 0
    g = torch.Generator("cpu").manual_seed(3)
    d = generate_video(wan, "a red circle moving right", generator=g, **TINY)
    assert np.array_equal(a.frames, d.frames)


def test_saved_folder_loads_through_from_pretrained(wan, tmp_path):
    wan.save_pretrained(tmp_path / "tiny")
    model = load_video_pipeline(tmp_path / "tiny")
    assert not model.random_weights and model.name == str(tmp_path / "tiny")
    ref = generate_video(wan, "a blue square", seed=1, **TINY).frames.astype(int)
    out = generate_video(model.pipe, "a blue square", seed=1, **TINY).frames.astype(int)
    assert np.abs(ref - out).max() <= 1  # reload changes the GEMM path by ~1e-6
    with pytest.raises(ValueError, match="model_index.json"):
        load_video_pipeline(tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_frames=6), r"4k\+1 .*try 5 or 9"),
    (dict(height=40), "height must be a positive multiple of 16"),
    (dict(width=0), "width must be a positive multiple of 16"),
    (dict(num_inference_steps=0), "num_inference_steps must be >= 1"),
    (dict(guidance_scale=float("nan")), "guidance_scale"),
    (dict(attention="flash"), "attention must be one of dense, tile_sparse, sage, tile_sparse\\+sage"),
    (dict(attention="dense", attention_options={"k": 2}), "takes no options"),
    (dict(seed=1, generator=torch.Generator()), "either seed or generator"),
])
def test_invalid_requests_raise_value_error(wan, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_video(wan, "a red circle", **{**TINY, **kwargs})


def test_tile_sparse_installs_through_the_core(wan):
    kw = {**TINY, "num_frames": 17, "num_inference_steps": 3}  # 5 latent frames
    everywhere = {"dense_blocks": [], "dense_steps": 0.0}
    dense = generate_video(wan, "a red circle", seed=0, **kw).frames
    full = generate_video(wan, "a red circle", seed=0, attention="tile_sparse",
                          attention_options={"k": 5, **everywhere}, **kw).frames  # k = F keeps every tile
    sparse = generate_video(wan, "a red circle", seed=0, attention="tile_sparse",
                            attention_options={"k": 1, **everywhere}, **kw)
    assert np.array_equal(full, dense) and not np.array_equal(sparse.frames, dense)
    assert sparse.attention == "tile_sparse"
    assert all(type(p).__name__ != "TileSparseProcessor" for p in wan.transformer.attn_processors.values())
    with pytest.raises(ValueError, match=r"invalid tile_sparse attention_options \['kk'\]: \['kk'\] are not "
                                         r"fields of TileSparseConfig; its fields are \[.*'dense_steps'"):
        generate_video(wan, "a red circle", attention="tile_sparse", attention_options={"kk": 1}, **TINY)


def test_sage_installs_through_the_core(wan):
    dense = generate_video(wan, "a red circle", seed=0, **TINY).frames.astype(int)
    simulate = {"backend": "simulate", "min_kv_len": 0}  # the quantized kernel's CPU simulation
    quant = generate_video(wan, "a red circle", seed=0, attention="sage", attention_options=simulate,
                           **TINY).frames.astype(int)
    assert 0 < np.abs(quant - dense).max() <= 32
    with pytest.raises(ValueError, match="recipe must be one of"):
        generate_video(wan, "a red circle", attention="sage", attention_options={"recipe": "int2"}, **TINY)


def test_composition_runs_sage_under_the_tile_mask(wan):
    both = {"tile_sparse": {"k": 1, "dense_blocks": [], "dense_steps": 0.0},
            "sage": {"backend": "simulate", "min_kv_len": 0}}  # CPU simulation of the quantized kernel
    tile = generate_video(wan, "a red circle", seed=0, attention="tile_sparse",
                          attention_options=both["tile_sparse"], **TINY).frames.astype(int)
    comp = generate_video(wan, "a red circle", seed=0, attention="tile_sparse+sage",
                          attention_options=both, **TINY).frames.astype(int)
    assert comp.shape == (5, 32, 32, 3)
    assert 0 < np.abs(comp - tile).max() <= 32  # quantization changes the video, a little
    with pytest.raises(ValueError, match="takes options"):
        generate_video(wan, "a red circle", attention="tile_sparse+sage", attention_options={"tiles": {}},
                       **TINY)
    with pytest.raises(ValueError, match="dense_steps"):  # Sage's own warm-up has no meaning here
        generate_video(wan, "a red circle", attention="tile_sparse+sage",
                       attention_options={"sage": {"dense_steps": 0.5}}, **TINY)
    with pytest.raises(ValueError, match=r"\['kernel'\] are not fields of TileSparseConfig"):
        video.attention_configs("tile_sparse+sage", {"tile_sparse": {"kernel": None}})


def test_config_json_form_gives_the_named_form_result(wan):
    options = {"k": 1, "dense_blocks": [], "dense_steps": 0.0}
    named = generate_video(wan, "a red circle", seed=0, attention="tile_sparse", attention_options=options,
                           **TINY)
    as_json = {"__type__": "TileSparseConfig", **options}
    for spec in (as_json, [as_json]):
        out = generate_video(wan, "a red circle", seed=0, attention=spec, **TINY)
        assert np.array_equal(out.frames, named.frames)
        assert json.loads(out.attention)["__type__"] == "TileSparseConfig"
    both = {"tile_sparse": options, "sage": {"backend": "simulate", "min_kv_len": 0}}
    (composed,) = video.attention_configs("tile_sparse+sage", both)
    assert video.attention_configs(json.loads(config_to_json(composed))) == (composed,)
    assert video.attention_configs([composed]) == (composed,)  # config objects pass through


@pytest.mark.parametrize("attention, options, message", [
    ({"k": 1}, None, r'objects with a "__type__" naming the config type.*got \{\'k\': 1\}'),
    ({"__type__": "TileSparseConfig"}, {"k": 1}, r"attention_options go with a technique name"),
    ([], None, "empty list of configs; use attention='dense'"),
    (3, None, r"attention must be a technique name \(dense, .*\), a config or its JSON object, .*got 3"),
    ({"__type__": "TileSparseConfg"}, None, "unknown config type 'TileSparseConfg' in JSON; known types: "),
    ({"__type__": "Select"}, None, "Select is not a registered technique config"),
    ("flash", None, r"attention must be one of .* or technique settings in config JSON form"),
])
def test_bad_attention_settings_are_named(attention, options, message):
    with pytest.raises(ValueError, match=message):
        video.attention_configs(attention, options)


@pytest.mark.parametrize("name, message", [
    ("{tmp}/missing", r"model '.*/missing': no such folder; pass a folder written by pipe.save_pretrained"),
    ("missing", r"model 'missing': no such folder"),
    ("{tmp}", "has no model_index.json"),
])
def test_missing_model_is_one_clear_error(tmp_path, name, message):
    name = name.format(tmp=tmp_path)
    with pytest.raises(ValueError, match=message):
        video.check_model_source(name)
    with pytest.raises(ValueError, match=message):
        load_video_pipeline(name)
    video.check_model_source("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")  # a hub id: checked when loaded


def test_cogvideox_family_generates():
    from attn_processors.testing.tiny import tiny_pipeline

    pipe = tiny_pipeline("cogvideox")
    out = generate_video(pipe, "a red car", seed=0, num_frames=9, height=16, width=16,
                         num_inference_steps=2, guidance_scale=3.0, progress=False)
    assert out.frames.shape == (9, 16, 16, 3)
    with pytest.raises(ValueError, match="multiple of 16"):
        generate_video(pipe, "a red car", seed=0, num_frames=9, height=24, width=16, progress=False)


def test_rejects_other_pipelines():
    from attn_processors.testing.tiny import tiny_pipeline

    with pytest.raises(ValueError, match="not a Wan or CogVideoX pipeline"):
        generate_video(tiny_pipeline("flux"), "a cat", seed=0, progress=False)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_write_mp4_lossless_roundtrip_is_exact(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (4, 18, 22, 3), dtype=np.uint8)  # odd-ish size
    path = write_mp4(frames, tmp_path / "v.mp4", fps=8, quality="lossless")
    assert np.array_equal(read_mp4(path), frames)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temp file left behind


def test_write_mp4_standard_is_deterministic_and_close(tmp_path):
    ramp = np.linspace(0, 255, 32, dtype=np.float64)
    image = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.full((32, 1), 128.0)), -1)
    frames = np.stack([image] * 5).round().astype(np.uint8)  # smooth gradients [5, 32, 32, 3]
    a = write_mp4(frames, tmp_path / "a.mp4", fps=8)
    b = write_mp4(frames, tmp_path / "b.mp4", fps=8)
    assert _sha(a) == _sha(b)  # same frames -> same bytes (one ffmpeg process each, one thread, bitexact)
    decoded = read_mp4(a)
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 3.0  # CRF 18 on a smooth image


@pytest.mark.parametrize("frames, kwargs, message", [
    (np.zeros((2, 8, 8, 3), np.float32), {}, "uint8"),
    (np.zeros((8, 8, 3), np.uint8), {}, r"\[F, H, W, 3\]"),
    (np.zeros((2, 9, 8, 3), np.uint8), {}, "even height and width"),
    (np.zeros((2, 8, 8, 3), np.uint8), {"fps": 0}, "fps must be > 0"),
    (np.zeros((2, 8, 8, 3), np.uint8), {"quality": "best"}, "quality must be"),
])
def test_write_mp4_rejects_bad_input(tmp_path, frames, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_mp4(frames, tmp_path / "x.mp4", **kwargs)
    assert not list(tmp_path.iterdir())


def test_write_mp4_failure_leaves_nothing(tmp_path, monkeypatch):
    import imageio_ffmpeg

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", broken)
    with pytest.raises(OSError, match="disk full"):
        write_mp4(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "x.mp4")
    assert not list(tmp_path.iterdir())
