"""CSG layout control (Liu et al., ECCV 2024): objects named by phrases land in their boxes."""

from .losses import LossTerms, LossWeights, SamplingParams, csg_loss, step_sizes
from .masks import box_masks, check_masks, normalise_boxes, phrase_token_indices, validate_boxes
from .redistribution import redistribute

__all__ = [
    "LossTerms", "LossWeights", "SamplingParams", "box_masks", "check_masks", "csg_loss",
    "normalise_boxes", "phrase_token_indices", "redistribute", "step_sizes", "validate_boxes",
]
