"""Style transfer through self-attention: IlluSign and its peers on any Stable Diffusion 1.x model.

Usage (the API other modules build on; keep it stable):

    from PIL import Image
    from attn_processors.style import StyleConfig
    from pipelines.style_transfer import StyleTransferPipeline

    pipe = StyleTransferPipeline.from_pretrained("assets/shapes-sd")          # SD components
    start = pipe(Image.open("start.png"), Image.open("style.png"), config=StyleConfig(), seed=0)
    end = pipe(Image.open("end.png"), Image.open("style.png"), seed=0)
    start.image.save("start_illustration.png")
    fused = pipe.combine(start, end, mode="query")                            # stage 2 -> PIL image
    ref = pipe.text_route("a red circle", "outline", seed=0)                  # "..., outline style"
    kept = pipe(Image.open("start.png"), Image.open("style.png"), keep_colours=True)  # content's colours
    off = StyleConfig(steps=(0.0, 0.0), adain_steps=(0.0, 0.0))   # no injection: gives back the start
                                                                  # image (IlluSign: the edges)

Stage 1 (`__call__`): the content image, its edges (`canny_edges`, 5x5 blur, thresholds 30/120,
black on white) and the style image are VAE-encoded and inverted together with edit-friendly DDPM
inversion (`pipelines.edit_friendly_inversion`). The output row starts from the inverted latent of
`config.init` (IlluSign: the edges; the peers: the content) after `config.skip` of the steps, and is
denoised with that image's stored noises while every donor replays its own stored trajectory. Each
step runs the UNet twice, with the technique's swap on and off, and combines them with swap guidance
(`maths.swap_guidance`, scale linear 3.5 -> 1.75); inside `config.adain_steps` the output latent is
AdaIN'd to the style's. `guidance_scale` > 1 adds classifier-free guidance: the two CFG halves are
two row groups, each with its own donors.

Stage 2 (`combine`, our formula, attn_processors/style/fusion.py): the start and end illustrations
are inverted beside the style; the output starts from the start illustration's noise, and in the
technique's layers its query is Q = (1 - m) Q1 + m Q2 ("query"), or its attention a blend of the two
("mean" / "max" / "min"), with m = clip(1[cos(Q1, Q2) < tau_sim] + m1 + m2, 0, 1) from the hand masks
m1, m2, or an explicit `mask`. m = 0 gives the start-only output ("start"), m = 1 in "query" mode the
end-only one ("end").
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel
from scipy import ndimage
from transformers import CLIPTextModel, CLIPTokenizer

from attn_processors.core import Controller, apply
from attn_processors.style import (
    FUSE,
    STORE,
    SWAP,
    StyleConfig,
    StyleState,
    adain,
    guidance_schedule,
    in_range,
    row_labels,
    swap_guidance,
)
from pipelines.colour_keep import keep_content_colours
from pipelines.edit_friendly_inversion import Inversion, alphas, ddpm_step, invert, reconstruct

Tensor = torch.Tensor
PLAIN = "plain"  # controller.mode of the pass without the swap
GAUSS5 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0  # OpenCV's 5x5 Gaussian for sigma <= 0


# -- edges ------------------------------------------------------------------------------------------
def canny_edges(image: PIL.Image.Image, low: float = 30.0, high: float = 120.0) -> PIL.Image.Image:
    """Canny edges as black lines on white (RGB), as the IlluSign proxy draws them with OpenCV:
    grey (BT.601), 5x5 Gaussian blur, 3x3 Sobel, L1 magnitude, non-maximum suppression, hysteresis
    `low`/`high` with 8-connectivity. numpy + scipy only."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    blur = ndimage.convolve1d(ndimage.convolve1d(grey, GAUSS5, 0, mode="mirror"), GAUSS5, 1, mode="mirror")
    gx = ndimage.sobel(blur, axis=1, mode="mirror")
    gy = ndimage.sobel(blur, axis=0, mode="mirror")
    mag = np.abs(gx) + np.abs(gy)
    thin = _non_max_suppression(mag, gx, gy)
    labels, _ = ndimage.label(thin >= low, structure=np.ones((3, 3)))
    strong = np.unique(labels[(thin >= high) & (labels > 0)])
    edges = np.isin(labels, strong) & (labels > 0)
    out = np.where(edges, 0, 255).astype(np.uint8)
    return PIL.Image.fromarray(np.stack([out] * 3, -1))


def _non_max_suppression(mag: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Keep the magnitude where it is a maximum along the gradient direction (4 sectors)."""
    angle = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
    padded = np.pad(mag, 1)
    h, w = mag.shape

    def shifted(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    keep = np.zeros_like(mag, dtype=bool)
    for lo, hi, (dy, dx) in ((0, 22.5, (0, 1)), (157.5, 180.1, (0, 1)), (22.5, 67.5, (1, 1)),
                             (67.5, 112.5, (1, 0)), (112.5, 157.5, (1, -1))):
        sector = (angle >= lo) & (angle < hi)
        keep |= sector & (mag >= shifted(dy, dx)) & (mag > shifted(-dy, -dx))
    return np.where(keep, mag, 0.0)


# -- results ----------------------------------------------------------------------------------------
@dataclass
class StyleResult:
    """A stylised image and what stage 2 needs: its final latent, the style's inversion and settings."""

    image: PIL.Image.Image
    latent: Tensor  # [1, C, h, w] the output's final latent (stage 2 inverts it)
    style: Inversion  # the style image's inversion (stage 2 reuses it)
    config: StyleConfig  # resolved
    prompt: str
    seed: int
    num_inference_steps: int
    guidance_scale: float
    edges: PIL.Image.Image | None = None  # the content's edges image (IlluSign's geometry stream)


class StyleTransferPipeline(DiffusionPipeline):
    """SD 1.x components + an explicit loop: inversion, swap guidance, stage-2 fusion, text route."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: Any) -> None:
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """The SD components of a folder or hub id (a StableDiffusionPipeline's model_index.json works)."""
        sd = StableDiffusionPipeline.from_pretrained(pretrained_model_name_or_path, safety_checker=None,
                                                     requires_safety_checker=False, **kwargs)
        return cls(sd.vae, sd.text_encoder, sd.tokenizer, sd.unet, sd.scheduler)

    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size) * 2 ** (len(self.vae.config.block_out_channels) - 1)

    # -- text ---------------------------------------------------------------------------------------
    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` a closed-vocabulary tokenizer (< 1000 tokens, as the shapes model's) would
        split into pieces; an open vocabulary (real CLIP) knows every word."""
        if len(self.tokenizer) >= 1000:
            return []
        words = [w for w in text.lower().replace(",", " , ").split() if w.isalpha()]
        return list(dict.fromkeys(w for w in words if self.tokenizer.tokenize(w) != [w + "</w>"]))

    def _embed(self, prompt: str) -> Tensor:
        """(1, L, D) text embeddings; ValueError naming words the model does not know."""
        if bad := self.unknown_words(prompt):
            raise ValueError(f"prompt {prompt!r} has words this model does not know: {bad}; use words of "
                             "its captions, or an empty prompt")
        ids = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0]

    # -- images <-> latents -------------------------------------------------------------------------
    def _check_image(self, image: Any, name: str) -> PIL.Image.Image:
        if image is None:
            raise ValueError(f"{name} image is missing; pass a PIL image (the {name} to transfer"
                             + (" the look from)" if name == "style" else ")"))
        if not isinstance(image, PIL.Image.Image):
            raise ValueError(f"{name}={type(image).__name__}; pass a PIL.Image.Image")
        size = self.image_size
        return image.convert("RGB").resize((size, size), PIL.Image.BICUBIC)

    @torch.no_grad()
    def encode(self, images: Sequence[PIL.Image.Image]) -> Tensor:
        """VAE posterior means x scaling factor: (B, C, h, w)."""
        x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
                         for im in images]).to(self.device, self.vae.dtype)
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latent: Tensor) -> PIL.Image.Image:
        x = self.vae.decode(latent.to(self.vae.dtype) / self.vae.config.scaling_factor).sample[0]
        arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return PIL.Image.fromarray(arr)

    def _eps_model(self, emb: Tensor, guidance_scale: float) -> Any:
        """(x, t) -> eps with `emb` (and classifier-free guidance when guidance_scale > 1)."""
        uncond = self._embed("") if guidance_scale > 1 else None

        def eps(x: Tensor, t: Tensor) -> Tensor:
            if uncond is None:
                return self.unet(x, t, encoder_hidden_states=emb.expand(len(x), -1, -1)).sample
            e = torch.cat([uncond.expand(len(x), -1, -1), emb.expand(len(x), -1, -1)])
            u, c = self.unet(torch.cat([x, x]), t, encoder_hidden_states=e).sample.chunk(2)
            return u + guidance_scale * (c - u)

        return eps

    def invert(self, latents: Tensor, prompt: str = "", *, seed: int = 0, num_inference_steps: int = 50,
               guidance_scale: float = 1.0) -> Inversion:
        """Edit-friendly DDPM inversion of latents (B, C, h, w) with this model."""
        self.scheduler.set_timesteps(num_inference_steps)
        g = torch.Generator().manual_seed(seed)
        return invert(self._eps_model(self._embed(prompt), guidance_scale), latents, self.scheduler,
                      generator=g)

    def reconstruct(self, inversion: Inversion, prompt: str = "", *, start: int = 0,
                    guidance_scale: float = 1.0) -> Tensor:
        """Replay an inversion's stored noises without injection from step `start`: its x0 latents."""
        self.scheduler.set_timesteps(len(inversion.timesteps))
        eps = self._eps_model(self._embed(prompt), guidance_scale)
        return reconstruct(eps, inversion, self.scheduler, start)

    # -- stage 1 ------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, content: PIL.Image.Image, style: PIL.Image.Image | None, *,
                 config: StyleConfig | None = None, prompt: str = "", seed: int = 0,
                 num_inference_steps: int = 50, guidance_scale: float = 1.0,
                 keep_colours: bool = False) -> StyleResult:
        """Stylise `content` with the look of `style` (config None: IlluSign's defaults).

        ``keep_colours``: recolour the output's strokes with the content's colours
        (`pipelines.colour_keep`; attention transfer otherwise takes the style's palette too).
        """
        cfg = (config or StyleConfig()).resolved()
        content_im, style_im = self._check_image(content, "content"), self._check_image(style, "style")
        edges = canny_edges(content_im)
        uses_edges = cfg.init == "edges" or cfg.edge_stream == "edges" or bool(cfg.refresh_every)
        images = {"content": content_im, "edges": edges, "style": style_im}
        roles = [r for r in images if r != "edges" or uses_edges]  # the inverted images, in order
        inv = self.invert(self.encode([images[r] for r in roles]), prompt, seed=seed,
                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        latent = self._denoise(inv, roles, roles.index(cfg.init), cfg, SWAP, prompt, guidance_scale)
        image = self.decode(latent)
        if keep_colours:
            image = keep_content_colours(image, content_im)
        return StyleResult(image, latent, inv.rows(roles.index("style")), cfg, prompt, seed,
                           num_inference_steps, guidance_scale, edges)

    def _denoise(self, inv: Inversion, roles: list[str], init: int, cfg: StyleConfig, phase: str,
                 prompt: str, guidance_scale: float, state: StyleState | None = None) -> Tensor:
        """The explicit loop: the output row from image `init`'s noise, donors on their trajectories."""
        n_all = len(inv.timesteps)
        start = int(round((cfg.skip or 0.0) * n_all))
        ts = inv.timesteps[start:]
        a_t, a_prev = alphas(self.scheduler, inv.timesteps)
        s = inv.rows(roles.index("style")).xts
        out = inv.xts[start, init:init + 1].clone()
        if cfg.adain_init:
            out = adain(out, s[start], dim=(2, 3))
        emb = self._embed(prompt)
        cfg_halves = guidance_scale > 1
        cond = torch.cat([self._embed(""), emb]) if cfg_halves else emb  # (halves, L, D)
        halves = len(cond)
        labels = row_labels([["out", *roles]] * halves)
        scales = guidance_schedule(len(ts), *cfg.guidance)
        ctrl = Controller()
        if state is not None:
            ctrl.stores[STORE] = state
        with apply(self.unet, cfg, controller=ctrl), ctrl.driven_by_loop():
            ctrl.begin_run(num_steps=len(ts), latent_hw=tuple(out.shape[-2:]))
            for i, t in enumerate(self.progress_bar(ts)):  # the app reports and cancels per step
                j = start + i
                ctrl.begin_step(i, t)
                rows = torch.cat([out, inv.xts[j]])  # (1 + images, C, h, w): [out, donors...]
                ctrl.mode = phase  # the technique's pass: swap (stage 1) or fuse (stage 2)
                ctrl.set_branch(labels)  # one label per row: out.<half>, <donor>.<half>
                eps_swap = self._guided(rows.repeat(halves, 1, 1, 1), t, cond, len(rows), guidance_scale)
                ctrl.mode = PLAIN
                ctrl.set_branch(row_labels([["out"]] * halves))
                eps_plain = self._guided(out.repeat(halves, 1, 1, 1), t, cond, 1, guidance_scale)
                eps = swap_guidance(eps_plain, eps_swap[:1], float(scales[i]))
                out = ddpm_step(out, eps, a_t[j], a_prev[j], inv.zs[j, init:init + 1])
                if in_range(i, len(ts), cfg.adain_steps):
                    out = adain(out, s[j + 1], dim=(2, 3))
            ctrl.end_run()
        return out

    def _guided(self, x: Tensor, t: Tensor, cond: Tensor, per_half: int, guidance_scale: float) -> Tensor:
        """eps of the first `per_half` rows' images: one UNet call over [uncond rows, cond rows]."""
        e = cond.repeat_interleave(per_half, dim=0)
        eps = self.unet(x, t, encoder_hidden_states=e).sample
        if len(cond) == 1:
            return eps
        u, c = eps.chunk(2)
        return u + guidance_scale * (c - u)

    # -- stage 2 ------------------------------------------------------------------------------------
    @torch.no_grad()
    def combine(self, start: StyleResult, end: StyleResult, masks: Sequence[Any] = (), *,
                mask: Any = None, mode: str | None = None, tau_sim: float | None = None) -> PIL.Image.Image:
        """Stage 2: one illustration from the start and end results (module docstring formula).

        `masks`: hand masks m1, m2 (HxW arrays/tensors, any resolution, 1 = hand); `mask`: an explicit
        m that overrides m_dis and the hands (0: start only; 1 with mode "query": end only); `mode`:
        start | end | query | mean | max | min (default: the start's config.stage2)."""
        if start.num_inference_steps != end.num_inference_steps or start.prompt != end.prompt:
            raise ValueError("start and end were made with different num_inference_steps or prompts; "
                             "stylise both frames with the same settings")
        cfg = start.config
        changes = {k: v for k, v in (("stage2", mode), ("tau_sim", tau_sim)) if v is not None}
        cfg = dataclasses.replace(cfg, **changes) if changes else cfg
        inv = self.invert(torch.cat([start.latent, end.latent]), start.prompt, seed=start.seed + 1,
                          num_inference_steps=start.num_inference_steps,
                          guidance_scale=start.guidance_scale)
        inv = Inversion.cat([inv, start.style])
        state = StyleState()
        state.begin_run(None if mask is None else _mask_tensor(mask), [_mask_tensor(m) for m in masks])
        latent = self._denoise(inv, ["q1", "q2", "style"], 0, cfg, FUSE, start.prompt, start.guidance_scale,
                               state)
        return self.decode(latent)

    # -- the text route (reference) -----------------------------------------------------------------
    @torch.no_grad()
    def text_route(self, content_prompt: str, style: str, *, seed: int = 0, num_inference_steps: int = 20,
                   guidance_scale: float = 4.0) -> PIL.Image.Image:
        """The reference without images: sample "<content_prompt>, <style> style" with the plain model."""
        if not isinstance(style, str) or not style.strip() or " " in style.strip():
            raise ValueError(f"style={style!r}; give one style word, e.g. 'outline'")
        if bad := self.unknown_words(f"{style} style"):
            raise ValueError(f"this model does not know the style word(s) {bad}: it was not trained on "
                             f"'..., {style} style' captions; use a style model (assets/shapes-style-sd)")
        prompt = f"{content_prompt}, {style} style"
        sd = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                     unet=self.unet, scheduler=self.scheduler, safety_checker=None,
                                     feature_extractor=None, requires_safety_checker=False)
        sd.set_progress_bar_config(disable=True)
        return sd(prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                  generator=torch.Generator().manual_seed(seed)).images[0]


def _mask_tensor(mask: Any) -> Tensor:
    """An HxW (or 1xHxW) mask from an array, tensor or PIL image, as float [1, H, W] in [0, 1]."""
    if isinstance(mask, PIL.Image.Image):
        mask = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32) if not isinstance(mask, Tensor) else mask).float()
    if isinstance(mask, int | float):
        m = m.reshape(1, 1, 1)
    m = m[None] if m.dim() == 2 else m
    if m.dim() != 3:
        raise ValueError(f"mask of shape {tuple(m.shape)}; give an HxW array (1 = take the end frame)")
    return m.clamp(0, 1)
