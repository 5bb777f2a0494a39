"""IlluSign style injection (Bruner, Moryossef, Wolf, FG 2025) and its peers as one technique:
StyleID query preservation, MasaCtrl-style K/V swap and StyleAligned shared attention, one
`StyleConfig.mode` apart. Its pipeline (inversion, swap guidance, stage 2) is
pipelines/style_transfer.py; user docs: docs/style.md.

    from attn_processors.style import StyleConfig
    from pipelines.style_transfer import StyleTransferPipeline

    pipe = StyleTransferPipeline.from_pretrained("assets/shapes-sd")
    result = pipe(content_image, style_image, config=StyleConfig(mode="illusign"), seed=0)
    result.image.save("illustration.png")

Modules: ``maths`` (fusion, AdaIN, contrast, swap guidance), ``fusion`` (stage 2), ``rows`` (batch
row labels), ``config`` (modes and defaults), ``technique`` (processors and installer).
"""

from .config import MODE_DEFAULTS, EdgeStream, InitFrom, StyleConfig, StyleMode, default_sites, in_range
from .fusion import (
    Stage2Mode,
    blend_probs,
    combine_masks,
    dissimilarity,
    fused_attention,
    resize_mask,
    softmax_probs,
)
from .maths import ContrastMode, adain, attention, contrast, fuse_queries, guidance_schedule, swap_guidance
from .rows import ROLES, groups, row_labels
from .technique import FUSE, STORE, SWAP, StyleProcessor, StyleState

__all__ = [
    "FUSE", "MODE_DEFAULTS", "ROLES", "STORE", "SWAP", "ContrastMode", "EdgeStream", "InitFrom",
    "Stage2Mode", "StyleConfig", "StyleMode", "StyleProcessor", "StyleState", "adain", "attention",
    "blend_probs", "combine_masks", "contrast", "default_sites", "dissimilarity", "fuse_queries",
    "fused_attention", "softmax_probs",
    "groups", "guidance_schedule", "in_range", "resize_mask", "row_labels", "swap_guidance",
]
