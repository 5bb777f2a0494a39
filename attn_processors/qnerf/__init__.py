"""QNeRF (Patashnik et al., "Consolidating Attention Features for Multi-view Image Editing",
SIGGRAPH Asia 2024): a query field fitted to the self-attention queries of all views, rendered back
and softly injected, so edits agree across views.

    from attn_processors.qnerf import QNeRFConfig
    from pipelines.multiview_edit import MultiViewEditPipeline

    pipe = MultiViewEditPipeline.from_pretrained("assets/shapes3d-sd")
    out = pipe(images, cameras, "a red cube", "a blue cube", controls=depths, qnerf=QNeRFConfig())

Modules: ``config`` (every switch), ``capture`` (the query store), ``mutual`` (batch rows and
MasaCtrl K/V), ``guidance`` (the query distance and the latent step), ``schedule`` (the interval
events), ``technique`` (processors and installer); ``cameras`` (posed views, transforms.json),
``encoders`` and ``field`` (the query field and its fit).
"""

from .cameras import Cameras, from_c2w, read_transforms
from .capture import GuidanceForwardDone, QueryStore
from .config import QNeRFConfig
from .field import Encoder, FitReport, QueryField, fit_field
from .guidance import guidance_step, query_distance
from .mutual import pair_rows, swap_kv, view_labels
from .schedule import Event, interval_events, run_events
from .technique import INJECT_MODE, STORE, QNeRFProcessor, decoder_sites

__all__ = [
    "INJECT_MODE", "STORE", "Cameras", "Encoder", "Event", "FitReport", "GuidanceForwardDone", "QNeRFConfig",
    "QNeRFProcessor", "QueryField", "QueryStore", "decoder_sites", "fit_field", "from_c2w", "guidance_step",
    "interval_events", "pair_rows", "query_distance", "read_transforms", "run_events", "swap_kv",
    "view_labels",
]
