"""Load the shipped shapes model (or any SD 1.x checkpoint) as a Diffusers pipeline.

>>> pipe = load_pipeline()  # doctest: +SKIP
>>> image = pipe("a red circle", num_inference_steps=20, guidance_scale=CFG_SCALE).images[0]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from .tokenizer import VocabCheckedTokenizer
from .vocab import WORDS

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "assets" / "shapes-sd"
# Classifier-free guidance scale the shipped model is evaluated with (documented in its card).
CFG_SCALE = 4.0
NUM_STEPS = 20


def is_shapes_tokenizer(tok: object) -> bool:
    """True for the closed-vocabulary tokenizer of the shapes model (every word one token)."""
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    return len(vocab) < 1000 and all(w + "</w>" in vocab for w in WORDS)


def load_pipeline(
    path: str | Path = DEFAULT_MODEL, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> StableDiffusionPipeline:
    """``StableDiffusionPipeline.from_pretrained(path)`` offline, in fp32 by default.

    For the shapes model the tokenizer is swapped for ``VocabCheckedTokenizer``, so a prompt
    with words outside the vocabulary raises a ValueError naming them instead of being split into
    characters. Any other SD 1.x folder or hub id loads unchanged.
    """
    path = Path(path) if not isinstance(path, Path) and Path(path).exists() else path
    if isinstance(path, Path) and not (path / "model_index.json").exists():
        raise ValueError(
            f"no Diffusers pipeline at {path} (model_index.json missing); export one with "
            "`python -m worlds.shapes.export --run runs/shapes --out assets/shapes-sd`"
        )
    pipe = StableDiffusionPipeline.from_pretrained(path, dtype=dtype, local_files_only=True)
    if is_shapes_tokenizer(pipe.tokenizer):
        pipe.tokenizer = VocabCheckedTokenizer.from_pretrained(Path(path) / "tokenizer")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
