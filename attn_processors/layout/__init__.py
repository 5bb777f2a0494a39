"""CSG layout control (Liu et al., "Training-free Composite Scene Generation for Layout-to-Image
Synthesis", ECCV 2024): objects named by phrases land in their boxes, with no training.

    with apply(pipe.unet, LayoutConfig.from_phrases(pipe.tokenizer, prompt, phrases, boxes), controller=ctrl):
        ...   # the loop in pipelines/layout_to_image.py drives guide/denoise modes

Modules: ``masks`` (boxes -> grid masks, phrases -> tokens), ``losses`` (intra/inter/self terms,
step sizes), ``redistribution`` (attention redistribution), ``technique`` (config, processors).
"""

from .losses import LossTerms, LossWeights, SamplingParams, csg_loss, step_sizes
from .masks import box_masks, check_masks, normalise_boxes, phrase_token_indices, validate_boxes
from .redistribution import redistribute
from .technique import LayoutConfig, LayoutProcessor, LayoutStore, guidance_loss, layout_factor

__all__ = [
    "LayoutConfig", "LayoutProcessor", "LayoutStore", "LossTerms", "LossWeights", "SamplingParams",
    "box_masks", "check_masks", "csg_loss", "guidance_loss", "layout_factor", "normalise_boxes",
    "phrase_token_indices", "redistribute", "step_sizes", "validate_boxes",
]
