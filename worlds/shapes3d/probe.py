"""Does a novel-view model read its conditions? Paired denoising losses with each one removed.

A Zero-1-to-3 model sees the target pose and the source view twice: as the one cross-attention token
(image embedding + pose through ``cc_projection``) and as the input latent concatenated to the noisy
one. A model can fit its training loss while ignoring one of them, and the sampled views then show
it (objects in the wrong place, the wrong horizon). Here the same noisy targets are denoised with the
full conditions and with one taken away or falsified; a condition the model uses raises the loss when
it goes. The pose is probed through its azimuth (sin mirrored: the object should move the other way)
and by giving each sample another sample's pose.
"""

from __future__ import annotations

import torch

from .data import ORBIT_SPEC, TRAIN_SPEC, facing_views, relative_poses, render_scenes, to_model_range
from .models import condition_tokens
from .zero123 import Zero123Parts

PROBE_SEED = 30_000  # training-distribution scenes that neither the cache nor the VAE saw
TIMESTEPS = (100, 300, 500, 700, 900)
CONDITIONS = ("full", "zero_input_latent", "target_input_latent", "zero_token", "shuffled_pose",
              "mirrored_azimuth")

# Each ratio again per timestep. Why: the epsilon error is sqrt(SNR) times the x0 error, so the mean
# over timesteps hides a condition used only at high noise, where the layout is decided (t = 900: SNR
# 0.014); a ratio at one timestep is the same in epsilon and in x0.
USE_RATIOS = {"input_latent_use": "zero_input_latent", "token_use": "zero_token",
              "pose_use": "shuffled_pose", "azimuth_use": "mirrored_azimuth"}


@torch.no_grad()
def conditioning_losses(parts: Zero123Parts, scenes: int = 32, pairs_per_scene: int = 4,
                        seed: int = PROBE_SEED, timesteps: tuple[int, ...] = TIMESTEPS,
                        facing: bool = False) -> dict:
    """Mean epsilon MSE per condition over ``scenes`` x ``pairs_per_scene`` pairs and ``timesteps``,
    the same noise for every condition, and the usage ratios derived from them. ``facing``: one-object
    orbit scenes, each pair from the view facing the object (``data.facing_views``), where the sign
    of sin d azimuth alone says which way the object moves: the easiest azimuth to read."""
    if scenes < 1 or pairs_per_scene < 1 or not timesteps:
        raise ValueError(f"scenes={scenes}, pairs_per_scene={pairs_per_scene}, timesteps={timesteps}: "
                         "need at least one of each")
    gen = torch.Generator().manual_seed(seed)
    if facing:
        chosen, facing_src = (x[:scenes] for x in facing_views(seed, 4 * scenes))
        singles = [render_scenes(seed, i, 1, ORBIT_SPEC) for i in chosen.tolist()]
        batch = {k: torch.cat([b[k] for b in singles]) for k in ("images", "views")}
    else:
        batch = render_scenes(seed, 0, scenes, TRAIN_SPEC)
    images = to_model_range(batch["images"])  # (S, V, 3, H, W)
    n_scenes, n_views = images.shape[:2]
    idx = torch.arange(n_scenes).repeat_interleave(pairs_per_scene)
    src = facing_src[idx] if facing else torch.randint(0, n_views, (len(idx),), generator=gen)
    tgt = (src + torch.randint(1, n_views, (len(idx),), generator=gen)) % n_views
    poses = relative_poses(batch["views"][idx], src, tgt)  # (B, 4)
    sf = parts.vae.config.scaling_factor
    in_scale = sf if parts.input_latent == "scaled" else 1.0
    src_img, tgt_img = images[idx, src], images[idx, tgt]
    target = parts.vae.encode(tgt_img).latent_dist.mode() * sf
    source = parts.vae.encode(src_img).latent_dist.mode() * in_scale
    mirrored = poses.clone()
    mirrored[:, 1] = -mirrored[:, 1]
    shuffled = poses.roll(1, 0)  # each pair gets the previous pair's pose (its own when there is one pair)
    def tokens(pose: torch.Tensor) -> torch.Tensor:
        return condition_tokens(parts.image_encoder, parts.cc_projection, src_img, pose)

    token = tokens(poses)
    inputs = {
        "full": (source, token),
        "zero_input_latent": (torch.zeros_like(source), token),
        "target_input_latent": (target / sf * in_scale, token),
        "zero_token": (source, torch.zeros_like(token)),
        "shuffled_pose": (source, tokens(shuffled)),
        "mirrored_azimuth": (source, tokens(mirrored)),
    }
    per_t: dict[str, dict[int, float]] = {name: {} for name in CONDITIONS}
    for t_value in timesteps:
        t = torch.full((len(idx),), t_value, dtype=torch.long)
        noise = torch.randn(target.shape, generator=gen)
        noisy = parts.scheduler.add_noise(target, noise, t)
        for name, (latent, tok) in inputs.items():
            pred = parts.unet(torch.cat([noisy, latent], 1), t, tok).sample
            per_t[name][t_value] = torch.mean((pred - noise) ** 2).item()
    sums = {name: sum(v.values()) / len(timesteps) for name, v in per_t.items()}
    full = sums["full"]
    weight = parts.cc_projection.projection.weight  # (D, embed + 4): the pose is the last 4 columns
    pose_norms = weight[:, -4:].norm(dim=0).tolist()
    return {
        "losses": {k: round(v, 6) for k, v in sums.items()},
        "input_latent_use": round(sums["zero_input_latent"] / full - 1, 4),
        "target_latent_gain": round(1 - sums["target_input_latent"] / full, 4),
        "token_use": round(sums["zero_token"] / full - 1, 4),
        "pose_use": round(sums["shuffled_pose"] / full - 1, 4),
        "azimuth_use": round(sums["mirrored_azimuth"] / full - 1, 4),
        "cc_pose_column_norms": dict(zip(("d_polar", "sin_d_azimuth", "cos_d_azimuth", "d_radius"),
                                         (round(x, 4) for x in pose_norms), strict=True)),
        "cc_embedding_column_norm_mean": round(weight[:, :-4].norm(dim=0).mean().item(), 4),
        "use_by_timestep": {use: {str(t): round(per_t[name][t] / per_t["full"][t] - 1, 4) for t in timesteps}
                            for use, name in USE_RATIOS.items()},
        "pairs": len(idx), "pairs_from": "facing" if facing else "training", "timesteps": list(timesteps),
        "seed": seed,
    }
