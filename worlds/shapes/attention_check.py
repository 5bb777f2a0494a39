"""Is cross-attention localised? Per-word attention maps of the UNet's attn2 layers vs object boxes.

The measure (TokenCompose-style grounding, Wang et al. 2024): on every ``attn2`` layer a probe
stores head-averaged attention probabilities; a word's map is upsampled to the image size, summed
over steps, normalised to sum 1, and compared with the box of the object the word describes:

* ``mass_ratio``  = (map mass inside the box) / (box area share); 1.0 means no localisation;
* ``peak_in_box`` = fraction of maps whose arg-max pixel lies inside the box.

The same probe, with gradients kept, gives the training's token-grounding loss (TokenCompose,
Wang et al. 2024, Eq. 2: ``L_token = mean_i (1 - sum_u A_iu M_iu / sum_u A_iu)^2``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from attn_processors.core import CallInfo, ControlledProcessor, Controller, Select, Site
from attn_processors.core.install import processors_for

from .detector import detect
from .vocab import parse_caption


# Token position of the j-th object's colour and shape words in "<bos> a c s , a c s and a c s <eos>".
def colour_position(j: int) -> int:
    return 2 + 4 * j


def shape_position(j: int) -> int:
    return 3 + 4 * j


class CrossAttentionProbe(ControlledProcessor):
    """``attn2`` processor: the core's explicit-softmax path, handing its probabilities on unchanged.

    ``sink(name, probs)`` receives head-averaged probabilities (B, N, T) of every call, with their
    autograd graph (the training's grounding loss differentiates through them).
    """

    def __init__(self, site: Site, sink: Callable[[str, torch.Tensor], None]) -> None:
        super().__init__(site, Controller())
        self.name = site.name
        self.sink = sink

    def edit_probs(self, probs: torch.Tensor, call: CallInfo) -> torch.Tensor:  # [B, H, N, T] fp32
        self.sink(self.name, probs.mean(1))  # (B, N, T)
        return probs


def cross_attention_names(unet: torch.nn.Module) -> list[str]:
    """Processor keys of every attn2 layer, in forward order."""
    return [k for k in unet.attn_processors if k.endswith("attn2.processor")]


def install_probes(unet: torch.nn.Module, sink: Callable[[str, torch.Tensor], None]) -> dict:
    """Put a probe on every attn2 layer; returns the previous processors (pass to ``restore``)."""
    previous = dict(unet.attn_processors)
    unet.set_attn_processor(processors_for(unet, lambda site: CrossAttentionProbe(site, sink),
                                           Select(kinds=("cross",))))
    return previous


def restore(unet: torch.nn.Module, previous: dict) -> None:
    unet.set_attn_processor(previous)


def grounding_loss(
    probs: list[torch.Tensor], masks: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """TokenCompose token loss over layers, objects and their colour + shape words.

    probs: per layer (B, N, T) with N = r*r; masks: (B, J, R, R) object coverage in caption order;
    valid: (B, J) bool. Returns a scalar (0 when no object is valid).
    """
    j_count = masks.shape[1]
    positions = [p for j in range(j_count) for p in (colour_position(j), shape_position(j))]
    w = valid.repeat_interleave(2, dim=1).float()  # (B, 2J)
    if w.sum() == 0:
        return probs[0].sum() * 0.0
    losses = []
    for p in probs:
        r = int(math.isqrt(p.shape[1]))
        m = F.adaptive_avg_pool2d(masks, r).flatten(2).repeat_interleave(2, dim=1)  # (B, 2J, N)
        a = p[:, :, positions].transpose(1, 2)  # (B, 2J, N)
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-8)
        mass = (a * m).sum(-1)  # (B, 2J)
        losses.append((((1 - mass) ** 2) * w).sum() / w.sum())
    return torch.stack(losses).mean()


def box_mask(box: torch.Tensor, size: int) -> torch.Tensor:
    """(4,) normalised xyxy -> (size, size) bool of pixel centres inside the box."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    inx = (c >= box[0]) & (c <= box[2])
    iny = (c >= box[1]) & (c <= box[3])
    return iny[:, None] & inx[None, :]


def word_localisation(word_map: torch.Tensor, box: torch.Tensor) -> tuple[float, bool]:
    """(h, w) non-negative map of one word and its object's box -> (mass_ratio, peak_in_box)."""
    size = word_map.shape[-1]
    inside = box_mask(box, size)
    share = inside.float().mean().item()
    if share == 0:
        raise ValueError(f"box {box.tolist()} covers no pixel centre at {size}x{size}")
    m = word_map / word_map.sum().clamp_min(1e-12)
    mass = m[inside].sum().item()
    peak = int(torch.argmax(m))
    return mass / share, bool(inside.flatten()[peak])


def upsample_map(layer_map: torch.Tensor, size: int) -> torch.Tensor:
    """(N,) map of an r x r layer -> (size, size) bilinear."""
    r = int(math.isqrt(layer_map.numel()))
    grid = layer_map.view(1, 1, r, r)
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[0, 0]


class MapAccumulator:
    """Sums the conditional half of every attn2 call per layer over the sampling steps.

    With classifier-free guidance the Diffusers SD pipeline stacks (uncond, cond): ``cond_half``
    keeps the second half only.
    """

    def __init__(self, cond_half: bool = True) -> None:
        self.cond_half = cond_half
        self.maps: dict[str, torch.Tensor] = {}  # name -> (B, N, T)

    def __call__(self, name: str, probs: torch.Tensor) -> None:
        p = probs.detach().float()
        if self.cond_half:
            p = p[p.shape[0] // 2 :]
        self.maps[name] = self.maps[name] + p if name in self.maps else p.clone()

    def reset(self) -> None:
        self.maps = {}


def layer_label(name: str, n_tokens: int) -> str:
    r = int(round(n_tokens**0.5))
    return f"{name.replace('.transformer_blocks.0.attn2', '').replace('attentions.', 'attn')} ({r}x{r})"


class AttentionTally:
    """Per-layer and layer-averaged localisation of colour words, accumulated over images."""

    def __init__(self) -> None:
        self.per_layer: dict[str, list[tuple[float, bool]]] = {}
        self.averaged: list[tuple[float, bool]] = []
        self.images = 0

    def add(self, maps: dict[str, torch.Tensor], images: list[np.ndarray], prompts: list[str]) -> None:
        for b, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
            self.images += 1
            found = {d.colour: d for d in detect(image)}
            size = image.shape[0]
            for j, (colour, _) in enumerate(parse_caption(prompt)):
                if colour not in found:  # no object of that colour: nothing to localise against
                    continue
                box = torch.tensor(found[colour].box)
                ups = []
                for name, m in maps.items():
                    up = upsample_map(m[b, :, colour_position(j)], size)
                    up = up / up.sum().clamp_min(1e-12)
                    ups.append(up)
                    label = layer_label(name, m.shape[1])
                    self.per_layer.setdefault(label, []).append(word_localisation(up, box))
                self.averaged.append(word_localisation(torch.stack(ups).mean(0), box))

    @staticmethod
    def summarise(items: list[tuple[float, bool]]) -> dict[str, float | int | None]:
        if not items:
            return {"mass_ratio": None, "peak_in_box": None, "words": 0}
        return {"mass_ratio": round(float(np.mean([m for m, _ in items])), 3),
                "peak_in_box": round(float(np.mean([p for _, p in items])), 3), "words": len(items)}

    def report(self) -> dict[str, object]:
        layers = {k: self.summarise(v) for k, v in self.per_layer.items()}
        return {
            "images": self.images,
            "layers": layers,
            "layer_mean": {
                key: round(float(np.mean([v[key] for v in layers.values()])), 3) if layers else None
                for key in ("mass_ratio", "peak_in_box")
            },
            "maps_averaged_over_layers": self.summarise(self.averaged),
        }


@torch.no_grad()
def measure(
    pipe, prompts: list[str], seeds: list[int], steps: int = 20, cfg: float = 4.0
) -> dict[str, object]:
    """Generate one image per (prompt, seed) and tally colour-word localisation (see AttentionTally)."""
    tally = AttentionTally()
    for seed in seeds:
        acc = MapAccumulator(cond_half=cfg > 1.0)
        previous = install_probes(pipe.unet, acc)
        try:
            gens = [torch.Generator().manual_seed(seed * 1000 + i) for i in range(len(prompts))]
            out = pipe(list(prompts), num_inference_steps=steps, guidance_scale=cfg, generator=gens,
                       output_type="np").images
        finally:
            restore(pipe.unet, previous)
        images = [(np.clip(x, 0, 1) * 255).round().astype(np.uint8) for x in out]
        tally.add(acc.maps, images, list(prompts))
    return tally.report()
