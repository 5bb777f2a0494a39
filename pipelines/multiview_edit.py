"""Multi-view editing with consolidated self-attention queries (QNeRF; Patashnik et al., SIGGRAPH Asia
2024) on Stable-Diffusion-architecture components, with an optional ControlNet per view.

    pipe = MultiViewEditPipeline.from_pretrained("assets/shapes3d-sd")     # + controlnet-depth/
    images, cameras = load_views("scene/transforms.json")
    out = pipe(images, cameras, "a red cube", "a blue cube", controls=depth_maps, qnerf=QNeRFConfig())
    out.images[0].save("view0.png")

The loop reads top to bottom:

1. every view is DDIM-inverted with the source prompt (no CFG; its source control), keeping every
   intermediate latent (pipelines/ddim_inversion.py);
2. the edit runs MasaCtrl-style: per view, rows ``[src_u, tgt_u, src_c, tgt_c]``; the source rows
   replay the inverted latent of the step, the target rows start from the inverted noise with the
   edit prompt (and the edit's control), and from ``kv_start_step`` the target's decoder
   self-attention takes its own view's source K/V;
3. the interval events (attn_processors/qnerf/schedule.py) add the consolidation: a kept step of a
   later interval first moves each view's latent by one query-guidance step towards the queries
   rendered by the last QNeRF; free steps run ahead, the last of them extracts every view's queries
   (fp16, CPU), a QNeRF is fitted to them, and the latent rewinds.

``qnerf.alpha = 0`` is the per-view edit (no intervals, no field): the baseline with the same
inversion and controls. Sampling draws no noise (DDIM, eta = 0) and the field is seeded (``generator``,
default seed 0), so runs are deterministic.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from transformers import CLIPTextModel, CLIPTokenizer

from attn_processors.core import Controller, apply
from attn_processors.qnerf import (
    INJECT_MODE,
    STORE,
    Event,
    GuidanceForwardDone,
    QNeRFConfig,
    QueryStore,
    guidance_step,
    interval_events,
    query_distance,
    run_events,
    view_labels,
)
from attn_processors.qnerf.cameras import Cameras, read_transforms
from attn_processors.qnerf.field import QueryField, fit_field

from .ddim_inversion import Inversion, alpha, ddim_invert, ddim_update, predict_eps, previous_timestep
from .decoding import decode_latents

Tensor = torch.Tensor
OutputType = Literal["pil", "np", "pt", "latent"]
FitCallback = Callable[[int, dict[str, Tensor], dict[str, Tensor]], dict[str, Tensor] | None]
CONTROLNET_FOLDER = "controlnet-depth"  # the ControlNet subfolder of a shipped model (assets/shapes3d-sd)


@dataclass
class MultiViewEditOutput(BaseOutput):
    """One edited image per view, and what the run cost: denoiser calls (each a batch of views),
    QNeRF fits (step, seconds, final loss), the largest query extraction in MB, guidance losses."""

    images: list[PIL.Image.Image] | np.ndarray | Tensor
    stats: dict[str, Any] = field(default_factory=dict)


# -- inputs ------------------------------------------------------------------------------------------
def load_views(transforms: str | os.PathLike) -> tuple[Tensor, Cameras]:
    """(images (V, 3, H, W) in [-1, 1], cameras) from a nerfstudio transforms.json and its RGB files.

    A frame whose image is missing or whose size differs from the file's ``w x h`` raises a
    ValueError naming the file and the frame.
    """
    cameras, paths = read_transforms(transforms)
    images = []
    for i, path in enumerate(paths):
        where = f"{transforms}: frames[{i}] ({path})"
        if not Path(path).is_file():
            raise ValueError(f"{where}: the image file does not exist")
        with PIL.Image.open(path) as img:
            rgb = img.convert("RGB")
        if rgb.size != (cameras.width, cameras.height):
            raise ValueError(f"{where} is {rgb.width}x{rgb.height} but the cameras are "
                             f"{cameras.width}x{cameras.height}; resize the image or fix w/h")
        images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
    return torch.stack(images), cameras


def load_depths(transforms: str | os.PathLike) -> Tensor | None:
    """(V, H, W) z-depth from the frames' ``depth_file_path`` (16-bit PNGs, times the file's
    ``depth_unit_scale_factor``, nerfstudio's default 1e-3; 0 = no surface -> inf), or None when no frame
    has one. A frame without one while others have it, a missing file or a size that differs from the
    cameras raises a ValueError naming the file and the frame."""
    data = json.loads(Path(transforms).read_text(encoding="utf-8"))  # read_transforms has validated it
    cameras, _ = read_transforms(transforms)
    frames = data["frames"]
    given = ["depth_file_path" in f for f in frames]
    if not any(given):
        return None
    scale = data.get("depth_unit_scale_factor", 1e-3)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
        raise ValueError(f"{transforms}: depth_unit_scale_factor={scale!r}; give a positive number")
    depths = []
    for i, frame in enumerate(frames):
        where = f"{transforms}: frames[{i}]"
        if not given[i]:
            raise ValueError(f"{where} has no depth_file_path while other frames have one; give every "
                             "frame its depth or none")
        path = Path(transforms).parent / frame["depth_file_path"]
        if not path.is_file():
            raise ValueError(f"{where} ({path}): the depth file does not exist")
        with PIL.Image.open(path) as img:
            raw = np.asarray(img, dtype=np.float64)
        if raw.shape != (cameras.height, cameras.width):
            raise ValueError(f"{where} ({path}): depth of shape {raw.shape}, cameras are "
                             f"{cameras.width}x{cameras.height}; give one-channel depth at the image size")
        depths.append(torch.from_numpy(np.where(raw > 0, raw * scale, np.inf)).float())
    return torch.stack(depths)


def to_tensor_views(images: Any, name: str = "images") -> Tensor:
    """(V, 3, H, W) float in [-1, 1] from such a tensor or a list of PIL images / HxWx3 uint8 arrays;
    views of different sizes raise a ValueError naming the first that differs."""
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{name} tensor of shape {tuple(images.shape)}; give (V, 3, H, W) in [-1, 1]")
        return images.float()
    if not isinstance(images, Sequence) or not images:
        raise ValueError(f"{name} must be a (V, 3, H, W) tensor or a non-empty list of images")
    out = []
    for i, img in enumerate(images):
        arr = np.asarray(img.convert("RGB") if isinstance(img, PIL.Image.Image) else img)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"{name}[{i}] has shape {arr.shape}; give RGB images (H, W, 3)")
        if out and arr.shape[:2] != tuple(out[0].shape[-2:]):
            raise ValueError(f"{name}[{i}] is {arr.shape[1]}x{arr.shape[0]} but {name}[0] is "
                             f"{out[0].shape[-1]}x{out[0].shape[-2]}; give views of one size")
        out.append(torch.from_numpy(arr.astype(np.float32) / 127.5 - 1).permute(2, 0, 1))
    return torch.stack(out)


def check_views(images: Tensor, cameras: Cameras, controls: Tensor | None, source_controls: Tensor | None,
                depths: Tensor | None) -> None:
    """ValueError naming the first mismatch between views, cameras, controls and depths."""
    v, _, h, w = images.shape
    if len(cameras) != v:
        raise ValueError(f"{v} views but {len(cameras)} camera poses; give one pose per view (frame)")
    if (cameras.height, cameras.width) != (h, w):
        raise ValueError(f"views are {w}x{h} but the cameras are {cameras.width}x{cameras.height}; "
                         "give cameras of the views' size (Cameras.resized)")
    for name, x, c in (("controls", controls, 3), ("source_controls", source_controls, 3),
                       ("depths", depths, None)):
        want = (v, c, h, w) if c else (v, h, w)
        if x is not None and tuple(x.shape) != want:
            raise ValueError(f"{name} has shape {tuple(x.shape)}; give {want} (one per view, the views' "
                             "size)")


# -- the pipeline ------------------------------------------------------------------------------------
class MultiViewEditPipeline(DiffusionPipeline):
    """Edit posed views of one object together: per-view MasaCtrl (+ ControlNet), consolidated by QNeRF."""

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 unet: UNet2DConditionModel, scheduler: DDIMScheduler,
                 controlnet: ControlNetModel | None = None) -> None:
        super().__init__()
        if not isinstance(scheduler, DDIMScheduler):
            scheduler = DDIMScheduler.from_config(scheduler.config)  # the loop is DDIM (eta = 0)
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler, controlnet=controlnet)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, controlnet: ControlNetModel | None = None,
                        torch_dtype: torch.dtype | None = None) -> MultiViewEditPipeline:
        """A text-to-image SD folder (``vae/ text_encoder/ tokenizer/ unet/ scheduler/``) and, when
        present, its ``controlnet-depth/`` ControlNet (or the one given)."""
        root = Path(path)
        if not (root / "unet" / "config.json").is_file():
            raise ValueError(f"{root} has no unet/config.json; give a Stable Diffusion model folder "
                             "(e.g. assets/shapes3d-sd)")
        kw: dict[str, Any] = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
        if controlnet is None and (root / CONTROLNET_FOLDER / "config.json").is_file():
            controlnet = ControlNetModel.from_pretrained(root / CONTROLNET_FOLDER, **kw)
        pipe = cls(vae=AutoencoderKL.from_pretrained(root, subfolder="vae", **kw),
                   text_encoder=CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **kw),
                   tokenizer=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer"),
                   unet=UNet2DConditionModel.from_pretrained(root, subfolder="unet", **kw),
                   scheduler=DDIMScheduler.from_pretrained(root, subfolder="scheduler"),
                   controlnet=controlnet)
        for m in (pipe.vae, pipe.text_encoder, pipe.unet, pipe.controlnet):
            if m is not None:
                m.eval()
        return pipe

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self._execution_device))[0]

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """(V, 3, H, W) in [-1, 1] -> scaled latents (V, 4, h, w) (posterior mode)."""
        x = images.to(self._execution_device, self.vae.dtype)
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    # -- the call ------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        images: Any,
        cameras: Cameras,
        source_prompt: str,
        edit_prompt: str,
        *,
        qnerf: QNeRFConfig | None = None,
        controls: Tensor | None = None,
        source_controls: Tensor | None = None,
        depths: Tensor | None = None,
        bounds: tuple[Sequence[float], Sequence[float]] = ((-1.0,) * 3, (1.0,) * 3),
        num_inference_steps: int = 20,
        guidance_scale: float = 5.0,
        conditioning_scale: float = 1.0,
        view_batch: int = 4,
        generator: torch.Generator | None = None,
        output_type: OutputType = "pil",
        callback_on_fit: FitCallback | None = None,
    ) -> MultiViewEditOutput:
        """Edit ``images`` (V views; cameras of the same size) from ``source_prompt`` to ``edit_prompt``.

        ``qnerf``: the technique's settings (default ``QNeRFConfig()``; ``alpha=0``: the per-view
        edit). ``controls``: the edit's control image per view (V, 3, H, W) in [0, 1] (depth of the edited
        object: projections of one 3D control); ``source_controls``: the source views' (default: the
        same). Both need the pipeline's ControlNet. ``depths`` (V, H, W) z-depth supervises the query
        field's density; ``bounds`` is the scene box (min corner, max corner) the field covers;
        ``generator`` seeds its initialisation and ray sampling (default: seed 0, so runs repeat).
        ``view_batch`` views share one denoiser call. ``callback_on_fit(step, extracted, rendered)``
        sees each fit's targets and renders ({layer: (V, h, w, C)}) and may return maps that replace
        the renders as guidance targets: a seam for diagnostics such as
        ``benchmarks/qnerf_query_leverage.py``.
        """
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type={output_type!r}; use 'pil', 'np', 'pt' or 'latent'")
        if view_batch < 1 or num_inference_steps < 1:
            raise ValueError(f"view_batch={view_batch}, num_inference_steps={num_inference_steps}; give >= 1")
        x = to_tensor_views(images)
        check_views(x, cameras, controls, source_controls, depths)
        if controls is not None and self.controlnet is None:
            raise ValueError("controls were given but this pipeline has no ControlNet; load one "
                             f"({CONTROLNET_FOLDER}/) or leave controls out")
        qnerf = QNeRFConfig() if qnerf is None else qnerf
        ctrl, stats = Controller(), {"denoiser_calls": 0, "fits": [], "query_mb": 0.0, "guidance_loss": []}
        with apply(self.unet, qnerf, controller=ctrl), ctrl.driven_by_loop():
            run = _Run(self, ctrl, qnerf, x, cameras, source_prompt, edit_prompt, controls, source_controls,
                       depths, bounds, guidance_scale, conditioning_scale, view_batch, generator, stats)
            run.on_fit = callback_on_fit
            z = run.sample(num_inference_steps)
        return MultiViewEditOutput(images=self._decode(z, output_type), stats=stats)

    def _decode(self, z: Tensor, output_type: str) -> Any:
        return decode_latents(self.vae, self.image_processor, z, output_type)


class _Run:
    """One edit: the state the loop's steps share (latents, prompts, controls, the field)."""

    def __init__(self, pipe: MultiViewEditPipeline, ctrl: Controller, config: QNeRFConfig, images: Tensor,
                 cameras: Cameras, source_prompt: str, edit_prompt: str, controls: Tensor | None,
                 source_controls: Tensor | None, depths: Tensor | None,
                 bounds: tuple[Sequence[float], Sequence[float]],
                 guidance_scale: float, conditioning_scale: float, view_batch: int,
                 generator: torch.Generator | None, stats: dict[str, Any]) -> None:
        self.pipe, self.ctrl, self.config, self.cameras = pipe, ctrl, config, cameras
        self.views = len(cameras)
        dev = pipe._execution_device
        self.texts = dict(zip(("uncond", "source", "target"),
                              pipe.encode_text(["", source_prompt, edit_prompt]).split(1), strict=True))
        self.control = None if controls is None else controls.to(dev, pipe.unet.dtype)
        src = source_controls if source_controls is not None else controls
        self.source_control = None if src is None else src.to(dev, pipe.unet.dtype)
        self.z0 = pipe.encode_images(images)
        self.depths, self.bounds = depths, bounds
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.guidance_scale, self.scale = guidance_scale, conditioning_scale
        self.batch, self.stats = view_batch, stats
        self.store: QueryStore = ctrl.stores[STORE]
        self.field: QueryField | None = None
        self.inversion: Inversion | None = None
        self.on_fit: FitCallback | None = None

    def batches(self) -> list[list[int]]:
        return [list(range(s, min(s + self.batch, self.views))) for s in range(0, self.views, self.batch)]

    def sample(self, num_steps: int) -> Tensor:
        sched = self.pipe.scheduler
        sched.set_timesteps(num_steps, device=self.z0.device)
        self.ctrl.begin_run(num_steps, tuple(self.z0.shape[-2:]))
        self.invert()
        if self.config.alpha == 0 and not self.config.hard_inject:  # the per-view edit: kept steps only
            events: list[Event] = [Event("plain", i) for i in range(num_steps)]
        else:
            events = list(interval_events(num_steps, self.config.tau, self.config.until_step))
        z = run_events(self.inversion.noise.clone(), events, self.step, self.fit)
        self.ctrl.end_run()
        return z

    def invert(self) -> None:
        """DDIM inversion of every view with the source prompt and control, all latents kept."""
        self.ctrl.mode = "invert"
        parts = []
        for views in self.batches():
            self.ctrl.set_branch(("source.cond",))
            control = None if self.source_control is None else self.source_control[views]
            parts.append(ddim_invert(self.pipe.unet, self.pipe.scheduler, self.z0[views],
                                     self.texts["source"].expand(len(views), -1, -1),
                                     controlnet=self.pipe.controlnet, control=control,
                                     conditioning_scale=self.scale,
                                     before_call=lambda i, t: self.ctrl.begin_step(i, t)))
            self.stats["denoiser_calls"] += len(parts[-1].timesteps)
        latents = [torch.cat([p.latents[j] for p in parts]) for j in range(len(parts[0].latents))]
        self.inversion = Inversion(parts[0].timesteps, latents)

    # -- one denoising step of every view ------------------------------------------------------------
    def step(self, z: Tensor, event: Event) -> Tensor:
        i = event.step
        t = self.inversion.timesteps[i]
        out = z.clone()
        for views in self.batches():
            self.ctrl.begin_step(i, t)
            zb = z[views]
            if event.kind == "guided" and self.config.alpha > 0:
                loss_of = functools.partial(self.query_loss, views=views, i=i, t=t)
                zb, loss = guidance_step(zb, self.config.alpha, loss_of, self.config.guidance_steps)
                self.stats["guidance_loss"].append({"step": i, "views": views, "loss": loss})
            inject = event.kind == "guided" and self.config.hard_inject
            self.ctrl.mode = "extract" if event.kind == "extract" else INJECT_MODE if inject else "denoise"
            out[views] = self.denoise(zb, views, i, t)
        if event.kind == "extract":
            self.stats["query_mb"] = max(self.stats["query_mb"], self.store.nbytes() / 2**20)
        return out

    def rows(self, zb: Tensor, views: list[int], i: int, cfg: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """Latents, prompt embeddings and controls of the rows ``view_labels(b, cfg)`` (uncond half first)."""
        b = len(views)
        src = self.inversion.latents[i][views]
        halves = (("uncond", "uncond"), ("source", "target")) if cfg else (("source", "target"),)
        z = torch.cat([torch.cat([src, zb]) for _ in halves])
        text = torch.cat([self.texts[s].expand(b, -1, -1) for pair in halves for s in pair])
        control = None
        if self.control is not None:
            src_tgt = torch.cat([self.source_control[views], self.control[views]])
            control = torch.cat([src_tgt for _ in halves])
        return z, text, control

    def denoise(self, zb: Tensor, views: list[int], i: int, t: int) -> Tensor:
        """One CFG DDIM step of the target rows; the source rows replay the inversion (K/V donors)."""
        b, cfg = len(views), self.guidance_scale > 1.0
        self.store.begin_views(views, self.views)
        self.ctrl.set_branch(view_labels(b, cfg))
        z, text, control = self.rows(zb, views, i, cfg)
        eps = predict_eps(self.pipe.unet, z, t, text, self.pipe.controlnet, control, self.scale)
        self.stats["denoiser_calls"] += 1
        eps = eps.unflatten(0, (-1, 2, b))[:, 1]  # (halves, b, ...): the target rows
        eps = eps[0] + self.guidance_scale * (eps[1] - eps[0]) if cfg else eps[0]
        sched = self.pipe.scheduler
        a_prev = alpha(sched, previous_timestep(self.inversion.timesteps, i))
        return ddim_update(zb, eps, alpha(sched, t), a_prev)

    def query_loss(self, zg: Tensor, views: list[int], i: int, t: int) -> Tensor:
        """The guidance forward (cond rows only, up to the last query layer) and its query distance."""
        self.ctrl.mode = "guide"
        self.store.begin_views(views, self.views)
        self.ctrl.set_branch(view_labels(len(views), cfg=False))
        z, text, control = self.rows(zg, views, i, cfg=False)
        with contextlib.suppress(GuidanceForwardDone):
            predict_eps(self.pipe.unet, z, t, text, self.pipe.controlnet, control, self.scale)
        self.stats["denoiser_calls"] += 1
        rendered = {name: r[views].to(zg.device) for name, r in self.store.rendered.items()}
        return query_distance(self.store.live, rendered)

    # -- the field -----------------------------------------------------------------------------------
    def fit(self, event: Event) -> None:
        """Fit QNeRF_k to the extracted queries (warm start from QNeRF_{k-1}) and render every view."""
        start = time.perf_counter()
        targets = self.store.maps()  # {layer: (V, h, w, C)} fp16 on the CPU
        if self.field is None or not self.config.warm_start:
            self.field = QueryField({n: m.shape[-1] for n, m in targets.items()}, encoder=self.config.encoder,
                                    bounds=self.bounds, generator=self.generator).to(self.z0.device)
        with torch.enable_grad():
            cfg = self.config
            report = fit_field(self.field, targets, self.cameras, iters=cfg.fit_iters, lr=cfg.fit_lr,
                               depth=self.depths, depth_weight=cfg.depth_weight, generator=self.generator)
        with torch.no_grad():
            rendered = self.field.render(self.cameras, {n: tuple(m.shape[1:3]) for n, m in targets.items()})
        if self.on_fit is not None:
            rendered = check_replacement(self.on_fit(event.step, targets, rendered), rendered)
        self.store.set_rendered(rendered)
        self.store.clear()
        self.stats["fits"].append({"step": event.step, "seconds": round(time.perf_counter() - start, 3),
                                   "report": _plain(report)})


def check_replacement(new: dict[str, Tensor] | None, rendered: dict[str, Tensor]) -> dict[str, Tensor]:
    """A fit callback's maps, which must match the renders layer for layer and shape for shape."""
    if new is None:
        return rendered
    for name, r in rendered.items():
        got = new.get(name)
        if got is None or tuple(got.shape) != tuple(r.shape):
            shape = None if got is None else tuple(got.shape)
            raise ValueError(f"callback_on_fit returned {shape} for layer {name!r}; return a map of "
                             f"shape {tuple(r.shape)} for every rendered layer, or None to keep the renders")
    return {name: new[name] for name in rendered}


def _plain(report: Any) -> Any:
    """A fit report as JSON-ready data (dataclass fields, floats)."""
    if hasattr(report, "__dataclass_fields__"):
        return {k: _plain(getattr(report, k)) for k in report.__dataclass_fields__}
    if isinstance(report, Tensor):
        return report.tolist()
    if isinstance(report, list | tuple):
        return [_plain(r) for r in report]
    return report
