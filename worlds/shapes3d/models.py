"""Component builders of the 3D shapes world's two models, in the exact public Diffusers classes.

**Novel view (Zero-1-to-3 structure, Liu et al. 2023):** an 8-channel ``UNet2DConditionModel``
(noisy latent ++ the source view's latent), a ``CLIPVisionModelWithProjection`` image encoder, a
``CCProjection`` linear on [CLIP image embedding, delta polar, sin delta azimuth, cos delta
azimuth, delta radius] whose output is the UNet's one cross-attention token, an ``AutoencoderKL``
and DDIM scaled-linear 0.00085-0.012. ``CCProjection`` has the weight names of the community
``Zero1to3StableDiffusionPipeline`` (``projection.weight``, ``projection.bias``) and its config keys
(``in_channel``, ``out_channel``), so public Zero-1-to-3 checkpoints load into it.

**Text + depth:** the shapes-sd text-to-image layout with a vocabulary that has the 3D shape
words, and a ``ControlNetModel`` on depth (``depth_control``: 3-channel normalised inverse depth).
Its conditioning embedding downsamples x4, like the VAE: ``ControlNetModel.from_unet``'s default
(16, 32, 96, 256) downsamples x8 and fails on 16x16 latents.

Sizes are the brief's (UNet 3.2 M parameters, CLIP 0.64 M, ControlNet 1.6 M); pose convention:
polar = 90 - elevation, angles in radians, azimuth as in the scene file (+X towards +Y).

>>> unet = build_zero123_unet()
>>> unet.config.in_channels, unet.config.cross_attention_dim
(8, 128)
"""

from __future__ import annotations

import math

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DDPMScheduler,
    UNet2DConditionModel,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection

from worlds.shapes.models import IMAGE_SIZE, SCHEDULE, build_text_encoder, build_unet, build_vae
from worlds.shapes.tokenizer import build_tokenizer
from worlds.shapes.vocab import COLOURS, FUNCTION_WORDS, caption, object_phrase

from .scene import SHAPES3D, Object3D, View

EMBED_DIM = 128  # CLIP image embedding = cross-attention width
POSE_DIM = 4  # [d polar, sin d azimuth, cos d azimuth, d radius]
CONTROL_EMBEDDING = (16, 32, 64)  # x4 downsampling, matching the VAE
WORDS3D: tuple[str, ...] = (*FUNCTION_WORDS, *COLOURS, *SHAPES3D)
# CLIP's normalisation, applied in torch (Zero-1-to-3 resizes and normalises tensors itself).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CCProjection(ModelMixin, ConfigMixin):
    """Zero-1-to-3's camera-conditioning projection: [image embedding ++ pose] -> embedding."""

    @register_to_config
    def __init__(self, in_channel: int = EMBED_DIM + POSE_DIM, out_channel: int = EMBED_DIM) -> None:
        super().__init__()
        self.in_channel, self.out_channel = in_channel, out_channel
        self.projection = torch.nn.Linear(in_channel, out_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, in) -> (B, 1, out)
        return self.projection(x)


def build_zero123_unet(block_out_channels: tuple[int, ...] = (32, 64, 128)) -> UNet2DConditionModel:
    """The shapes-sd UNet layout with 8 input channels (cross-attention at 16x16, 8x8 and 4x4)."""
    return build_unet(block_out_channels, in_channels=8, cross_attention_dim=EMBED_DIM)


def build_image_encoder() -> CLIPVisionModelWithProjection:
    config = CLIPVisionConfig(hidden_size=EMBED_DIM, intermediate_size=4 * EMBED_DIM, num_hidden_layers=3,
                              num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=8,
                              projection_dim=EMBED_DIM, hidden_act="quick_gelu")
    return CLIPVisionModelWithProjection(config)


def build_cc_projection() -> CCProjection:
    return CCProjection(EMBED_DIM + POSE_DIM, EMBED_DIM)


def build_world_vae() -> AutoencoderKL:
    """The shapes-sd VAE layout (x4, 4 latent channels); the shipped one is fine-tuned on renders."""
    return build_vae()


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE, prediction_type="epsilon", clip_sample=False)


def sample_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULE, prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1)


def pose_embedding(source: View, target: View) -> torch.Tensor:
    """(4,) Zero-1-to-3 relative pose: [d polar (rad), sin d azimuth, cos d azimuth, d radius].

    polar = 90 - elevation (from +Z, as Zero-1-to-3); d = target - source.
    """
    d_polar = math.radians((90 - target.elevation) - (90 - source.elevation))
    d_az = math.radians(target.azimuth - source.azimuth)
    return torch.tensor([d_polar, math.sin(d_az), math.cos(d_az), target.radius - source.radius])


def clip_preprocess(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> the CLIP encoder's input (bicubic resize, CLIP mean/std).

    Done in torch, with no ``CLIPImageProcessor``: transformers 5 without torchvision gives a
    ``CLIPImageProcessorPil`` that Diffusers records but does not save, so a pipeline holding one
    does not reload (the brief's round-trip finding).
    """
    x = (images + 1) / 2
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=True)
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - mean) / std


def condition_tokens(image_encoder: CLIPVisionModelWithProjection, cc_projection: CCProjection,
                     images: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
    """Source images (B, 3, H, W) in [-1, 1] and poses (B, 4) -> cross-attention tokens (B, 1, 128)."""
    embeds = image_encoder(clip_preprocess(images)).image_embeds  # (B, 128)
    return cc_projection(torch.cat([embeds, poses.to(embeds.dtype)], -1)[:, None])


# ------------------------------------------------------------------------------ text + depth
def build_tokenizer3d() -> CLIPTokenizer:
    """One token per word of the 3D captions ("a red cube and a blue sphere")."""
    return build_tokenizer(WORDS3D)


def build_text_encoder3d(tok: CLIPTokenizer) -> CLIPTextModel:
    return build_text_encoder(tok)


def build_t2i_unet(block_out_channels: tuple[int, ...] = (32, 64, 128)) -> UNet2DConditionModel:
    return build_unet(block_out_channels)


def build_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    """A depth ControlNet initialised from ``unet`` (x4 conditioning embedding, RGB order)."""
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONTROL_EMBEDDING)


def scene_caption(objects: tuple[Object3D, ...] | list[Object3D]) -> str:
    """'a red cube and a blue sphere' in the objects' order."""
    return caption([object_phrase(o.colour, o.shape) for o in objects])


def depth_control(depth: torch.Tensor) -> torch.Tensor:
    """(H, W) z-depth (inf = nothing) -> (3, H, W) in [0, 1]: inverse depth / its maximum, 0 = nothing.

    Per-image normalisation, like the monocular depth maps public depth ControlNets were trained on.
    """
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {tuple(depth.shape)}")
    inv = torch.where(torch.isfinite(depth) & (depth > 0), 1.0 / depth, torch.zeros_like(depth))
    peak = inv.max()
    inv = inv / peak if peak > 0 else inv
    return inv[None].expand(3, -1, -1).float().contiguous()


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

