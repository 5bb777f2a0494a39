"""Zero-1-to-3 novel-view synthesis (Liu et al. 2023), with Zero-to-Hero (Sobol et al. 2024) as an option.

    pipe = Zero123Pipeline.from_pretrained("kxic/zero123-165000")       # or a local folder
    out = pipe(image, poses=[(0.0, 90.0, 0.0), (-20.0, 180.0, 0.0)], generator=torch.manual_seed(0))
    out = pipe(image, poses=[(0.0, 90.0, 0.0)], z2h=ZeroToHeroConfig())  # 26 steps, 66 evaluations

``poses`` are relative (d polar, d azimuth) in degrees and d radius, target minus input view, one
triple per target (polar = 90 - elevation, from +Z; azimuth as Zero-1-to-3's training renders).

Conditioning (cvlab-columbia/zero123 ``gradio_new.py``): the CLIP image embedding of the input view
is concatenated with [rad(d polar), sin(rad(d azimuth)), cos(rad(d azimuth)), d radius] and mapped by
``cc_projection`` to the UNet's one cross-attention token; the input view's VAE latent (posterior mode,
unscaled) is concatenated to the noisy latent on channels; the unconditional CFG branch zeroes both.

The scheduler is always built here (:func:`zero123_scheduler`), never read from the folder: the
conversion script writes betas 0.02 / 0.085 instead of 0.00085 / 0.012 into converted checkpoints.

The loop below is an explicit-timestep DDIM (``DDIMScheduler`` only steps uniformly), reading top to
bottom: per step, R_t evaluations (resampling re-noises z_{t_prev} back to z_t between them), each a
CFG call whose rows the controller labels ``source.<half>`` / ``target.<half>``. The source branch (the
identity pose, its own noise) exists only for mutual self-attention.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPVisionModelWithProjection

from attn_processors.core import Controller, apply
from attn_processors.zero_to_hero import (
    STORE,
    ZeroToHeroConfig,
    ZeroToHeroProcessor,
    ZeroToHeroState,
    branch_labels,
    ddim_step,
    renoise,
)
from attn_processors.zero_to_hero.schedule import alpha_at, previous_timesteps

from .decoding import decode_latents

logger = logging.get_logger(__name__)
Tensor = torch.Tensor
# Zero-1-to-3's training schedule (configs/sd-objaverse-finetune-c_concat-256.yaml)
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Accepted relative poses: polar is in [0, 180] so its difference in [-180, 180]; azimuth differences
# within one turn either way; Zero-1-to-3 renders radii in [1.5, 2.2] (|d radius| <= 0.7).
POSE_LIMITS = {"polar": (-180.0, 180.0), "azimuth": (-360.0, 360.0), "radius": (-1.0, 1.0)}
InputLatent = Literal[
    "raw",  # posterior mode as is (Zero-1-to-3)
    "scaled",  # posterior mode x vae scaling_factor (a model trained that way says so in training.json)
]
OutputType = Literal["pil", "np", "pt", "latent"]


def zero123_scheduler() -> DDIMScheduler:
    """DDIM with Zero-1-to-3's betas (scaled-linear 0.00085-0.012), whatever a checkpoint's folder says."""
    return DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         prediction_type="epsilon")


class CCProjection(ModelMixin, ConfigMixin):
    """Camera conditioning: [image embedding ++ pose (4)] -> one cross-attention token. The community
    pipeline's config keys and weight names (``projection.weight``), so public checkpoints load."""

    @register_to_config
    def __init__(self, in_channel: int = 772, out_channel: int = 768) -> None:
        super().__init__()
        self.in_channel, self.out_channel = in_channel, out_channel
        self.projection = torch.nn.Linear(in_channel, out_channel)

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, in) -> (B, 1, out)
        return self.projection(x)


# -- inputs ----------------------------------------------------------------------------------------
def check_poses(poses: Any) -> Tensor:
    """(N, 3) float64 [d polar, d azimuth (degrees), d radius]; ValueError naming any bad value."""
    if isinstance(poses, Tensor | np.ndarray):
        poses = np.asarray(poses.detach().cpu() if isinstance(poses, Tensor) else poses).tolist()
    if (isinstance(poses, Sequence) and len(poses) == 3 and all(isinstance(v, int | float) for v in poses)):
        raise ValueError(f"poses={list(poses)} is one pose; give a list of (d polar, d azimuth, d radius) "
                         f"triples, e.g. poses=[{tuple(poses)}]")
    if not isinstance(poses, Sequence) or not poses or any(
            not isinstance(p, Sequence) or len(p) != 3 for p in poses):
        raise ValueError(f"poses={poses!r}; give a non-empty list of (d polar, d azimuth, d radius) triples "
                         "in degrees, degrees and scene units, e.g. [(0.0, 90.0, 0.0)]")
    out = torch.tensor([[float(v) for v in p] for p in poses], dtype=torch.float64)
    for j, (name, (lo, hi)) in enumerate(POSE_LIMITS.items()):
        bad = [(i, float(v)) for i, v in enumerate(out[:, j]) if not (math.isfinite(v) and lo <= v <= hi)]
        if bad:
            shown = ", ".join(f"poses[{i}] d {name} = {v}" for i, v in bad[:3])
            raise ValueError(f"{shown} outside [{lo}, {hi}]; give relative poses (target minus input view)"
                             f" with d {name} in that range")
    return out


def pose_vectors(poses: Tensor) -> Tensor:
    """(N, 3) degrees -> (N, 4) [rad(d polar), sin(rad(d azimuth)), cos(rad(d azimuth)), d radius]."""
    polar, azimuth = torch.deg2rad(poses[:, 0]), torch.deg2rad(poses[:, 1])
    return torch.stack([polar, torch.sin(azimuth), torch.cos(azimuth), poses[:, 2]], dim=-1)


def clip_preprocess(images: Tensor, size: int, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> CLIP input: bicubic to size x size (align_corners=True, no antialias,
    as the community pipeline's kornia call), then [0, 1] and mean/std normalisation."""
    x = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=True, antialias=False)
    x = (x + 1) / 2
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - m) / s


def to_rgb(image: PIL.Image.Image, notes: list[str]) -> PIL.Image.Image:
    """RGB, with transparency composited on white (Zero-1-to-3's demo); a note says what changed."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        notes.append(f"input image mode {image.mode}: composited on white to RGB")
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    notes.append(f"input image mode {image.mode}: converted to RGB")
    return image.convert("RGB")


@dataclass
class Zero123Output(BaseOutput):
    """One image per target pose; the sampled timesteps, the network evaluations (each a batched CFG
    call) and notes on how the input was converted."""

    images: list[PIL.Image.Image] | np.ndarray | Tensor
    timesteps: list[int]
    nfe: int
    notes: list[str]


class Zero123Pipeline(DiffusionPipeline):
    """Zero-1-to-3 / Zero123-XL: one input view + relative poses -> novel views (optionally Zero-to-Hero)."""

    model_cpu_offload_seq = "image_encoder->cc_projection->unet->vae"

    def __init__(self, vae: AutoencoderKL, image_encoder: CLIPVisionModelWithProjection,
                 unet: UNet2DConditionModel, cc_projection: CCProjection,
                 scheduler: DDIMScheduler | None = None) -> None:
        super().__init__()
        scheduler = zero123_scheduler() if scheduler is None else scheduler
        _check_scheduler(scheduler)
        self.register_modules(vae=vae, image_encoder=image_encoder, unet=unet, cc_projection=cc_projection,
                              scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.clip_mean, self.clip_std = CLIP_MEAN, CLIP_STD  # a folder's feature_extractor overrides them
        self.input_latent: InputLatent = "raw"

    # -- loading and saving: one code path for hub ids and local folders -------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *,
                        torch_dtype: torch.dtype | None = None, local_files_only: bool | None = None,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        token: str | bool | None = None) -> Zero123Pipeline:
        """Each component from its subfolder of the Diffusers-format layout (``unet/``, ``vae/``,
        ``image_encoder/``, ``cc_projection/``), the scheduler built here, CLIP mean/std from
        ``feature_extractor/`` and the input-latent convention from ``training.json`` when present."""
        path = str(pretrained_model_name_or_path)
        given = {"local_files_only": local_files_only, "cache_dir": cache_dir, "token": token}
        kw: dict[str, Any] = {"revision": revision, **{k: v for k, v in given.items() if v is not None}}
        typed = {**kw, "torch_dtype": torch_dtype} if torch_dtype is not None else kw
        encoder = CLIPVisionModelWithProjection.from_pretrained(path, subfolder="image_encoder", **typed)
        pipe = cls(vae=AutoencoderKL.from_pretrained(path, subfolder="vae", **typed), image_encoder=encoder,
                   unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet", **typed),
                   cc_projection=CCProjection.from_pretrained(path, subfolder="cc_projection", **typed))
        for m in (pipe.vae, pipe.image_encoder, pipe.unet, pipe.cc_projection):
            m.eval()
        pre = _optional_json(path, "feature_extractor/preprocessor_config.json", kw)
        if pre is not None:
            pipe.clip_mean = tuple(pre.get("image_mean", CLIP_MEAN))
            pipe.clip_std = tuple(pre.get("image_std", CLIP_STD))
        record = _optional_json(path, "training.json", kw)
        if record is not None and record.get("input_latent", "raw") != "raw":
            pipe.input_latent = _check_input_latent(record["input_latent"])
        pipe.register_to_config(_name_or_path=path)
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True) -> None:
        """The public Diffusers-format Zero-1-to-3 layout (loadable by ``from_pretrained`` and by the
        community ``Zero1to3StableDiffusionPipeline``)."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("vae", "image_encoder", "unet", "cc_projection", "scheduler"):
            module = getattr(self, name)
            if name == "scheduler":
                module.save_pretrained(out / name)
            else:
                module.save_pretrained(out / name, safe_serialization=safe_serialization)
        size = self.image_encoder.config.image_size
        (out / "feature_extractor").mkdir(exist_ok=True)
        (out / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "CLIPImageProcessor", "image_mean": list(self.clip_mean),
            "image_std": list(self.clip_std), "do_normalize": True, "do_resize": True, "resample": 3,
            "size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}, indent=2))
        if self.input_latent != "raw":
            (out / "training.json").write_text(json.dumps({"input_latent": self.input_latent}, indent=2))
        (out / "model_index.json").write_text(json.dumps({
            "_class_name": "Zero1to3StableDiffusionPipeline", "_diffusers_version": "0.42.1",
            "cc_projection": ["pipeline_zero1to3", "CCProjection"],
            "feature_extractor": ["transformers", "CLIPImageProcessor"],
            "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
            "safety_checker": [None, None], "requires_safety_checker": False,
            "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}, indent=2) + "\n")

    # -- conditioning ----------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def prepare_image(self, image: Any, notes: list[str]) -> Tensor:
        """(1, 3, S, S) in [-1, 1] from a PIL image / uint8 HxWx3 array (converted with a note) or a
        (3, S, S) / (1, 3, S, S) tensor in [-1, 1] (checked, never silently changed)."""
        size = self.image_size
        if isinstance(image, np.ndarray):
            image = PIL.Image.fromarray(image)
        if isinstance(image, PIL.Image.Image):
            image = to_rgb(image, notes)
            if image.width != image.height:
                raise ValueError(f"input image is {image.width}x{image.height}; Zero-1-to-3 takes a square "
                                 f"view: crop or pad it to a square (it is then resized to {size}x{size})")
            if image.size != (size, size):
                notes.append(f"input image {image.width}x{image.height}: resized (bicubic) to {size}x{size}")
                image = image.resize((size, size), PIL.Image.BICUBIC)
            x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        elif isinstance(image, Tensor):
            x = image[None] if image.ndim == 3 else image
            if x.ndim != 4 or x.shape[:2] != (1, 3) or x.shape[-2:] != (size, size):
                raise ValueError(f"image tensor of shape {tuple(image.shape)}; give (3, {size}, {size}) or "
                                 f"(1, 3, {size}, {size}) in [-1, 1], or a PIL image (converted for you)")
            if not torch.isfinite(x).all() or x.min() < -1.001 or x.max() > 1.001:
                raise ValueError(f"image tensor values span [{float(x.min()):.3g}, {float(x.max()):.3g}]; "
                                 "give values in [-1, 1] (x / 127.5 - 1 for uint8)")
            x = x.float().clamp(-1, 1)
        else:
            raise ValueError(f"image of type {type(image).__name__}; give a PIL image, an HxWx3 uint8 array "
                             "or a (3, H, W) tensor in [-1, 1]")
        return x.to(self._execution_device, self.unet.dtype)

    def condition(self, image: Tensor, poses: Tensor) -> tuple[Tensor, Tensor]:
        """(tokens (N, 1, D) for N poses in degrees (N, 3), the input latent (1, 4, h, w))."""
        size = self.image_encoder.config.image_size
        pixels = clip_preprocess(image, size, self.clip_mean, self.clip_std).to(self.image_encoder.dtype)
        embeds = self.image_encoder(pixels).image_embeds  # (1, D)
        pose = pose_vectors(poses).to(embeds.device, embeds.dtype)  # (N, 4)
        tokens = self.cc_projection(torch.cat([embeds.expand(len(pose), -1), pose], -1)[:, None])  # (N, 1, D)
        latent = self.vae.encode(image.to(self.vae.dtype)).latent_dist.mode()  # (1, 4, h, w), unscaled
        if self.input_latent == "scaled":
            latent = latent * self.vae.config.scaling_factor
        return tokens, latent

    # -- the loop --------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        image: Any,
        poses: Any,
        *,
        z2h: ZeroToHeroConfig | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 3.0,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
        output_type: OutputType = "pil",
        callback_on_step_end: Callable[[Any, int, int, dict], dict] | None = None,
    ) -> Zero123Output:
        """Novel views of ``image`` at relative ``poses`` (one (d polar, d azimuth, d radius) each).

        ``z2h=None``: plain DDIM with ``num_inference_steps`` uniform steps, unless Zero-to-Hero
        processors are already installed on the UNet (``set_attn_processor(processors(pipe.unet,
        cfg))`` or ``apply``): then their config and controller drive this loop. ``eta``: DDIM noise
        (0: deterministic, the community default; Zero-1-to-3's demo uses 1.0).
        """
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type={output_type!r}; use 'pil', 'np', 'pt' or 'latent'")
        if not (isinstance(guidance_scale, int | float) and math.isfinite(guidance_scale)):
            raise ValueError(f"guidance_scale={guidance_scale!r}; give a finite number (<= 1: no CFG)")
        if not 0 <= eta <= 1:
            raise ValueError(f"eta={eta!r}; give DDIM's eta in [0, 1]")
        notes: list[str] = []
        x = self.prepare_image(image, notes)
        pose = check_poses(poses)
        for note in notes:
            logger.warning(note)
        installed = self._installed()
        if installed and z2h is not None:
            raise ValueError("Zero-to-Hero processors are already installed on this UNet; call without z2h= "
                             "(theirs drive the loop) or restore them first: "
                             "pipe.unet.set_attn_processor(stock_processors(pipe.unet))")
        ctrl = installed[0] if installed else Controller()
        config = z2h or (installed[1] if installed else ZeroToHeroConfig.plain(num_inference_steps))
        use_z2h = z2h is not None and (z2h.amf or z2h.msa)
        with apply(self.unet, z2h, controller=ctrl) if use_z2h else contextlib.nullcontext(), \
                ctrl.driven_by_loop():
            z = self._sample(x, pose, config, ctrl, guidance_scale, eta, generator, latents,
                             callback_on_step_end)
        images = self._decode(z, output_type)
        self.maybe_free_model_hooks()
        ts = config.timesteps(self.scheduler.config.num_train_timesteps, self.scheduler.config.steps_offset)
        return Zero123Output(images=images, timesteps=ts, nfe=sum(config.iterations(ts)), notes=notes)

    def _sample(self, x: Tensor, pose: Tensor, config: ZeroToHeroConfig, ctrl: Controller,
                guidance_scale: float, eta: float, generator: torch.Generator | None, latents: Tensor | None,
                callback_on_step_end: Callable | None) -> Tensor:
        """The explicit-timestep DDIM loop; returns the target latents (N, 4, h, w)."""
        sched, n = self.scheduler, len(pose)
        timesteps = config.timesteps(sched.config.num_train_timesteps, sched.config.steps_offset)
        prev, counts = previous_timesteps(timesteps), config.iterations(timesteps)
        cfg, source = guidance_scale > 1.0, config.msa  # the source branch serves mutual attention only
        # 1. conditioning: rows [source (identity pose)?, targets...] per CFG half, uncond half zeroed
        tokens, latent = self.condition(x, torch.cat([pose.new_zeros(1, 3), pose]) if source else pose)
        rows = len(tokens)
        latent = latent.expand(rows, -1, -1, -1)  # (rows, 4, h, w)
        if cfg:
            tokens = torch.cat([torch.zeros_like(tokens), tokens])  # (2 rows, 1, D)
            latent = torch.cat([torch.zeros_like(latent), latent])  # (2 rows, 4, h, w)
        labels = branch_labels(n, cfg, source)
        # 2. initial noise: the targets' first (same seed -> same target noise with or without a source)
        shape = (n, self.unet.config.out_channels, *latent.shape[-2:])
        z = latents.to(latent) if latents is not None else _noise(shape, generator, latent)
        if z.shape != shape:
            raise ValueError(f"latents of shape {tuple(z.shape)}; give {shape} (one per pose)")
        if source:
            z = torch.cat([_noise((1, *shape[1:]), generator, z), z])  # (1 + N, 4, h, w)
        z = z * sched.init_noise_sigma
        state = ctrl.stores.setdefault(STORE, ZeroToHeroState())
        alphas, final = sched.alphas_cumprod, float(sched.final_alpha_cumprod)
        # 3. denoise: R_t evaluations per step, re-noising between them (resampling)
        ctrl.begin_run(len(timesteps), tuple(z.shape[-2:]))
        state.begin_run()
        with self.progress_bar(total=sum(counts)) as bar:
            for i, (t, t_prev, r_t) in enumerate(zip(timesteps, prev, counts, strict=True)):
                ctrl.begin_step(i, t)
                a_t, a_prev = alpha_at(alphas, t, final), alpha_at(alphas, t_prev, final)
                for r in range(r_t):
                    state.begin_iter(r, r_t)
                    ctrl.set_branch(labels)
                    model_in = sched.scale_model_input(torch.cat([z, z]) if cfg else z, t)
                    eps = self.unet(torch.cat([model_in, latent], 1), t, encoder_hidden_states=tokens,
                                    return_dict=False)[0]
                    if cfg:
                        eps_u, eps_c = eps.chunk(2)
                        eps = eps_u + guidance_scale * (eps_c - eps_u)
                    noise = _noise(z.shape, generator, z) if eta > 0 else None
                    z_prev = ddim_step(z, eps, a_t, a_prev, eta, noise)
                    if r < r_t - 1:  # resample: back to t with q(z_t | z_t_prev)
                        z = renoise(z_prev, a_t, a_prev, _noise(z.shape, generator, z))
                    bar.update()
                z = z_prev
                if callback_on_step_end is not None:  # latents: (1 + N) rows with a source branch
                    z = callback_on_step_end(self, i, t, {"latents": z}).get("latents", z)
        ctrl.end_run()
        return z[1:] if source else z

    # -- helpers ---------------------------------------------------------------------------------------
    def _installed(self) -> tuple[Controller, ZeroToHeroConfig] | None:
        """(controller, config) of Zero-to-Hero processors already on the UNet (the plain path)."""
        for proc in self.unet.attn_processors.values():
            for part in getattr(proc, "parts", None) or [proc]:
                if isinstance(part, ZeroToHeroProcessor):
                    return part.controller, part.config
        return None

    def _decode(self, z: Tensor, output_type: str) -> Any:
        return decode_latents(self.vae, self.image_processor, z, output_type)


def _check_scheduler(scheduler: Any) -> None:
    """ValueError unless the scheduler has Zero-1-to-3's betas (converted checkpoints do not)."""
    got = {k: getattr(scheduler.config, k, None) for k in ("beta_start", "beta_end", "beta_schedule")}
    want = {k: SCHEDULE[k] for k in got}
    eps = getattr(scheduler.config, "prediction_type", None) == "epsilon"
    if not isinstance(scheduler, DDIMScheduler) or got != want or not eps:
        raise ValueError(f"scheduler {type(scheduler).__name__} with {got}; Zero-1-to-3 was trained with "
                         f"{want} (converted checkpoints carry wrong betas): leave scheduler out, or pass "
                         "zero123_scheduler()")


def _noise(shape: Sequence[int], generator: torch.Generator | None, like: Tensor) -> Tensor:
    return randn_tensor(tuple(shape), generator=generator, device=like.device, dtype=like.dtype)


def _check_input_latent(value: Any) -> InputLatent:
    if value not in ("raw", "scaled"):
        raise ValueError(f"training.json input_latent={value!r}; use 'raw' or 'scaled'")
    return value


def _optional_json(root: str, rel: str, kw: dict[str, Any]) -> dict[str, Any] | None:
    """A JSON file of the model (local folder or hub repo); None when it has none."""
    if Path(root).is_dir():
        path = Path(root) / rel
        return json.loads(path.read_text()) if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    folder, _, name = rel.rpartition("/")
    try:
        path = hf_hub_download(root, name, subfolder=folder or None, revision=kw.get("revision"),
                               local_files_only=bool(kw.get("local_files_only", False)),
                               cache_dir=kw.get("cache_dir"), token=kw.get("token"))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None
    return json.loads(Path(path).read_text())
