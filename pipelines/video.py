"""Text-to-video with Wan or CogVideoX pipelines under a chosen attention technique, and MP4 export.

Why this module exists: the batch app, the demo and the tile-sparse benchmarks all need the same
three verbs - load a video pipeline, generate one video with `attention="dense" | "tile_sparse" |
"sage" | "tile_sparse+sage"`, write it as an MP4 a person can open - with the same validation and
the same deterministic encoding.

Example (runs offline; without the shipped model a tiny random-weights Wan is built and labelled):

    >>> from pipelines.video import load_video_pipeline, generate_video, write_mp4
    >>> model = load_video_pipeline()                      # assets/moving-shapes-wan if present
    >>> out = generate_video(model.pipe, "a red circle moving right", num_frames=5, height=32,
    ...                      width=32, num_inference_steps=2, seed=0, progress=False)
    >>> out.frames.shape, out.frames.dtype
    ((5, 32, 32, 3), dtype('uint8'))
    >>> write_mp4(out.frames, "/tmp/video.mp4", fps=8)     # doctest: +ELLIPSIS
    PosixPath('/tmp/video.mp4')

Technique settings come in two forms (`attention_configs`): a name from ATTENTION_CHOICES with
`attention_options` (the fields of that technique's config), or the config JSON form the whole toolkit
shares (`attn_processors.core.registry.config_to_json`), e.g.
`{"__type__": "TileSparseConfig", "k": 2}`, or a list of such objects to compose several techniques.

Composition rule for `"tile_sparse+sage"`: the tile-sparse technique decides *which* key tiles each
query tile attends to (the k:(F-k) mask); SageAttention decides *how* the kept tiles are computed
(quantized QK^T and PV). Both fill the core's kernel slot and the core refuses two kernel choices on
one layer, so they compose as one kernel: `TileSparseConfig(kernel=SageConfig(...))`, the Sage kernel
run on each query group's kept keys, on the layers tile-sparse handles (video self/joint attention;
during its dense warm-up Sage runs on all keys). Cross-attention stays stock. The warm-up and layer
choice are tile-sparse options; Sage's own `dense_*`/`layers` fields must stay default (ValueError
otherwise). Options: `{"tile_sparse": {...}, "sage": {...}}`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from attn_processors.core.install import apply
from attn_processors.core.registry import config_from_data, config_to_json, config_type, installer_for

Attention = Literal["dense", "tile_sparse", "sage", "tile_sparse+sage"]
ATTENTION_CHOICES: tuple[str, ...] = ("dense", "tile_sparse", "sage", "tile_sparse+sage")
# the config type each technique name builds from its options (looked up in the config registry)
NAMED_CONFIGS: dict[str, str] = {"tile_sparse": "TileSparseConfig", "sage": "SageConfig"}
# a name, or technique settings in config JSON form (one object or a list), or built config objects
AttentionSpec = Attention | Mapping[str, Any] | Sequence[Any] | Any
Family = Literal["wan", "cogvideox"]
# "standard": H.264 yuv420p CRF 18, plays everywhere (browsers, Gradio);
# "lossless": H.264 RGB at QP 0 (libx264rgb), decodes to exactly the input frames (players vary).
Quality = Literal["standard", "lossless"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO_ROOT / "assets" / "moving-shapes-wan"
_UMASK = os.umask(0o022)  # read the process umask (the only portable way) and put it back
os.umask(_UMASK)
TINY_RANDOM_NAME = "tiny-wan (random weights, built from config; not a trained model)"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "owner/name", the form of every hub pipeline id


@dataclass(frozen=True)
class VideoModel:
    """A loaded pipeline plus what outputs must say about it (sidecars label random weights)."""

    pipe: Any  # a diffusers WanPipeline / CogVideoXPipeline
    name: str  # local path, hub id, or TINY_RANDOM_NAME
    family: Family
    random_weights: bool

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "random_weights": self.random_weights,
                "pipeline": type(self.pipe).__name__}


@dataclass(frozen=True)
class VideoResult:
    frames: np.ndarray  # uint8 [F, H, W, 3]
    seed: int | None
    attention: str  # the technique name, or the configs' JSON text (see describe_attention)
    timings: dict[str, float] = field(default_factory=dict)  # total_s, denoise_s, decode_s, steps


def video_family(pipe: Any) -> Family:
    """Family from the pipeline class; the only two families this wrapper validates inputs for."""
    name = type(pipe).__name__
    if name.startswith("Wan"):
        return "wan"
    if name.startswith("CogVideoX"):
        return "cogvideox"
    raise ValueError(f"{name} is not a Wan or CogVideoX pipeline; load e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers "
                     "or THUDM/CogVideoX-2b (or a local copy) with load_video_pipeline().")


def eval_all(pipe: Any) -> Any:
    """Put every nn.Module component in eval mode: T5 dropout otherwise makes seeds non-reproducible."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def load_video_pipeline(model: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> VideoModel:
    """Load any Wan or CogVideoX pipeline by local path or hub id (`DiffusionPipeline.from_pretrained`).

    `model=None` loads the shipped `assets/moving-shapes-wan`; when that folder is missing, a tiny Wan
    with random weights is built from config (deterministically, seed 0) and labelled as such.
    """
    from diffusers import DiffusionPipeline

    if model is None and not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
        pipe, name, random_weights = build_tiny_wan(), TINY_RANDOM_NAME, True
    else:
        name = str(model if model is not None else DEFAULT_MODEL_DIR)
        check_model_source(name)
        try:
            pipe, random_weights = DiffusionPipeline.from_pretrained(name, dtype=dtype), False
        except (OSError, ValueError) as err:
            if Path(name).exists():  # a local folder's own error (a missing weight file, ...) says enough
                raise
            raise ValueError(f"could not load model {name!r}: there is no such local folder, and as a hub "
                             f"id it failed: {err}") from err
    family = video_family(pipe)
    pipe.to(device)
    if random_weights and dtype != torch.float32:  # from_pretrained already loaded in `dtype`
        pipe.to(dtype=dtype)
    pipe = eval_all(pipe)
    return VideoModel(pipe=pipe, name=name, family=family, random_weights=random_weights)


def check_model_source(model: str | os.PathLike) -> None:
    """ValueError unless `model` is a pipeline folder or has the form of a hub id ("owner/name").

    Cheap (no download), so tools call it before any work; whether a hub id exists is only known
    when loading it.
    """
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{model} has no model_index.json; pass a folder written by "
                             "pipe.save_pretrained() or a hub id.")
        return
    if not HUB_ID.fullmatch(str(model)):
        raise ValueError(f"model {str(model)!r}: no such folder; pass a folder written by "
                         "pipe.save_pretrained() or a hub id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers.")


def build_tiny_wan() -> Any:
    """A tiny random-weights WanPipeline (~0.07 M params) from the core's offline builders."""
    from attn_processors.testing.tiny import tiny_pipeline

    with torch.random.fork_rng(devices=[]):  # seeded build (same weights in every process), RNG untouched
        return tiny_pipeline("wan", seed=0)


def uses_shapes_vocabulary(pipe: Any) -> bool:
    """True when the pipeline's tokenizer is the moving-shapes closed vocabulary (the shipped model or
    any copy of it): its prompts can then be checked word by word before generating."""
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return False
    from worlds.moving_shapes.tokenizer import tokenizer_pieces

    pieces = [piece for piece, _ in tokenizer_pieces()]
    if len(tokenizer) != len(pieces):  # cheap reject: a real T5 vocabulary (~256k) is never built here
        return False
    vocab = tokenizer.get_vocab()
    return all(piece in vocab for piece in pieces)


def check_prompt_vocabulary(pipe: Any, *texts: str | None) -> None:
    """ValueError naming the out-of-vocabulary words when `pipe` is a moving-shapes model: such words
    tokenize into characters its text encoder never learned, so the video would ignore them."""
    if not uses_shapes_vocabulary(pipe):
        return
    from worlds.moving_shapes.tokenizer import check_prompt

    for text in texts:
        if text:
            check_prompt(text, strict=True)


def check_request(pipe: Any, *, num_frames: int, height: int, width: int, num_inference_steps: int,
                  guidance_scale: float) -> None:
    """Reject sizes the pipeline would silently round (Wan rounds frames) or fail on deep inside."""
    temporal = int(pipe.vae_scale_factor_temporal)
    patch = pipe.transformer.config.patch_size
    patch_hw = patch[1] if isinstance(patch, (tuple, list)) else patch
    spatial = int(pipe.vae_scale_factor_spatial) * int(patch_hw)
    if video_family(pipe) == "wan":  # WanPipeline.check_inputs also demands multiples of 16
        spatial = math.lcm(spatial, 16)
    if num_frames < 1 or (num_frames - 1) % temporal:
        lower = max(1, (num_frames - 1) // temporal * temporal + 1)
        raise ValueError(f"num_frames must be {temporal}k+1 for this model (got {num_frames}); "
                         f"try {lower} or {lower + temporal}.")
    for label, value in (("height", height), ("width", width)):
        if value < spatial or value % spatial:
            raise ValueError(f"{label} must be a positive multiple of {spatial} for this model "
                             f"(VAE x{pipe.vae_scale_factor_spatial}, patch {patch_hw}); got {value}.")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1 (got {num_inference_steps}).")
    if not np.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0 (got {guidance_scale}).")


def attention_configs(attention: AttentionSpec, options: Mapping[str, Any] | None = None) -> tuple[Any, ...]:
    """The technique configs to install for `attention`; () for "dense" (the stock processors).

    `attention` is a name from ATTENTION_CHOICES with its `options`, or technique settings in config
    JSON form: one object `{"__type__": "TileSparseConfig", ...}`, a list of them (composed on one
    pipeline), or config objects. Every config is checked here, before any work.
    """
    if isinstance(attention, str):
        return _named_configs(attention, dict(options or {}))
    if options:
        raise ValueError("attention_options go with a technique name; with settings in config JSON form "
                         f"put the options inside the config (got attention_options {sorted(options)}).")
    if isinstance(attention, Mapping) or _is_config(attention):
        items = [attention]
    elif isinstance(attention, Sequence):
        items = list(attention)
    else:
        raise ValueError(f"attention must be a technique name ({', '.join(ATTENTION_CHOICES)}), a config or "
                         f"its JSON object, or a list of them (got {attention!r}).")
    if not items:
        raise ValueError("attention is an empty list of configs; use attention='dense' for stock attention.")
    configs = tuple(_config_from_spec(item) for item in items)
    for config in configs:
        installer_for(config)  # ValueError naming the technique configs when it is not one
    return configs


def describe_attention(attention: AttentionSpec) -> str:
    """A label for outputs: the technique name, or the configs' JSON text."""
    if isinstance(attention, str):
        return attention
    configs = attention_configs(attention)
    return config_to_json(configs[0] if len(configs) == 1 else list(configs))


def _is_config(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _config_from_spec(item: Any) -> Any:
    if _is_config(item):
        return item
    if not isinstance(item, Mapping) or "__type__" not in item:
        raise ValueError('technique settings in config JSON form are objects with a "__type__" naming the '
                         'config type, e.g. {"__type__": "TileSparseConfig", "k": 2} '
                         f"(got {item!r}).")
    return config_from_data(dict(item))


def _named_configs(attention: str, options: dict[str, Any]) -> tuple[Any, ...]:
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_CHOICES)} (got {attention!r}), "
                         'or technique settings in config JSON form ({"__type__": ...}).')
    if attention == "dense":
        if options:
            raise ValueError(f"attention='dense' takes no options (got {sorted(options)}).")
        return ()
    if attention == "tile_sparse+sage":
        return (_compose_tile_sparse_sage(options),)
    return (_config_from_options(attention, options),)


def _config_from_options(attention: str, options: dict[str, Any], **fixed: Any) -> Any:
    """`NAMED_CONFIGS[attention](**options, **fixed)`, unknown option names listed with the accepted ones."""
    cls = config_type(NAMED_CONFIGS[attention])
    accepted = sorted(f.name for f in dataclasses.fields(cls) if f.init and f.name not in fixed)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"invalid {attention} attention_options {sorted(options)}: {unknown} are not fields "
                         f"of {cls.__name__}; its fields are {accepted}.")
    return cls(**options, **fixed)


def _compose_tile_sparse_sage(options: dict[str, Any]) -> Any:
    unknown = set(options) - {"tile_sparse", "sage"}
    if unknown:
        raise ValueError("attention='tile_sparse+sage' takes options {'tile_sparse': {...}, 'sage': {...}} "
                         f"(got unknown keys {sorted(unknown)}).")
    sage = _config_from_options("sage", dict(options.get("sage") or {}))
    # the tile mask picks the kept keys, the Sage kernel computes attention over them: one kernel
    return _config_from_options("tile_sparse", dict(options.get("tile_sparse") or {}), kernel=sage)


def _install(pipe: Any, configs: tuple[Any, ...]) -> contextlib.AbstractContextManager:
    return apply(pipe, *configs) if configs else contextlib.nullcontext()


def generate_video(pipe: Any, prompt: str, *, negative_prompt: str | None = None, num_frames: int = 5,
                   height: int = 32, width: int = 32, num_inference_steps: int = 4,
                   guidance_scale: float = 5.0, seed: int | None = None,
                   generator: torch.Generator | None = None, attention: AttentionSpec = "dense",
                   attention_options: Mapping[str, Any] | None = None,
                   progress: bool | Mapping[str, Any] = True) -> VideoResult:
    """One video as uint8 frames [F, H, W, 3] under the chosen attention technique.

    `attention` and `attention_options`: see `attention_configs` (a technique name with its options,
    or settings in config JSON form). `seed` builds a CPU generator (same noise on every device); pass
    `generator` instead to own it.
    `progress`: True shows the pipeline's tqdm bar over steps, False hides it, a mapping passes tqdm
    options (e.g. `{"position": 1, "desc": "rank 0 steps"}` for per-rank bars).
    """
    family = video_family(pipe)
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both.")
    check_request(pipe, num_frames=num_frames, height=height, width=width,
                  num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    check_prompt_vocabulary(pipe, prompt, negative_prompt)
    configs = attention_configs(attention, attention_options)
    if seed is not None:
        generator = torch.Generator("cpu").manual_seed(int(seed))
    bar = dict(progress) if isinstance(progress, Mapping) else {"disable": progress is False}
    pipe.set_progress_bar_config(**bar)

    step_ends: list[float] = []

    def on_step_end(_pipe: Any, _i: int, _t: Any, _kwargs: dict) -> dict:
        step_ends.append(time.perf_counter())
        return {}

    extra = {"negative_prompt": negative_prompt} if negative_prompt else {}
    if family == "cogvideox":  # its positional table fixes the text length (226 for the released models)
        extra.update(use_dynamic_cfg=False, max_sequence_length=pipe.transformer.config.max_text_seq_length)
    start = time.perf_counter()
    with _install(pipe, configs):
        out = pipe(prompt=prompt, num_frames=num_frames, height=height, width=width,
                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   generator=generator, output_type="np", callback_on_step_end=on_step_end, **extra)
    end = time.perf_counter()
    video = np.asarray(out.frames[0])  # float [F, H, W, 3] in [0, 1]
    frames = (np.clip(video, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    last = step_ends[-1] if step_ends else end
    timings = {"total_s": end - start, "denoise_s": last - start, "decode_s": end - last,
               "steps": float(len(step_ends))}
    return VideoResult(frames=frames, seed=seed, attention=describe_attention(attention), timings=timings)


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: float = 8, *,
              quality: Quality = "standard") -> Path:
    """Write uint8 frames [F, H, W, 3] as H.264 MP4 via imageio-ffmpeg, atomically and deterministically.

    Deterministic: a fresh ffmpeg process per video, one encoder thread, bit-exact flags and no
    metadata, so the same frames give the same bytes in every process. (In-process PyAV/libx264 gave
    two different bitstreams for identical frames in 20 encodes once torch had dirtied the heap; the
    subprocess gave one.) Atomic: a hidden `.partial` temp file in the same folder, fsync, rename.
    """
    import imageio_ffmpeg

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], F >= 1 (got {frames.dtype} {frames.shape}).")
    _, h, w, _ = frames.shape
    if quality not in ("standard", "lossless"):
        raise ValueError(f"quality must be 'standard' or 'lossless' (got {quality!r}).")
    if quality == "standard" and (h % 2 or w % 2):
        raise ValueError(f"quality='standard' (yuv420p) needs even height and width (got {h}x{w}); "
                         "use quality='lossless' or an even size.")
    if not fps > 0:
        raise ValueError(f"fps must be > 0 (got {fps}).")
    if quality == "standard":
        codec, pix_fmt, rate = "libx264", "yuv420p", ["-crf", "18", "-preset", "medium"]
    else:
        codec, pix_fmt, rate = "libx264rgb", "rgb24", ["-qp", "0", "-preset", "medium"]
    params = [*rate, "-threads", "1", "-fflags", "+bitexact", "-flags", "+bitexact", "-map_metadata", "-1",
              "-movflags", "+faststart", "-f", "mp4"]

    def encode(tmp: Path) -> None:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (w, h), fps=float(fps), codec=codec, pix_fmt_in="rgb24", pix_fmt_out=pix_fmt,
            quality=None, macro_block_size=1, ffmpeg_log_level="error", output_params=params)
        writer.send(None)  # start ffmpeg
        try:
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()

    return atomic_write(Path(path), encode)


def atomic_write(path: Path, write: Any) -> Path:
    """Call `write(tmp_path)`, fsync, rename to `path`, fsync the folder; remove the temp on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should read like any new file
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame with PyAV as uint8 [F, H, W, 3] (RGB)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
