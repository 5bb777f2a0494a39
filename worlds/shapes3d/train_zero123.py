"""Train the 3D world's novel-view model (Zero-1-to-3 structure): VAE fine-tune, view cache, then UNet.

    python -m worlds.shapes3d.train_zero123 --out runs/zero123 --device cpu --steps 20000
    python -m worlds.shapes3d.train_zero123 --out runs/zero123 --device cuda --batch 128 --time-limit 600
    python -m worlds.shapes3d.train_zero123 --out runs/ft --init assets/shapes3d-zero123 \
        --azimuth-curriculum 4000 --time-limit 3000         # fine-tune the shipped model

Phases, each resumable from ``--out``:

1. ``vae``: fine-tune ``--init-vae`` (default: the shipped shapes-sd VAE; its 2D-world latents
   lose shading and hue on renders) on renders with L1 + MSE + 1e-7 KL; ``vae_ckpt.pt`` while
   running, ``vae/`` when done, with ``scaling_factor`` = 1 / std of the render latents;
2. ``cache``: ``--scenes`` scenes x 6 views rendered (``data.TRAIN_SPEC``) and encoded:
   ``views.pt`` (images uint8, views, posterior mean and std in fp16);
3. ``unet``: the UNet (8 channels), CLIP image encoder and ``cc_projection`` trained jointly on
   pairs of distinct views of one scene: epsilon loss with min-SNR-5 weights, 10 % joint condition
   dropout (token and input latent zeroed, Zero-1-to-3's classifier-free guidance), AdamW with
   warm-up, clip 1, EMA 0.999. ``unet_ckpt.pt`` (models, EMA, optimiser, step, RNG) every
   ``--save-every`` seconds and at the end; ``--steps`` is a target, so a larger number continues.

The input latent is the source view's posterior mean, unscaled as in Zero-1-to-3
(``--input-latent raw``) or times ``scaling_factor`` (``scaled``); the choice is saved with the run.
``--init FOLDER`` starts the UNet phase from an exported model (its UNet, image encoder and
``cc_projection``, EMA included, its VAE and its input-latent choice) instead of random weights.
``--azimuth-curriculum N`` draws each pair's target within a largest azimuth change that grows from
30 to 180 degrees over the first N steps. Why: the shipped model learned to ignore its input latent
(zeroing it, or even giving it the target's own latent, changes its loss by under 2 %;
``benchmarks/zero123_probe.py``), since a source latent far in azimuth says little about the target at
the same pixel; close pairs make it worth reading before the large moves are asked for.
``--copy-pairs FRAC`` also makes that share of the pairs (falling to 0 over the curriculum) copies:
target = source. Why: a 60-minute fine-tune with the azimuth curriculum alone did not change what
the model reads (the elevation of each view still differs by up to 25 degrees), while a few hundred
steps on copies alone taught it to read its input latent. Measured: it reads it while copies last and
forgets it after (``worlds/shapes3d/README.md``).
``--orbit-pairs FRAC`` draws that share of each batch from a second cache (``views_orbit.pt``,
``--orbit-scenes`` other scenes of ``data.ORBIT_SPEC``: twelve views at one elevation per scene).
Why: with the curriculum and copies the model read its input latent only while copies lasted, and
never the azimuth; a pair on one orbit differs by the azimuth alone, so a close pair is a small,
pose-determined move of each object, the step between a copy and a distinct view.
``--loss-weights x0_floor`` weighs the high-noise steps more (``layout_weights``) and ``--t-min T``
trains on timesteps T..999 only. Why: the probe found the azimuth unread after every curriculum, and
the min-SNR epsilon loss gives the steps that decide where objects go (SNR << 1) almost no weight.
``--front-pairs FRAC`` draws that share of each batch from the orbit cache's one-object scenes, each
seen first from the view whose camera faces its object. Why: averaged over where objects stand, a
change of azimuth moves them in no one direction, so the pose's sine has no first-order effect for
the model to pick up (the elevation change, which shifts the whole view, was learned; the azimuth
never was); from the facing view the object moves sideways by its distance times -sin d azimuth.
``--time-limit`` stops the UNet phase and decays the learning rate over its last ``--decay-tail``
(``worlds.finetune.Deadline``). Losses go to ``train.log`` (one JSON object per line).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPVisionModelWithProjection

from worlds.finetune import Deadline, atomic_save, log, training_device

from .data import ORBIT_SPEC, TRAIN_SPEC, facing_views, relative_poses, render_scenes, to_model_range
from .models import (
    CCProjection,
    build_cc_projection,
    build_image_encoder,
    build_zero123_unet,
    condition_tokens,
    train_scheduler,
)
from .scene import SceneSpec

DEFAULT_INIT_VAE = Path(__file__).resolve().parents[2] / "assets" / "shapes-sd" / "vae"
VAE_SEED_OFFSET = 10_000  # the VAE sees other scenes than the cache
HOLDOUT_SEED_OFFSET = 20_000  # held-out renders for the VAE's PSNR and latent scale
ORBIT_SEED_OFFSET = 40_000  # the orbit cache (--orbit-pairs): other scenes than the cache and the probe's
CURRICULUM_START_DEG = 30.0  # largest azimuth change of the first curriculum step
INIT_PARTS = ("unet", "image_encoder", "cc_projection", "vae")


def _flat_images(seed: int, start: int, count: int) -> torch.Tensor:
    """``count`` scenes' views as one image batch (count * 6, 3, 64, 64) in [-1, 1]."""
    return to_model_range(render_scenes(seed, start, count)["images"].flatten(0, 1))


# ----------------------------------------------------------------------------------------- VAE
@torch.no_grad()
def vae_psnr(vae: AutoencoderKL, x: torch.Tensor) -> float:
    rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    return 10 * math.log10(4.0 / F.mse_loss(rec, x).item())  # range 2 -> peak^2 = 4


def train_vae(args: argparse.Namespace, out: Path, device: torch.device) -> None:
    if (out / "vae" / "config.json").exists():
        return
    init = Path(args.init_vae)
    if not (init / "config.json").exists():
        raise ValueError(f"--init-vae {init} has no config.json; give a Diffusers AutoencoderKL folder "
                         "(e.g. assets/shapes-sd/vae)")
    vae = AutoencoderKL.from_pretrained(init).to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=1e-2)
    ckpt, step = out / "vae_ckpt.pt", 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location=device)
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    held = _flat_images(args.seed + HOLDOUT_SEED_OFFSET, 0, max(1, args.eval_scenes)).to(device)
    log(out, {"phase": "vae", "step": step, "psnr_db": round(vae_psnr(vae.eval(), held), 2)})
    vae.train()
    per = max(1, args.vae_batch // TRAIN_SPEC.views)  # scenes per batch
    last_save, t0 = time.time(), time.time()
    while step < args.vae_steps:
        x = _flat_images(args.seed + VAE_SEED_OFFSET, step * per, per).to(device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = (rec - x).abs().mean() + F.mse_loss(rec, x) + 1e-7 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % args.log_every == 0:
            log(out, {"phase": "vae", "step": step, "loss": round(loss.item(), 5),
                      "s_per_step": round((time.time() - t0) / args.log_every, 3)})
            t0 = time.time()
        if time.time() - last_save > args.save_every:
            atomic_save({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
            last_save = time.time()
    vae.eval()
    with torch.no_grad():  # SD convention: latents * scaling_factor have unit variance
        std = vae.encode(held).latent_dist.mode().std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    vae.cpu().save_pretrained(out / "vae")
    log(out, {"phase": "vae", "done": True, "steps": step, "psnr_db": round(vae_psnr(vae, held.cpu()), 2),
              "scaling_factor": round(1.0 / std, 5)})


# --------------------------------------------------------------------------------------- cache
@torch.no_grad()
def cache_views(args: argparse.Namespace, out: Path, device: torch.device, spec: SceneSpec = TRAIN_SPEC,
                seed: int | None = None, scenes: int | None = None, name: str = "views.pt"
                ) -> dict[str, torch.Tensor]:
    """Rendered views and their VAE posteriors (kept and saved on the CPU), built once per ``name``."""
    path = out / name
    if path.exists():
        return torch.load(path, weights_only=False)
    seed = args.seed if seed is None else seed
    scenes = args.scenes if scenes is None else scenes
    vae = AutoencoderKL.from_pretrained(out / "vae").eval().to(device)
    images, views, means, stds = [], [], [], []
    chunk = 64
    for start in range(0, scenes, chunk):
        b = render_scenes(seed, start, min(chunk, scenes - start), spec)
        n, v = b["images"].shape[:2]
        dist = vae.encode(to_model_range(b["images"].flatten(0, 1)).to(device)).latent_dist
        images.append(b["images"])
        views.append(b["views"])
        means.append(dist.mean.half().cpu().unflatten(0, (n, v)))
        stds.append(dist.std.half().cpu().unflatten(0, (n, v)))
        log(out, {"phase": "cache", "file": name, "scenes": start + n})
    data = {"images": torch.cat(images), "views": torch.cat(views), "mean": torch.cat(means),
            "std": torch.cat(stds), "scaling_factor": torch.tensor(vae.config.scaling_factor)}
    atomic_save(data, path)
    return data


def orbit_cache(args: argparse.Namespace, out: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The ``--orbit-pairs`` cache: ``--orbit-scenes`` scenes of ``ORBIT_SPEC`` (one elevation each)."""
    return cache_views(args, out, device, ORBIT_SPEC, args.seed + ORBIT_SEED_OFFSET, args.orbit_scenes,
                       "views_orbit.pt")


# ---------------------------------------------------------------------------------------- UNet
def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma weights for epsilon prediction (Hang et al. 2023): min(SNR, gamma) / SNR."""
    ac = alphas_cumprod.to(t.device)[t]
    snr = ac / (1 - ac)
    return snr.clamp(max=gamma) / snr


def layout_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Epsilon-loss weights max(min(SNR, gamma), 1) / SNR: min-SNR, but the implied x0 error weighs
    at least 1. Why: the epsilon loss weighs the x0 error by SNR, so at high noise (SNR << 1), where
    the sample's layout is decided and only the conditions can say where the objects go, a wrong
    layout costs almost nothing; here it costs as much as at SNR 1."""
    ac = alphas_cumprod.to(t.device)[t]
    snr = ac / (1 - ac)
    return snr.clamp(max=gamma).clamp(min=1.0) / snr


LOSS_WEIGHTS = {"min_snr": min_snr_weights, "x0_floor": layout_weights}


def sample_pairs(n_scenes: int, n_views: int, batch: int, gen: torch.Generator, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scene indices and two distinct view indices per sample, each (B,)."""
    idx = torch.randint(0, n_scenes, (batch,), generator=gen, device=device)
    src = torch.randint(0, n_views, (batch,), generator=gen, device=device)
    tgt = (src + torch.randint(1, n_views, (batch,), generator=gen, device=device)) % n_views
    return idx, src, tgt


def azimuth_cap(step: int, curriculum_steps: int) -> float:
    """Largest azimuth change (degrees) of a pair at ``step``: 30 -> 180 over the curriculum, then 180."""
    if curriculum_steps <= 0 or step >= curriculum_steps:
        return 180.0
    return CURRICULUM_START_DEG + (180.0 - CURRICULUM_START_DEG) * step / curriculum_steps


def copy_share(step: int, start_share: float, curriculum_steps: int) -> float:
    """Share of pairs whose target is the source itself: ``start_share`` at step 0 -> 0 at the
    curriculum's end."""
    if curriculum_steps <= 0 or step >= curriculum_steps:
        return 0.0
    return start_share * (1 - step / curriculum_steps)


def near_targets(azimuths: torch.Tensor, src: torch.Tensor, cap_deg: float, gen: torch.Generator
                 ) -> torch.Tensor:
    """A target view per sample whose azimuth is within ``cap_deg`` of its source's (the nearest
    other view where none is): azimuths (B, V) in degrees, src (B,) -> tgt (B,)."""
    b = torch.arange(azimuths.shape[0], device=azimuths.device)
    diff = (azimuths - azimuths[b, src][:, None] + 180.0) % 360.0 - 180.0  # (B, V) in [-180, 180)
    dist = diff.abs()
    dist[b, src] = float("inf")  # never the source itself
    allowed = dist <= cap_deg
    nearest = torch.nn.functional.one_hot(dist.argmin(1), azimuths.shape[1]).bool()
    allowed = torch.where(allowed.any(1, keepdim=True), allowed, nearest)
    return torch.multinomial(allowed.float(), 1, generator=gen)[:, 0]


def draw_pairs(data: dict[str, torch.Tensor], count: int, cap_deg: float, copy: float,
               gen: torch.Generator, device: torch.device,
               facing: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, ...]:
    """``count`` training pairs from one view cache: the target's posterior mean and std, the
    source's mean (the input latent, unscaled), the source image (B, 3, 64, 64) in [-1, 1] and the
    relative pose (B, 4). Targets lie within ``cap_deg`` of azimuth; a ``copy`` share are the source.
    With ``facing`` (``facing_views``), the pairs come from those scenes, each from its facing view."""
    n_scenes, n_views = data["images"].shape[:2]
    idx, src, tgt = sample_pairs(n_scenes, n_views, count, gen, device)
    if facing is not None:
        pick = torch.randint(0, len(facing[0]), (count,), generator=gen, device=device)
        idx, src = facing[0][pick], facing[1][pick]
        tgt = (src + torch.randint(1, n_views, (count,), generator=gen, device=device)) % n_views
    if cap_deg < 180.0:
        tgt = near_targets(data["views"][idx, :, 1].to(device), src, cap_deg, gen)
    if copy > 0:
        tgt = torch.where(torch.rand(count, generator=gen, device=device) < copy, src, tgt)
    return (data["mean"][idx, tgt].float(), data["std"][idx, tgt].float(), data["mean"][idx, src].float(),
            to_model_range(data["images"][idx, src]), relative_poses(data["views"][idx], src, tgt))


def train_unet(args: argparse.Namespace, out: Path, device: torch.device, data: dict[str, torch.Tensor]
               ) -> None:
    deadline = Deadline(args.time_limit, args.decay_tail)
    torch.manual_seed(args.seed)
    ckpt, step, init_stage = out / "unet_ckpt.pt", 0, None
    if args.init is not None and not ckpt.exists():
        unet, enc, cc = load_init(args.init)
        record = init_stage = init_record(args.init)
        args.input_latent = record["input_latent"]
        log(out, {"phase": "unet", "init": str(args.init), "init_step": record.get("step"),
                  "input_latent": args.input_latent})
    else:  # fresh weights, or the checkpoint's below
        unet, enc, cc = build_zero123_unet(), build_image_encoder(), build_cc_projection()
    unet, enc, cc = unet.to(device).train(), enc.to(device).train(), cc.to(device).train()
    params = [p for m in (unet, enc, cc) for p in m.parameters()]
    ema = [p.detach().clone() for p in params]  # an --init starts its EMA at the shipped (EMA) weights
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    sched = train_scheduler()
    gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location=device)
        for name, m in (("unet", unet), ("image_encoder", enc), ("cc_projection", cc)):
            m.load_state_dict(state[name])
        for e, s in zip(ema, state["ema"], strict=True):
            e.copy_(s)
        opt.load_state_dict(state["opt"])
        step = state["step"]
        gen.set_state(state["gen"].cpu())  # generator states are CPU byte tensors on every device
        args.input_latent = state["args"]["input_latent"]  # the run's choice, not this command line's
        init_stage = state.get("init_record")
        log(out, {"phase": "unet", "resumed_at": step})
    n_orbit = round(args.orbit_pairs * args.batch)
    n_front = round(args.front_pairs * args.batch)
    orbit = orbit_cache(args, out, device) if n_orbit or n_front else {}
    facing = (tuple(x.to(device) for x in facing_views(args.seed + ORBIT_SEED_OFFSET, args.orbit_scenes))
              if n_front else None)  # on the device once, not per step
    if device.type == "cuda":
        data = {k: v.to(device) for k, v in data.items()}
        orbit = {k: v.to(device) for k, v in orbit.items()}
    sf = float(data["scaling_factor"])
    in_scale = sf if args.input_latent == "scaled" else 1.0
    alphas = sched.alphas_cumprod.to(device)
    weights = LOSS_WEIGHTS[args.loss_weights]

    def save() -> None:
        atomic_save({"unet": unet.state_dict(), "image_encoder": enc.state_dict(),
                     "cc_projection": cc.state_dict(), "ema": ema, "opt": opt.state_dict(), "step": step,
                     "gen": gen.get_state(), "args": {k: str(v) if isinstance(v, Path) else v
                                                      for k, v in vars(args).items()},
                     "scaling_factor": sf, "init_record": init_stage}, ckpt)

    last_save, t0, first = time.time(), time.time(), step
    acc = torch.zeros((), dtype=torch.float64, device=device)  # loss sum on the device: no sync per step
    while (args.steps is None or step < args.steps) and not deadline.passed():
        cap = azimuth_cap(step, args.azimuth_curriculum)
        share = copy_share(step, args.copy_pairs, args.azimuth_curriculum)
        parts = [draw_pairs(data, args.batch - n_orbit - n_front, cap, share, gen, device)]
        if n_orbit:
            parts.append(draw_pairs(orbit, n_orbit, cap, share, gen, device))
        if n_front:
            parts.append(draw_pairs(orbit, n_front, cap, share, gen, device, facing))
        mean, std, cond_latent, src_images, poses = (torch.cat(x) for x in zip(*parts, strict=True))
        target = (mean + std * torch.randn(mean.shape, generator=gen, device=device)) * sf  # (B, 4, 16, 16)
        cond_latent = cond_latent * in_scale  # (B, 4, 16, 16)
        keep = (torch.rand(args.batch, generator=gen, device=device) >= args.drop_prob).float()
        tokens = condition_tokens(enc, cc, src_images, poses) * keep[:, None, None]  # (B, 1, 128)
        noise = torch.randn(target.shape, generator=gen, device=device)
        t = torch.randint(args.t_min, sched.config.num_train_timesteps, (args.batch,), generator=gen,
                          device=device)
        noisy = sched.add_noise(target, noise, t)
        pred = unet(torch.cat([noisy, cond_latent * keep[:, None, None, None]], 1), t, tokens).sample
        loss = (((pred - noise) ** 2).mean((1, 2, 3)) * weights(alphas, t)).mean()
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * deadline.lr_factor()
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        step += 1
        acc += loss.detach().double()
        if step % args.log_every == 0:
            log(out, {"phase": "unet", "step": step, "loss": round(acc.item() / args.log_every, 5), "lr": lr,
                      **({"azimuth_cap": round(cap, 1)} if args.azimuth_curriculum else {}),
                      **({"copy_share": round(share, 3)} if args.copy_pairs else {}),
                      "s_per_step": round((time.time() - t0) / args.log_every, 4)})
            acc.zero_()
            t0 = time.time()
        if time.time() - last_save > args.save_every:
            save()
            last_save = time.time()
    save()
    log(out, {"phase": "unet", "done": True, "steps": step,
              "stopped": "time_limit" if deadline.passed() else "steps",
              "steps_per_s": round((step - first) / max(deadline.elapsed(), 1e-9), 3)})


def init_record(folder: Path) -> dict:
    """The ``training.json`` of an exported model (its step and input-latent choice)."""
    path = folder / "training.json"
    return json.loads(path.read_text()) if path.is_file() else {"input_latent": "raw"}


def check_init(folder: Path) -> None:
    """A clear ValueError unless ``folder`` holds the parts of an exported Zero-1-to-3 model."""
    missing = [p for p in INIT_PARTS if not (folder / p / "config.json").is_file()]
    if missing:
        raise ValueError(f"--init {folder} lacks {missing}; give a folder exported by "
                         "`python -m worlds.shapes3d.zero123` (e.g. assets/shapes3d-zero123)")


def load_init(folder: Path) -> tuple[UNet2DConditionModel, CLIPVisionModelWithProjection, CCProjection]:
    """The trainable parts of an exported Zero-1-to-3 folder, in the trainer's classes."""
    check_init(folder)
    return (UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True),
            CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder", local_files_only=True),
            CCProjection.from_pretrained(folder / "cc_projection", local_files_only=True))


def take_init_vae(init: Path, out: Path) -> None:
    """The run uses the VAE its init was trained with: copied in, or checked if the run has one."""
    mine, theirs = out / "vae" / "config.json", init / "vae" / "config.json"
    if not mine.exists():
        shutil.copytree(init / "vae", out / "vae")
        log(out, {"phase": "vae", "copied_from": str(init / "vae")})
        return
    a = json.loads(mine.read_text()).get("scaling_factor")
    b = json.loads(theirs.read_text()).get("scaling_factor")
    if a != b:
        raise ValueError(f"--init {init}: its VAE (scaling_factor {b}) is not the run's {out / 'vae'} "
                         f"(scaling_factor {a}); start a fresh --out or drop --init")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/zero123"))
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--steps", type=int, default=None,
                   help="UNet steps (a target; resumable); default 20000, or no cap with --time-limit")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--drop-prob", type=float, default=0.1, help="joint condition dropout (for CFG)")
    p.add_argument("--input-latent", choices=["raw", "scaled"], default="raw",
                   help="source latent into the UNet: posterior mean as is (Zero-1-to-3) or x scaling_factor")
    p.add_argument("--init-vae", type=Path, default=DEFAULT_INIT_VAE)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch", type=int, default=12, help="images per VAE step (whole scenes of 6 views)")
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--scenes", type=int, default=4000, help="scenes (x 6 views) in the training cache")
    p.add_argument("--eval-scenes", type=int, default=16, help="held-out scenes for VAE PSNR / latent scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-every", type=float, default=180.0, help="seconds between checkpoints")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--time-limit", type=float, default=None, metavar="SEC",
                   help="stop the UNet phase SEC seconds after it starts")
    p.add_argument("--decay-tail", type=float, default=0.3, metavar="FRAC")
    p.add_argument("--phase", choices=["all", "vae", "cache", "unet"], default="all")
    p.add_argument("--init", type=Path, default=None, metavar="FOLDER",
                   help="start the UNet phase from an exported model (and take its VAE)")
    p.add_argument("--azimuth-curriculum", type=int, default=0, metavar="STEPS",
                   help="pairs' largest azimuth change grows 30 -> 180 deg over these steps (0: off)")
    p.add_argument("--copy-pairs", type=float, default=0.0, metavar="FRAC",
                   help="share of pairs with target = source at step 0, falling to 0 over "
                        "--azimuth-curriculum")
    p.add_argument("--orbit-pairs", type=float, default=0.0, metavar="FRAC",
                   help="share of each batch drawn from orbit scenes (all views at one elevation)")
    p.add_argument("--orbit-scenes", type=int, default=2000, help="scenes (x 12 views) in the orbit cache")
    p.add_argument("--loss-weights", choices=sorted(LOSS_WEIGHTS), default="min_snr",
                   help="epsilon-loss weights: min-SNR-5, or x0_floor (high-noise steps weigh more)")
    p.add_argument("--t-min", type=int, default=0, metavar="T",
                   help="train on timesteps T..999 only (0: all); the high-noise steps decide the layout")
    p.add_argument("--front-pairs", type=float, default=0.0, metavar="FRAC",
                   help="share of each batch from one-object orbit scenes, seen from the view facing "
                        "the object (its move then follows sin d azimuth alone)")
    args = p.parse_args(argv)
    if not 0.0 <= args.front_pairs < 1.0 or (args.front_pairs and args.orbit_pairs + args.front_pairs >= 1):
        p.error(f"--front-pairs {args.front_pairs} with --orbit-pairs {args.orbit_pairs}: give shares in "
                "[0, 1) that leave part of each batch to the main cache")
    if not 0 <= args.t_min < 1000:
        p.error(f"--t-min {args.t_min}: give a timestep in [0, 999] (0 trains on all)")
    if args.steps is None and args.time_limit is None:
        args.steps = 20_000
    if (args.steps is not None and args.steps < 0) or args.batch < 1 or args.scenes < 1:
        p.error("need --steps >= 0, --batch >= 1 and --scenes >= 1")
    if args.azimuth_curriculum < 0:
        p.error(f"--azimuth-curriculum {args.azimuth_curriculum}: give a number of steps >= 0 (0: off)")
    if not 0.0 <= args.copy_pairs <= 1.0 or (args.copy_pairs > 0 and args.azimuth_curriculum == 0):
        p.error(f"--copy-pairs {args.copy_pairs}: give a share in [0, 1], with --azimuth-curriculum STEPS "
                "over which it falls to 0")
    if not 0.0 <= args.orbit_pairs < 1.0 or args.orbit_scenes < 1:
        p.error(f"--orbit-pairs {args.orbit_pairs} / --orbit-scenes {args.orbit_scenes}: give a share in "
                "[0, 1) (the rest of each batch comes from the main cache) and at least one scene")
    try:
        Deadline(args.time_limit, args.decay_tail)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = training_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.init is not None:
        check_init(args.init)  # one clear error before any work if the folder is not a model
        take_init_vae(args.init, args.out)
    if args.phase in ("all", "vae"):
        train_vae(args, args.out, device)
    if args.phase in ("all", "cache", "unet"):
        if not (args.out / "vae" / "config.json").exists():
            raise ValueError(f"{args.out}/vae is missing; run --phase vae (or all) first")
        data = cache_views(args, args.out, device)
        if args.phase in ("all", "unet"):
            train_unet(args, args.out, device, data)


if __name__ == "__main__":
    main()
