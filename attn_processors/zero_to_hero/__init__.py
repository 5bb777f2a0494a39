"""Zero-to-Hero (Sobol, Xu, Litany, "Zero-to-Hero: Enhancing Zero-Shot Novel View Synthesis via
Attention Map Filtering", NeurIPS 2024): test-time, training-free better Zero-1-to-3 novel views.

    from attn_processors.zero_to_hero import ZeroToHeroConfig
    from pipelines.zero123 import Zero123Pipeline

    pipe = Zero123Pipeline.from_pretrained("assets/shapes3d-zero123")
    out = pipe(image, poses=[(10.0, 90.0, 0.0)], z2h=ZeroToHeroConfig(), generator=torch.manual_seed(0))

Modules: ``schedule`` (Hourglass, resampling counts, explicit-timestep DDIM), ``filtering`` (AMF
maths), ``mutual`` (MSA row pairing and K/V swap), ``config`` (every range and weight),
``technique`` (processors and installer).
"""

from .config import FilterRows, Schedule, ZeroToHeroConfig
from .filtering import FilterStep, filter_map
from .mutual import branch_labels, source_pairs, swap_kv
from .schedule import ddim_step, hourglass_timesteps, renoise, resample_counts, uniform_timesteps
from .technique import STORE, ZeroToHeroProcessor, ZeroToHeroState, amf_sites, msa_sites

__all__ = [
    "STORE", "FilterRows", "FilterStep", "Schedule", "ZeroToHeroConfig", "ZeroToHeroProcessor",
    "ZeroToHeroState", "amf_sites", "branch_labels", "ddim_step", "filter_map", "hourglass_timesteps",
    "msa_sites", "renoise", "resample_counts", "source_pairs", "swap_kv", "uniform_timesteps",
]
