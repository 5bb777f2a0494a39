"""AttentionStore: head-averaged attention maps per (layer, step), and token heatmaps over the image.

The prompt-to-prompt visualisation: which pixels each prompt word attends to. Only the layers asked
for are recorded (default: cross-attention; for joint-attention families, the image-query -> text-key
block), averaged over heads, kept as fp16 on the CPU per (layer, step) or as a running fp32 mean
per layer, so SD1.5 at 512 px does not keep 1 GiB of self-attention per layer and step.

    >>> from attn_processors.core.store import attention_maps
    >>> result = attention_maps(pipe, "a red cat on a blue car", num_inference_steps=20)   # doctest: +SKIP
    >>> result.grid().save("cat_maps.png")           # image + one heatmap per word   # doctest: +SKIP
    >>> result.heatmaps[result.tokens.index("cat")]  # a PIL image                     # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .controller import Controller
from .install import apply
from .processor import CallInfo, ControlledProcessor, Need
from .registry import register_technique
from .sites import Select, Site

Tensor = torch.Tensor


Aggregate = Literal[
    "mean",  # a running fp32 mean per layer over the recorded steps (memory of one map per layer)
    "steps",  # one fp16 map per (layer, step), for maps that change over denoising
]
AGGREGATES: tuple[str, ...] = get_args(Aggregate)
BRANCHES: tuple[str | None, ...] = ("cond", "uncond", None)  # the controller's CFG row labels


@dataclass(frozen=True)
class StoreConfig:
    """Record head-averaged attention maps on `layers` at `steps` (empty = every step)."""

    layers: Select = Select(kinds=("cross", "joint"))
    steps: tuple[int, ...] = ()
    aggregate: Aggregate = "mean"
    branch: str | None = "cond"  # record only the rows of this CFG branch (None: all rows)
    name: str = "attention"  # key of the AttentionStore in controller.stores

    def __post_init__(self) -> None:
        if not isinstance(self.layers, Select):
            raise ValueError(f"layers must be a Select (e.g. Select(kinds=('cross',))), got {self.layers!r}")
        steps = tuple(self.steps) if isinstance(self.steps, list | tuple) else None
        if steps is None or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in steps):
            raise ValueError(
                f"steps must be a tuple of step indices >= 0 (empty: every step), got {self.steps!r}"
            )
        object.__setattr__(self, "steps", steps)
        if self.aggregate not in AGGREGATES:
            raise ValueError(
                f"aggregate={self.aggregate!r} is not one of {AGGREGATES}: 'mean' keeps a running mean per "
                "layer, 'steps' one map per (layer, step)"
            )
        if self.branch not in BRANCHES:
            raise ValueError(
                f"branch={self.branch!r} is not one of {BRANCHES}: 'cond' or 'uncond' records that CFG "
                "half only, None records every row"
            )
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(
                f"name must be a non-empty string (the key in controller.stores), got {self.name!r}"
            )


@dataclass
class Record:
    """One layer's map [rows, Nq, Nk] with the token grid (frames, h, w) of its queries."""

    probs: Tensor
    grid: tuple[int, int, int] | None
    kind: str  # "self" | "cross" (joint layers store their image -> text block as "cross")


@dataclass
class AttentionStore:
    """Recorded maps: `by_step[(layer, step)]` (aggregate="steps") or `mean[layer]` (aggregate="mean")."""

    aggregate: Aggregate = "mean"
    by_step: dict[tuple[str, int], Record] = field(default_factory=dict)
    mean: dict[str, Record] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, layer: str, step: int, rec: Record) -> None:
        if self.aggregate == "steps":
            self.by_step[(layer, step)] = Record(rec.probs.to("cpu", torch.float16), rec.grid, rec.kind)
            return
        n = self.counts.get(layer, 0)
        new = rec.probs.to("cpu", torch.float32)
        if n and self.mean[layer].probs.shape != new.shape:
            raise ValueError(
                f"{layer}: map shape changed from {tuple(self.mean[layer].probs.shape)} to "
                f"{tuple(new.shape)} within one store; use a new store per image size"
            )
        old = self.mean[layer].probs if n else torch.zeros_like(new)
        self.mean[layer] = Record(old + (new - old) / (n + 1), rec.grid, rec.kind)  # running mean
        self.counts[layer] = n + 1

    def records(self, kind: str | None = None) -> dict[str, Record]:
        """Per-layer maps (averaged over the stored steps when aggregate="steps"), optionally one kind."""
        if self.aggregate == "mean":
            out = dict(self.mean)
        else:
            groups: dict[str, list[Record]] = {}
            for (layer, _), rec in sorted(self.by_step.items()):
                groups.setdefault(layer, []).append(rec)
            out = {
                k: Record(torch.stack([r.probs.float() for r in v]).mean(0), v[0].grid, v[0].kind)
                for k, v in groups.items()
            }
        return {k: r for k, r in out.items() if kind is None or r.kind == kind}

    def token_maps(self, size: tuple[int, int] | None = None) -> Tensor:
        """Cross-attention maps per text token, averaged over layers, rows and frames: [Nk, h, w].

        Each layer's map is resized (bilinear) to `size` (default: the largest recorded grid)."""
        recs = [r for r in self.records("cross").values() if r.grid is not None]
        if not recs:
            raise ValueError(
                "no cross-attention maps with a known token grid were recorded; record "
                "cross/joint layers (StoreConfig(layers=Select(kinds=('cross', 'joint'))))"
            )
        size = size or max((r.grid[1], r.grid[2]) for r in recs)
        maps = []
        for r in recs:
            f, h, w = r.grid
            m = r.probs.float().mean(0)  # [Nq, Nk]
            m = m.reshape(f, h, w, -1).mean(0).permute(2, 0, 1)  # [Nk, h, w]
            maps.append(F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0])
        return torch.stack(maps).mean(0)


class StoreProcessor(ControlledProcessor):
    """Records softmax probabilities (explicit path) and returns them unchanged."""

    def __init__(self, site: Site, controller: Controller, config: StoreConfig) -> None:
        super().__init__(site, controller)
        self.config = config

    @property
    def store(self) -> AttentionStore:
        return self.controller.stores.setdefault(self.config.name, AttentionStore(self.config.aggregate))

    def needs(self) -> tuple[Need, ...]:
        """Row labels to keep one CFG branch; the step to keep chosen steps."""
        branch: tuple[Need, ...] = ("branch",) if self.config.branch is not None else ()
        return branch + (("step",) if self.config.steps else ())

    def wants(self, call: CallInfo) -> bool:
        return not self.config.steps or call.step in self.config.steps

    def edit_probs(self, probs: Tensor, call: CallInfo) -> Tensor:
        avg = probs.mean(1)  # [B, Nq, Nk], averaged over heads
        if self.config.branch is not None and call.labels is not None:
            avg = avg[call.rows(self.config.branch)]
        if avg.shape[0] == 0:
            return probs
        kind, grid = self.site.kind, call.grid
        if call.hw is not None:
            grid = (1, *call.hw)
        if kind == "joint":  # keep the image-query -> text-key block only
            t, n = call.text_len, call.q_len
            if t == 0:
                return probs  # no text tokens known in this call: nothing to show per word
            avg = avg[:, t:, :t] if call.text_pos == "first" else avg[:, : n - t, n - t :]
            kind = "cross"
        if grid is not None and grid[0] * grid[1] * grid[2] != avg.shape[1]:
            grid = None  # queries are not the image grid (e.g. a refiner layer): keep, but no heatmap
        self.store.add(
            self.site.name, -1 if call.step is None else call.step, Record(avg.detach(), grid, kind)
        )
        return probs


@register_technique(StoreConfig)
def _install_store(config: StoreConfig, sites: Sequence[Site], ctrl: Controller) -> Mapping[str, Any]:
    return {s.name: StoreProcessor(s, ctrl, config) for s in sites}


# -- rendering ----------------------------------------------------------------------------------
_COLORS = np.array(
    [[0, 0, 131], [0, 60, 255], [0, 255, 255], [255, 255, 0], [255, 60, 0], [128, 0, 0]], float
)


def colormap(x: np.ndarray) -> np.ndarray:
    """Jet-like colours for values in [0, 1]: [..., 3] uint8."""
    pos = np.clip(x, 0, 1) * (len(_COLORS) - 1)
    i = np.minimum(pos.astype(int), len(_COLORS) - 2)
    frac = (pos - i)[..., None]
    return ((1 - frac) * _COLORS[i] + frac * _COLORS[i + 1]).astype(np.uint8)


def render_token_heatmaps(
    image: Image.Image,
    maps: Tensor,
    tokens: Sequence[str],
    *,
    alpha: float = 0.5,
    label: bool = True,
    min_size: int = 128,
) -> list[Image.Image]:
    """One heatmap per token, each map [h, w] normalised to [0, 1], upsampled and blended over `image`
    (images smaller than `min_size` are enlarged first so tiles and captions stay readable)."""
    if maps.ndim != 3 or maps.shape[0] != len(tokens):
        raise ValueError(
            f"maps must be [len(tokens), h, w]; got {tuple(maps.shape)} for {len(tokens)} tokens"
        )
    image = image.convert("RGB")
    if min(image.size) < min_size:
        k = -(-min_size // min(image.size))
        image = image.resize((image.width * k, image.height * k), Image.NEAREST)
    out = []
    for m, tok in zip(maps.float(), tokens, strict=True):
        m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
        m = F.interpolate(m[None, None], size=image.size[::-1], mode="bilinear", align_corners=False)[0, 0]
        heat = Image.fromarray(colormap(m.numpy()))
        tile = Image.blend(image, heat, alpha)
        if label:
            tile = _caption(tile, tok)
        out.append(tile)
    return out


def _caption(tile: Image.Image, text: str) -> Image.Image:
    canvas = Image.new("RGB", (tile.width, tile.height + 14), "white")
    canvas.paste(tile, (0, 0))
    ImageDraw.Draw(canvas).text((2, tile.height + 1), text, fill="black")
    return canvas


@dataclass
class TokenMaps:
    """What `attention_maps` returns: the image, the prompt's words and one heatmap per word."""

    image: Image.Image
    tokens: list[str]
    maps: Tensor  # [len(tokens), h, w] raw averaged attention
    heatmaps: list[Image.Image]

    def grid(self) -> Image.Image:
        """The image followed by every word's heatmap, in one row."""
        h = self.heatmaps[0].height - 14 if self.heatmaps else self.image.height
        image = self.image.convert("RGB").resize(
            (self.image.width * h // self.image.height, h), Image.NEAREST
        )
        tiles = [_caption(image, "image"), *self.heatmaps]
        row = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), "white")
        x = 0
        for t in tiles:
            row.paste(t, (x, 0))
            x += t.width
        return row

    def save(self, directory: str | Path, stem: str = "attn") -> list[Path]:
        """Write `<stem>_image.png`, `<stem>_grid.png` and one `<stem>_<i>_<word>.png` per word."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        paths = [d / f"{stem}_image.png", d / f"{stem}_grid.png"]
        self.image.save(paths[0])
        self.grid().save(paths[1])
        for i, (tok, tile) in enumerate(zip(self.tokens, self.heatmaps, strict=True)):
            safe = "".join(c if c.isalnum() else "_" for c in tok)
            paths.append(d / f"{stem}_{i:02d}_{safe}.png")
            tile.save(paths[-1])
        return paths


def prompt_tokens(pipe: Any, prompt: str) -> list[tuple[int, str]]:
    """(key position, word) of every prompt token in the denoiser's text sequence (no BOS/EOS/pad)."""
    flux = type(pipe).__name__.startswith("Flux")
    tok = pipe.tokenizer_2 if flux else pipe.tokenizer
    ids = tok(prompt, truncation=True)["input_ids"]
    special = set(tok.all_special_ids)
    words = tok.convert_ids_to_tokens(ids)
    return [
        (i, w.replace("</w>", "").replace("▁", ""))
        for i, (t, w) in enumerate(zip(ids, words, strict=True))
        if t not in special and w.replace("</w>", "").replace("▁", "")
    ]


def attention_maps(
    pipe: Any,
    prompt: str,
    *,
    num_inference_steps: int = 20,
    seed: int = 0,
    layers: Select | None = None,
    steps: Sequence[int] = (),
    **call_kwargs: Any,
) -> TokenMaps:
    """Generate `prompt` with `pipe` and return per-word cross-attention heatmaps over the image.

    `layers` narrows the recorded layers (default: every cross/joint attention layer of the
    denoiser); `steps` the recorded steps (default: all). Other keyword arguments go to the pipeline
    call (height, width, guidance_scale, ...). Video pipelines show the first frame and maps averaged
    over frames.
    """
    cfg = StoreConfig(layers=layers or Select(kinds=("cross", "joint")), steps=tuple(steps))
    gen = torch.Generator().manual_seed(seed)
    with apply(pipe, cfg) as ctrl:
        result = pipe(
            prompt, num_inference_steps=num_inference_steps, generator=gen, output_type="pil", **call_kwargs
        )
    image = result.images[0] if hasattr(result, "images") else result.frames[0][0]
    if isinstance(image, np.ndarray):
        image = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
    store: AttentionStore = ctrl.stores[cfg.name]
    maps = store.token_maps()
    toks = [(i, w) for i, w in prompt_tokens(pipe, prompt) if i < maps.shape[0]]
    chosen = maps[[i for i, _ in toks]]
    words = [w for _, w in toks]
    return TokenMaps(image, words, chosen, render_token_heatmaps(image, chosen, words))
