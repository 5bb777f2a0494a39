"""Layout-to-image with CSG (training-free layout constraints) on any Stable Diffusion 1.x/2.x/XL model.

    pipe = LayoutToImagePipeline.from_pretrained("assets/shapes-sd")        # or .from_pipe(sd_pipe)
    out = pipe("a red circle and a blue square", phrases=["red circle", "blue square"],
               boxes=[(0.05, 0.1, 0.45, 0.5), (0.55, 0.5, 0.95, 0.9)], generator=torch.manual_seed(0))
    out.images[0].save("layout.png")

Defaults tuned for a model travel with it: ``from_pretrained`` (and ``from_pipe``) read
``<model folder>/attn_processors.json`` (:class:`ModelSettings`), whose "LayoutConfig" and "sampling"
sections become this pipeline's defaults; ``layout_params=``, ``num_inference_steps=`` and
``guidance_scale=`` override them per call. Without the file: LayoutConfig's defaults (the paper's,
for SD-1.4) and Stable Diffusion's 50 steps at guidance 7.5.

The denoising loop below reads top to bottom: for the first ``guided_steps`` steps, ``iterations``
cond-only UNet forwards with autograd on the latent and a gradient step on the CSG loss; then the
usual CFG step, during which the layout layers redistribute cross-attention into the boxes.
``mode`` switches the two mechanisms: "full" | "guidance" | "redistribution" | "none".
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import ImageDraw
from transformers import CLIPTextModel, CLIPTokenizer

from attn_processors.core import Controller, apply
from attn_processors.layout.losses import generator_perms, step_sizes
from attn_processors.layout.masks import normalise_boxes
from attn_processors.layout.technique import STORE, GuidanceForwardDone, LayoutConfig, guidance_loss


@contextlib.contextmanager
def frozen_parameters(module: torch.nn.Module):
    """Parameters need no gradient during latent guidance (only the latent does): without them
    autograd records and keeps less for each guided iteration's backward pass. Each parameter's own
    ``requires_grad`` is restored afterwards, also on error."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# -- settings shipped with a model ----------------------------------------------------------------
SETTINGS_FILE = "attn_processors.json"
SAMPLING_DEFAULTS: dict[str, Any] = {"num_inference_steps": 50, "guidance_scale": 7.5}  # Stable Diffusion's
PER_LAYOUT_FIELDS = ("boxes", "token_groups", "phrases")  # given per call, never a model default
LAYOUT_PARAM_NAMES = tuple(f.name for f in dataclasses.fields(LayoutConfig)
                           if f.name not in PER_LAYOUT_FIELDS)


def check_layout_params(params: Mapping[str, Any]) -> None:
    """ValueError naming a key that is no LayoutConfig parameter, or a value LayoutConfig rejects."""
    unknown = sorted(set(params) - set(LAYOUT_PARAM_NAMES))
    if unknown:
        raise ValueError(f"unknown LayoutConfig parameters {unknown}; use some of {list(LAYOUT_PARAM_NAMES)}")
    try:  # the values, checked by LayoutConfig itself on a one-box layout
        LayoutConfig(boxes=((0.0, 0.0, 1.0, 1.0),), token_groups=((1,),), **params)
    except TypeError as err:  # e.g. a string where a number belongs
        raise ValueError(f"LayoutConfig parameters {dict(params)}: {err}") from None


def check_sampling(num_inference_steps: Any, guidance_scale: Any) -> None:
    """ValueError naming a step count that is not a positive integer or a guidance scale that is no number."""
    steps = num_inference_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps={num_inference_steps!r}; give a positive integer number of "
                         "denoising steps, e.g. num_inference_steps=20")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, int | float) \
            or not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale={guidance_scale!r}; give a finite number (<= 1 turns "
                         "classifier-free guidance off), e.g. guidance_scale=7.5")


@dataclass(frozen=True)
class ModelSettings:
    """Settings tuned for one model, shipped in its folder as ``attn_processors.json``::

        {"description": "where the numbers came from",
         "sampling": {"num_inference_steps": 20, "guidance_scale": 4.0},
         "LayoutConfig": {"scale_factor": 1.0, "guided_steps": 2, "iterations": 17}}

    One section per technique, named after its config class, so other techniques add theirs beside
    it; this pipeline reads "sampling" and "LayoutConfig" and ignores the others. ``source`` is the
    file read (None: no file, the built-in defaults).
    """

    layout: Mapping[str, Any] = field(default_factory=dict)
    sampling: Mapping[str, Any] = field(default_factory=dict)
    source: Path | None = None

    @classmethod
    def read(cls, folder: str | os.PathLike) -> ModelSettings:
        """The settings in ``folder``/attn_processors.json; the built-in defaults when there is none."""
        path = Path(folder) / SETTINGS_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err}); fix it, or delete it to use the "
                             "LayoutConfig defaults") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object with sections such as "
                             f'{{"LayoutConfig": {{...}}, "sampling": {{...}}}}, got {type(data).__name__}')
        layout, sampling = data.get("LayoutConfig", {}), data.get("sampling", {})
        try:
            for name, section in (("LayoutConfig", layout), ("sampling", sampling)):
                if not isinstance(section, dict):
                    raise ValueError(f'section "{name}" must be a JSON object, got {type(section).__name__}')
            unknown = sorted(set(sampling) - set(SAMPLING_DEFAULTS))
            if unknown:
                raise ValueError(f'unknown "sampling" keys {unknown}; use some of {list(SAMPLING_DEFAULTS)}')
            check_layout_params(layout)
            check_sampling(**{**SAMPLING_DEFAULTS, **sampling})
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        return cls(layout=dict(layout), sampling=dict(sampling), source=path)


Mode = Literal[
    "full",  # latent guidance + attention redistribution (CSG)
    "guidance",  # latent guidance only
    "redistribution",  # attention redistribution only
    "none",  # plain Stable Diffusion (processors installed but inactive when boxes are given)
]
MODES: tuple[str, ...] = get_args(Mode)
OutputType = Literal[
    "pil",  # list of PIL images
    "np",  # (B, H, W, 3) float array in [0, 1]
    "pt",  # (B, 3, H, W) float tensor in [0, 1]
    "latent",  # the final latent, not decoded
]
OUTPUT_TYPES: tuple[str, ...] = get_args(OutputType)


@dataclass
class LayoutOutput(BaseOutput):
    """images; per guided forward the (step, iteration, loss) triples; on request, each phrase's
    cross-attention map (n, h, w) at the layout layers, cond branch, averaged over denoising steps."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    losses: list[tuple[int, int, float]]
    attention_maps: torch.Tensor | None = None


class LayoutToImagePipeline(DiffusionPipeline):
    """Stable Diffusion (1.x/2.x, or XL with ``text_encoder_2``/``tokenizer_2``) with CSG layout control."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = ["text_encoder_2", "tokenizer_2"]

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: Any, text_encoder_2: Any = None,
                 tokenizer_2: Any = None) -> None:
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.settings = ModelSettings()  # the model folder's, once loaded with from_pretrained/from_pipe

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """``DiffusionPipeline.from_pretrained``; the folder's ``attn_processors.json`` gives the defaults."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        pipe._read_model_folder()
        return pipe

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs: Any) -> Any:
        """``DiffusionPipeline.from_pipe``, with the settings of the folder ``pipeline`` was loaded from."""
        pipe = super().from_pipe(pipeline, **kwargs)
        pipe._read_model_folder()
        return pipe

    def _read_model_folder(self) -> None:
        """Settings from a local model folder (hub ids: built-in defaults); the shapes model's
        closed-vocabulary tokenizer is swapped for one that refuses words outside its vocabulary."""
        folder = self.name_or_path
        if not folder or not Path(folder).is_dir():
            return
        self.settings = ModelSettings.read(folder)
        tok = self.tokenizer
        if tok is not None and len(tok) < 1000 and (Path(folder) / "tokenizer").is_dir():  # a toy vocabulary
            from worlds.shapes.pipeline import is_shapes_tokenizer
            from worlds.shapes.tokenizer import VocabCheckedTokenizer

            if is_shapes_tokenizer(tok) and not isinstance(tok, VocabCheckedTokenizer):
                self.tokenizer = VocabCheckedTokenizer.from_pretrained(Path(folder) / "tokenizer")

    @property
    def is_xl(self) -> bool:
        return self.text_encoder_2 is not None

    # -- text ----------------------------------------------------------------------------------
    def _encode(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 77, D) embeddings (and SDXL's pooled (B, D2)), as the stock pipelines compute them."""
        if not self.is_xl:
            tok = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt")
            use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
            mask = tok.attention_mask.to(device) if use_mask else None
            return self.text_encoder(tok.input_ids.to(device), attention_mask=mask)[0], None
        embeds, pooled = [], None
        for tok, enc in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids
            out = enc(ids.to(device), output_hidden_states=True)
            pooled = out[0]  # the projected pooled output of text_encoder_2 (last one wins)
            embeds.append(out.hidden_states[-2])  # SDXL uses the penultimate layer
        return torch.cat(embeds, dim=-1), pooled

    def layout_config(self, prompt: str, phrases: Sequence[str], boxes: Sequence[Sequence[float]], *,
                      boxes_in_pixels: bool = False, image_hw: tuple[int, int] | None = None,
                      **params: Any) -> LayoutConfig:
        """LayoutConfig for this pipeline's tokenizer: the model's settings, then ``params``.

        Pixel boxes need boxes_in_pixels=True + image_hw."""
        if isinstance(phrases, str):
            raise ValueError(f"phrases={phrases!r} is one string; give a list with one phrase per box, "
                             f"e.g. phrases=[{phrases!r}]")
        check_layout_params(params)
        if boxes_in_pixels:
            if image_hw is None:
                raise ValueError("boxes_in_pixels=True needs the image size image_hw=(height, width)")
            boxes = normalise_boxes(boxes, image_hw)
        params = {**self.settings.layout, **params}
        return LayoutConfig.from_phrases(self.tokenizer, prompt, phrases, boxes, **params)

    # -- the loop ------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        boxes: Sequence[Sequence[float]] | None = None,
        phrases: Sequence[str] | None = None,
        *,
        mode: Mode = "full",
        layout: LayoutConfig | None = None,
        layout_params: dict[str, Any] | None = None,
        boxes_in_pixels: bool = False,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: OutputType = "pil",
        return_attention_maps: bool = False,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
    ) -> LayoutOutput:
        """Generate with the layout given by ``phrases`` + normalised xyxy ``boxes`` (or ``layout=``).

        ``layout_params`` overrides LayoutConfig fields (e.g. {"scale_factor": 20.0, "n_background": 1})
        over the model's settings (``self.settings``); so do ``num_inference_steps`` and
        ``guidance_scale`` (None: the model's, else 50 and 7.5).
        """
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; use one of {MODES}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}; use one of {OUTPUT_TYPES}")
        if not isinstance(prompt, str):
            raise ValueError("prompt must be one string (a layout belongs to one prompt)")
        sampling = {**SAMPLING_DEFAULTS, **self.settings.sampling}
        if num_inference_steps is None:
            num_inference_steps = sampling["num_inference_steps"]
        if guidance_scale is None:
            guidance_scale = sampling["guidance_scale"]
        check_sampling(num_inference_steps, guidance_scale)
        height, width = self._check_size("height", height), self._check_size("width", width)
        device = self._execution_device
        if layout is None and (boxes is not None or phrases is not None):
            if boxes is None or phrases is None:
                raise ValueError("give both boxes= and phrases= (one box per phrase)")
            layout = self.layout_config(prompt, phrases, boxes, boxes_in_pixels=boxes_in_pixels,
                                        image_hw=(height, width), **(layout_params or {}))
        if layout is None and mode != "none":
            raise ValueError(f"mode={mode!r} needs boxes= and phrases= (or layout=); "
                             "use mode='none' without them")

        # 1. text: CFG batch [uncond, cond], each repeated per image
        n = num_images_per_prompt
        cond, pooled = self._encode([prompt], device)
        if self.is_xl and negative_prompt is None:
            uncond, pooled_u = torch.zeros_like(cond), torch.zeros_like(pooled)  # SDXL's zero negative
        else:
            uncond, pooled_u = self._encode([negative_prompt or ""], device)
        cond, uncond = cond.repeat_interleave(n, 0), uncond.repeat_interleave(n, 0)
        do_cfg = guidance_scale > 1.0
        embeds = torch.cat([uncond, cond]) if do_cfg else cond
        added, added_cond = self._added_cond(pooled, pooled_u, n, height, width, do_cfg, cond.dtype, device)

        # 2. timesteps, latents, step sizes
        timesteps, _ = retrieve_timesteps(self.scheduler, num_inference_steps, device)
        f = self.vae_scale_factor
        shape = (n, self.unet.config.in_channels, height // f, width // f)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=cond.dtype)
        latents = latents.to(device) * self.scheduler.init_noise_sigma
        step_kwargs = self._step_kwargs(generator, eta)
        guide = layout is not None and mode in ("full", "guidance")
        if layout is not None and mode in ("guidance", "none"):
            layout = dataclasses.replace(layout, redistribute_last_step=-1)  # no redistribution
        perms = generator_perms(self._sampling_generator(generator)) if guide else None
        eta_i = step_sizes(len(timesteps), layout.scale_factor) if guide else None
        losses: list[tuple[int, int, float]] = []

        ctrl = Controller()
        frozen = frozen_parameters(self.unet) if guide else contextlib.nullcontext()
        installed = contextlib.nullcontext() if layout is None else apply(self.unet, layout, controller=ctrl)
        with frozen, installed:
            store = ctrl.stores.get(STORE)
            if store is not None:
                store.keep_denoise_maps = return_attention_maps
            ctrl.begin_run(len(timesteps), tuple(latents.shape[-2:]))
            for i, t in enumerate(self.progress_bar(timesteps)):
                ctrl.begin_step(i, t)
                # 3. CSG latent guidance: cond-only forwards, z <- z - eta_i * dL/dz
                if guide and i < layout.guided_steps:
                    ctrl.mode = "guide"
                    ctrl.set_branch(("cond",))
                    for it in range(layout.iterations):
                        latents = latents.detach().requires_grad_(True)
                        store.clear()
                        with torch.enable_grad(), contextlib.suppress(GuidanceForwardDone):
                            z_in = self.scheduler.scale_model_input(latents, t)
                            self.unet(z_in, t, encoder_hidden_states=cond, added_cond_kwargs=added_cond,
                                      return_dict=False)  # records the loss layers' maps, then stops
                        with torch.enable_grad():
                            loss, _ = guidance_loss(store, layout, perms)
                            (grad,) = torch.autograd.grad(loss, latents)
                        losses.append((i, it, float(loss)))
                        latents = (latents - eta_i[i] * grad).detach()
                    store.clear()
                # 4. CFG step; layout layers redistribute cross-attention (steps <= redistribute_last_step)
                ctrl.mode = "denoise"
                ctrl.set_branch(("uncond", "cond") if do_cfg else ("cond",))
                model_in = torch.cat([latents] * 2) if do_cfg else latents
                model_in = self.scheduler.scale_model_input(model_in, t)
                noise = self.unet(model_in, t, encoder_hidden_states=embeds, added_cond_kwargs=added,
                                  return_dict=False)[0]
                if do_cfg:
                    noise_u, noise_c = noise.chunk(2)
                    noise = noise_u + guidance_scale * (noise_c - noise_u)
                latents = self.scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    latents = callback_on_step_end(self, i, t, {"latents": latents}).get("latents", latents)
            ctrl.end_run()
            maps = self._maps(store, layout) if return_attention_maps and store is not None else None

        images = self._decode(latents, output_type, generator)
        self.maybe_free_model_hooks()
        return LayoutOutput(images=images, losses=losses, attention_maps=maps)

    # -- helpers -------------------------------------------------------------------------------
    def _check_size(self, name: str, value: int | None) -> int:
        """The image side in pixels: the model's default for None, else a positive multiple of the
        VAE's downscale factor."""
        f = self.vae_scale_factor
        default = self.unet.config.sample_size * f
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % f:
            raise ValueError(f"{name}={value!r}; give a positive multiple of {f} pixels (the VAE's downscale "
                             f"factor), e.g. {name}={default}, or leave it out for the model's {default}")
        return value

    def _added_cond(self, pooled, pooled_u, n, height, width, do_cfg, dtype, device):
        """SDXL micro-conditioning (denoise batch, cond-only batch); (None, None) for SD 1.x/2.x."""
        if not self.is_xl:
            return None, None
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device)
        time_ids = time_ids.repeat(n, 1)  # (n, 6): original size, crop (0, 0), target size
        pooled, pooled_u = pooled.repeat_interleave(n, 0), pooled_u.repeat_interleave(n, 0)
        cond = {"text_embeds": pooled, "time_ids": time_ids}
        if not do_cfg:
            return cond, cond
        both = {"text_embeds": torch.cat([pooled_u, pooled]), "time_ids": torch.cat([time_ids, time_ids])}
        return both, cond

    def _step_kwargs(self, generator: torch.Generator | None, eta: float) -> dict[str, Any]:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kw: dict[str, Any] = {}
        if "eta" in params:
            kw["eta"] = eta
        if "generator" in params:
            kw["generator"] = generator
        return kw

    @staticmethod
    def _sampling_generator(generator: torch.Generator | None) -> torch.Generator:
        """Selective sampling's own CPU generator, seeded from the caller's (reproducible runs)."""
        g = torch.Generator()
        if generator is None:
            g.seed()
        else:
            seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
            g.manual_seed(int(seed))
        return g

    @staticmethod
    def _maps(store: Any, layout: LayoutConfig) -> torch.Tensor | None:
        if store.denoise_maps is None or store.hw is None:
            return None
        avg = store.denoise_maps / store.denoise_calls  # (N, K)
        cols = torch.stack([avg[:, list(g)].mean(-1) for g in layout.token_groups])  # (n, N)
        return cols.reshape(len(layout.token_groups), *store.hw)

    def _decode(self, latents: torch.Tensor, output_type: str, generator: Any) -> Any:
        if output_type == "latent":
            return latents
        z = latents / self.vae.config.scaling_factor
        image = self.vae.decode(z, return_dict=False, generator=generator)[0]
        return self.image_processor.postprocess(image, output_type=output_type,
                                                do_denormalize=[True] * image.shape[0])


# -- demo panel ------------------------------------------------------------------------------------
BOX_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def draw_boxes(image: PIL.Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[str] = (),
               width: int = 2) -> PIL.Image.Image:
    """A copy of ``image`` with normalised xyxy ``boxes`` outlined (and labelled)."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    for j, b in enumerate(boxes):
        colour = BOX_COLOURS[j % len(BOX_COLOURS)]
        draw.rectangle((b[0] * w, b[1] * h, b[2] * w - 1, b[3] * h - 1), outline=colour, width=width)
        if j < len(labels):
            draw.text((b[0] * w + 3, b[1] * h + 1), labels[j], fill=colour)
    return out


def layout_panel(pipe: LayoutToImagePipeline, prompt: str, phrases: Sequence[str],
                 boxes: Sequence[Sequence[float]], *, seed: int = 0, mode: Mode = "full",
                 num_inference_steps: int | None = None, guidance_scale: float | None = None, size: int = 256,
                 layout_params: dict[str, Any] | None = None) -> PIL.Image.Image:
    """Side-by-side panel: unguided (left) vs layout-controlled (right) from the same seed, boxes drawn.

    Each image is upscaled to ``size`` px (nearest) so the small shapes model stays visible.
    """
    tiles = []
    for m in ("none", mode):
        out = pipe(prompt, boxes=boxes, phrases=phrases, mode=m, num_inference_steps=num_inference_steps,
                   guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed),
                   layout_params=layout_params)
        img = out.images[0].resize((size, size), PIL.Image.NEAREST)
        tiles.append(draw_boxes(img, boxes, phrases))
    panel = PIL.Image.new("RGB", (2 * size + 8, size + 18), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for k, (tile, title) in enumerate(zip(tiles, ("unguided", f"CSG ({mode})"), strict=True)):
        panel.paste(tile, (k * (size + 8), 18))
        draw.text((k * (size + 8) + 4, 3), title, fill=(0, 0, 0))
    return panel
