"""Train the embedded moving-shapes Wan model: VAE -> latent cache -> transformer + text encoder.

    python -m worlds.moving_shapes.train --out runs/video --device cpu|cuda

Every stage is seeded and resumable: the run folder holds ``vae.pt`` / ``cache.pt`` / ``dit.pt``
checkpoints (weights, optimiser, EMA, step, RNG state) written every ``--save-every`` seconds, and a
``log.jsonl`` with the losses. Rerunning the same command continues where it stopped; a finished
stage is skipped. Recipe (the video analogue of the image model's; see docs/models.md, the video model):

1. AutoencoderKLWan: L1 + MSE + 1e-6 KL on 9-frame clips, 32x32 crops and whole 64x64 frames.
2. Cache posteriors (mean, std) of ``--cache-size`` 9-frame 64x64 clips; latents are normalised
   per channel with their measured mean/std (stored in the VAE config as Wan does).
3. WanTransformer3DModel + UMT5 encoder jointly with rectified flow (Wan's objective):
   x_s = (1 - s) x0 + s eps, target v = eps - x0, s from the shifted uniform schedule the
   FlowMatchEulerDiscreteScheduler samples with; 10 % empty captions (classifier-free guidance);
   AdamW, warm-up, grad clip 1, EMA (the EMA is shipped).

Fine-tuning on a lent GPU: ``--init-pipeline assets/moving-shapes-wan`` takes the VAE (and its latent
statistics), transformer and text encoder from an exported pipeline and trains stage 3 only;
``--time-limit`` stops at a wall-clock deadline with the learning rate decayed over its last
``--decay-tail``; ``--workers`` renders the cache in parallel processes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from worlds.finetune import Deadline, atomic_save, load_weights, require_parts
from worlds.moving_shapes import models as vm
from worlds.moving_shapes.attention_check import install_probes
from worlds.moving_shapes.data import frames_to_tensor, sample_video
from worlds.moving_shapes.tokenizer import build_video_tokenizer

TEXT_PAD_LENGTH = 512  # WanPipeline pads prompt embeddings with zeros to max_sequence_length=512


def log(run: Path, record: dict) -> None:
    record = {"time": round(time.time(), 1), **record}
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def _rng_state(rng: np.random.Generator) -> dict:
    return {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}


def _set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])


# ----------------------------------------------------------------------------------------- VAE
def vae_batch(rng: np.random.Generator, batch: int, frames: int, crop: int) -> torch.Tensor:
    """(B, 3, frames, crop, crop) in [-1, 1]: random clips at the training speed, randomly cropped."""
    # sample_video spreads 16-26 px of travel over the clip; keep the px/frame of NUM_FRAMES-long clips
    ratio = (frames - 1) / (vm.NUM_FRAMES - 1)
    speed = (1.0 * ratio, 1.6 * ratio)
    clips = []
    for _ in range(batch):
        s = sample_video(rng, num_frames=frames, speed_range=speed)
        x = frames_to_tensor(s.frames)
        if crop < vm.SIZE:
            i, j = rng.integers(0, vm.SIZE - crop + 1, size=2)
            x = x[:, :, i:i + crop, j:j + crop]
        clips.append(x)
    return torch.stack(clips)


def object_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """(B, 1, T, H, W) per-pixel loss weights: 1 on the background, ``weight`` on shape pixels.

    The background is one flat tint per clip, so its per-channel median is the background colour;
    pixels that differ from it by more than 0.1 (of the [-1, 1] range) belong to a shape. Shapes are a
    few percent of the pixels but carry everything the detector (and the prompt) cares about.
    """
    background = x.flatten(2).median(dim=2).values[:, :, None, None, None]
    on_shape = ((x - background).abs().amax(dim=1, keepdim=True) > 0.1).float()
    return 1.0 + (weight - 1.0) * on_shape


def reconstruction_loss(y: torch.Tensor, x: torch.Tensor, object_weight: float = 1.0) -> torch.Tensor:
    """L1 + MSE, with shape pixels weighted ``object_weight`` times the background."""
    w = object_weights(x, object_weight) if object_weight != 1.0 else torch.ones_like(x[:, :1])
    err = y - x
    return ((err.abs() + err.pow(2)) * w).mean() / w.mean()


def train_vae(run: Path, args: argparse.Namespace, device: torch.device):
    path = run / "vae.pt"
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    vae = vm.make_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    step = 0
    if not path.exists() and args.vae_init is not None:
        # warm start from another AutoencoderKLWan checkpoint: every tensor whose name and shape
        # still match (e.g. a 4x-temporal VAE's spatial convs into this 2x-temporal one)
        init = torch.load(args.vae_init, map_location=device, weights_only=False)["model"]
        own = vae.state_dict()
        kept = {k: v for k, v in init.items() if k in own and own[k].shape == v.shape}
        vae.load_state_dict(kept, strict=False)
        log(run, {"stage": "vae", "init": str(args.vae_init), "tensors_loaded": len(kept),
                  "tensors": len(own)})
    if path.exists():
        ck = torch.load(path, map_location=device, weights_only=False)
        vae.load_state_dict(ck["model"])
        if ck.get("opt") is None:  # imported from a pipeline (--init-pipeline): not ours to train
            return vae.eval()
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        _set_rng_state(rng, ck["rng"])
    if step >= args.vae_steps:
        return vae.eval()
    last = time.time()
    t0 = time.time()
    while step < args.vae_steps:
        # 3 of 4 steps: whole clips cropped to 32x32 (first frame + two 4-frame chunks, so the cache
        # carried from one chunk into the next is trained); every 4th step whole 64x64 clips, for
        # the full-size mid-block attention.
        full = step % 4 == 3
        batch = max(1, args.vae_batch // 4) if full else args.vae_batch
        x = vae_batch(rng, batch, vm.NUM_FRAMES, vm.SIZE if full else 32).to(device)
        cosine = 0.5 * (1 + math.cos(math.pi * step / args.vae_steps))
        lr = args.vae_lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * cosine)
        for g in opt.param_groups:
            g["lr"] = lr
        post = vae.encode(x).latent_dist
        y = vae.decode(post.sample()).sample
        rec = reconstruction_loss(y, x, args.vae_object_weight)
        kl = post.kl().mean() / x[0].numel()
        loss = rec + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 20 == 0:
            psnr = -10 * math.log10(F.mse_loss(y.detach(), x).item() / 4 + 1e-12)  # range 2 -> peak^2 = 4
            log(run, {"stage": "vae", "step": step, "loss": round(loss.item(), 5), "psnr": round(psnr, 2),
                      "kl": round(kl.item(), 3), "lr": lr, "sec": round(time.time() - t0, 1)})
        if time.time() - last > args.save_every or step == args.vae_steps:
            atomic_save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                         "rng": _rng_state(rng)}, path)
            last = time.time()
    return vae.eval()


@torch.no_grad()
def eval_vae(vae, device: torch.device, n: int = 16, seed: int = 1234) -> float:
    """PSNR (dB) of whole 64x64 reconstructions (posterior mean) of held-out clips."""
    rng = np.random.default_rng(seed)
    x = torch.stack([frames_to_tensor(sample_video(rng).frames) for _ in range(n)]).to(device)
    y = torch.cat([vae.decode(vae.encode(x[i:i + 4]).latent_dist.mode()).sample for i in range(0, n, 4)])
    return float(-10 * torch.log10(F.mse_loss(y, x) / 4))


# --------------------------------------------------------------------------------- latent cache
@torch.no_grad()
def build_cache(run: Path, args: argparse.Namespace, vae, device: torch.device) -> dict:
    """Encode ``cache_size`` clips once (posterior mean/std in fp16) and measure the per-channel
    latent statistics Wan stores as ``latents_mean`` / ``latents_std``. Resumable in chunks of 64."""
    path = run / "cache.pt"
    cache = torch.load(path, weights_only=False) if path.exists() else {"mean": [], "std": [], "captions": [],
                                                                          "objects": [], "rng": None}
    rng = np.random.default_rng(args.seed + 1)
    if isinstance(cache["rng"], dict):  # "chunked": drawn by --workers from per-chunk streams
        rng.bit_generator.state = cache["rng"]
    done = sum(m.shape[0] for m in cache["mean"])
    t0 = time.time()
    pool = ProcessPoolExecutor(args.workers) if args.workers > 1 and done < args.cache_size else None
    # with workers, chunk c is drawn from its own stream (seed + 1, c), so a resumed cache continues
    todo = range(done // 64, math.ceil(args.cache_size / 64))
    chunks = (pool.map(render_chunk, [args.seed + 1] * len(todo), todo,
                       [min(64, args.cache_size - c * 64) for c in todo])
              if pool is not None else None)
    while done < args.cache_size:
        n = min(64, args.cache_size - done)
        if chunks is not None:
            frames, captions, objects = next(chunks)
        else:
            samples = [sample_video(rng, num_frames=vm.NUM_FRAMES, size=vm.SIZE) for _ in range(n)]
            frames = np.stack([s.frames for s in samples])
            captions = [s.caption for s in samples]
            objects = [[(o.colour, o.shape, o.direction) for o in s.objects] for s in samples]
        x = torch.stack([frames_to_tensor(f) for f in frames]).to(device)
        means, stds = [], []
        per_call = 64 if device.type == "cuda" else 16  # clips per VAE encode
        for i in range(0, n, per_call):
            post = vae.encode(x[i:i + per_call]).latent_dist
            means.append(post.mean.half().cpu())
            stds.append(post.std.half().cpu())
        cache["mean"].append(torch.cat(means))
        cache["std"].append(torch.cat(stds))
        cache["captions"] += captions
        cache["objects"] += objects
        cache["rng"] = rng.bit_generator.state if chunks is None else "chunked"
        done += n
        if chunks is None or done >= args.cache_size or (done // 64) % 200 == 0:
            atomic_save(cache, path)
            log(run, {"stage": "cache", "clips": done, "sec": round(time.time() - t0, 1)})
    if pool is not None:
        pool.shutdown()
    mean = torch.cat(cache["mean"]).float()
    std = torch.cat(cache["std"]).float()
    if "latents_mean" not in cache and args.init_pipeline is not None:
        # the imported transformer was trained on latents normalised with the imported VAE's statistics
        cache["latents_mean"] = list(vae.config.latents_mean)
        cache["latents_std"] = list(vae.config.latents_std)
        atomic_save(cache, path)
    if "latents_mean" not in cache:
        # per-channel statistics of sampled latents z = mu + sigma * eps (what training sees) over
        # clips, frames and pixels: (C,)
        z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(args.seed))
        cache["latents_mean"] = z.mean(dim=(0, 2, 3, 4)).tolist()
        cache["latents_std"] = z.std(dim=(0, 2, 3, 4)).tolist()
        atomic_save(cache, path)
        log(run, {"stage": "cache", "latents_mean": cache["latents_mean"],
                  "latents_std": cache["latents_std"]})
    vae.register_to_config(latents_mean=cache["latents_mean"], latents_std=cache["latents_std"])
    return {"mean": mean, "std": std, "captions": cache["captions"],
            "latents_mean": torch.tensor(cache["latents_mean"]).view(1, -1, 1, 1, 1),
            "latents_std": torch.tensor(cache["latents_std"]).view(1, -1, 1, 1, 1)}


def render_chunk(seed: int, chunk: int, n: int) -> tuple[np.ndarray, list[str], list[list[tuple]]]:
    """``n`` clips of cache chunk ``chunk`` from the stream (seed, chunk): uint8 frames (n, T, H, W, 3),
    captions and (colour, shape, direction) per object. Runs in a worker process."""
    rng = np.random.default_rng([seed, chunk])
    samples = [sample_video(rng, num_frames=vm.NUM_FRAMES, size=vm.SIZE) for _ in range(n)]
    return (np.stack([s.frames for s in samples]), [s.caption for s in samples],
            [[(o.colour, o.shape, o.direction) for o in s.objects] for s in samples])


def import_pipeline(run: Path, folder: Path, device: torch.device):
    """The VAE of an exported pipeline, written to ``run/vae.pt`` (no optimiser: it stays frozen) so the
    run folder exports and resumes like a trained one."""
    from diffusers import AutoencoderKLWan

    folder = require_parts(folder, ("vae", "transformer", "text_encoder"),
                           "an exported moving-shapes WanPipeline folder such as assets/moving-shapes-wan")
    vae = AutoencoderKLWan.from_pretrained(folder / "vae").to(device).eval()
    path = run / "vae.pt"
    if not path.exists():
        atomic_save({"model": vae.state_dict(), "opt": None, "step": 0, "init": str(folder)}, path)
    return vae


def init_from_pipeline(folder: Path, transformer, text_encoder) -> dict:
    """Load an exported pipeline's (EMA) transformer and text-encoder weights; returns its meta."""
    from diffusers import WanTransformer3DModel
    from transformers import UMT5EncoderModel

    folder = Path(folder)
    load_weights(transformer, WanTransformer3DModel, folder / "transformer")
    load_weights(text_encoder, UMT5EncoderModel, folder / "text_encoder")
    meta_path = folder / "training_meta.json"
    return json.loads(meta_path.read_text()) if meta_path.exists() else {}


# --------------------------------------------------------------------------- transformer + text
def encode_text(text_encoder, tokenizer, captions: list[str], device: torch.device,
                pad_to: int = TEXT_PAD_LENGTH) -> torch.Tensor:
    """UMT5 embeddings laid out exactly as WanPipeline builds them: the real tokens (with </s>),
    then zeros up to ``pad_to``. (B, pad_to, d_model)."""
    h, _ = encode_text_short(text_encoder, tokenizer, captions, device)
    return F.pad(h, (0, 0, 0, pad_to - h.shape[1]))


def encode_text_short(text_encoder, tokenizer, captions: list[str], device: torch.device):
    """Embeddings at the tokenizer's length (32) with zeroed padding rows, and the real lengths (B,)."""
    tok = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    ids, mask = tok.input_ids.to(device), tok.attention_mask.to(device)
    h = text_encoder(ids, mask).last_hidden_state * mask[..., None]  # (B, L, D), padding rows zeroed
    return h, mask.sum(1)


class PaddedCrossAttnProcessor(WanAttnProcessor):
    """Training-only attn2 processor: 32 text rows behave exactly like WanPipeline's 512.

    Every zero padding row maps to the same key/value (text projection, to_k/to_v and RMSNorm of a
    constant row), so n identical keys are one key whose softmax weight is multiplied by n. Adding
    log((512 - L) / (32 - L)) to the logits of the 32 - L padding rows therefore reproduces the
    512-row attention exactly while computing 16x fewer keys (checked in tests/test_video_model.py).
    """

    def __init__(self) -> None:
        super().__init__()
        self.bias: torch.Tensor | None = None  # (B, 1, 1, 32) additive logits

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, self.bias, rotary_emb)


def padding_bias(lengths: torch.Tensor, short: int, full: int = TEXT_PAD_LENGTH) -> torch.Tensor:
    """(B, 1, 1, short) logit bias making ``short - L`` zero rows count as ``full - L`` rows."""
    pos = torch.arange(short, device=lengths.device)[None, :]
    lengths = lengths[:, None].float()
    bias = torch.log((full - lengths) / (short - lengths)) * (pos >= lengths)
    return bias[:, None, None, :]


def install_padded_cross_attn(transformer) -> PaddedCrossAttnProcessor:
    """Put one shared PaddedCrossAttnProcessor on every attn2; set its ``bias`` before each forward."""
    proc = PaddedCrossAttnProcessor()
    for block in transformer.blocks:
        block.attn2.set_processor(proc)
    return proc


def flow_sigmas(batch: int, shift: float, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Noise levels s in (0, 1) drawn like the shifted sampler visits them:
    u ~ U(0, 1), s = shift u / (1 + (shift - 1) u)."""
    u = torch.rand(batch, generator=generator, device=device).clamp(1e-3, 1 - 1e-3)
    return shift * u / (1 + (shift - 1) * u)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1 - decay)


def dit_lr_factor(step: int, decay_from: int | None = None, decay_to: int | None = None) -> float:
    """Learning-rate multiplier: 200-step linear warm-up, constant, then (when ``decay_from`` <
    ``decay_to`` are given) linear decay to 0.1 between them and 0.1 after. Fixed steps rather than a
    fraction of ``--dit-steps``, so a resumed run can add the decay without changing the past."""
    factor = min(1.0, (step + 1) / 200)
    if decay_from is not None and decay_to is not None and decay_to > decay_from and step > decay_from:
        factor *= 1.0 - 0.9 * min(1.0, (step - decay_from) / (decay_to - decay_from))
    return factor


def set_cross_attention_gain(transformer, gain: float) -> None:
    """Start every attn2 ``norm_q`` / ``norm_k`` RMSNorm weight at ``gain`` (cross-attention logits
    x gain^2). WanPipeline feeds ~500 identical zero-padding text rows; at unit gains their shared key
    takes >90 % of the cross-attention mass early in training and dilutes the prompt ~20x (measured on
    the first model). Larger logits let the few real tokens win the softmax from the start."""
    with torch.no_grad():
        for block in transformer.blocks:
            block.attn2.norm_q.weight.fill_(gain)
            block.attn2.norm_k.weight.fill_(gain)


def decay_groups(modules: list[torch.nn.Module], weight_decay: float) -> list[dict]:
    """AdamW parameter groups: matrices decay; biases, norm gains and 1-d tables do not (decaying a
    norm gain would pull the cross-attention logits back towards zero)."""
    decay, keep = [], []
    for module in modules:
        for p in module.parameters():
            (decay if p.ndim >= 2 else keep).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def train_dit(run: Path, args: argparse.Namespace, vae, cache: dict, device: torch.device, tokenizer) -> None:
    import copy

    from worlds.moving_shapes.export import export_pipeline

    path = run / "dit.pt"
    torch.manual_seed(args.seed + 2)
    gen = torch.Generator(device).manual_seed(args.seed + 3)
    transformer = vm.make_transformer().to(device)
    text_encoder = vm.make_text_encoder(len(tokenizer)).to(device)
    if args.init_pipeline is not None and not path.exists():
        meta = init_from_pipeline(args.init_pipeline, transformer, text_encoder)  # trained gains kept
        log(run, {"stage": "dit", "init": str(args.init_pipeline), "init_steps": meta.get("dit_steps"),
                  "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"})
    else:
        set_cross_attention_gain(transformer, args.cross_gain)
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    groups = decay_groups([transformer, text_encoder], 1e-2)
    opt = torch.optim.AdamW(groups, lr=args.dit_lr, betas=(0.9, 0.99))
    ema_t, ema_e = copy.deepcopy(transformer).eval(), copy.deepcopy(text_encoder).eval()
    step = 0
    if path.exists():
        ck = torch.load(path, map_location=device, weights_only=False)
        transformer.load_state_dict(ck["transformer"])
        text_encoder.load_state_dict(ck["text_encoder"])
        ema_t.load_state_dict(ck["ema_transformer"])
        ema_e.load_state_dict(ck["ema_text_encoder"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        gen.set_state(ck["gen"].cpu())  # loaded with map_location=device; states are CPU tensors
        torch.set_rng_state(ck["torch_rng"].cpu())
    for m in (ema_t, ema_e):
        m.requires_grad_(False)
    cross = install_padded_cross_attn(transformer)
    # explicit attn1 (same output as SDPA) so the same-frame attention mass can be logged and, with
    # --frame-weight > 0, pushed up to --frame-target (a hinge: no force once a layer is there)
    probes = install_probes(transformer, frames=cache["mean"].shape[2])
    masses = []
    n = cache["mean"].shape[0]
    lm, ls = cache["latents_mean"].to(device), cache["latents_std"].to(device)
    c_mean, c_std = cache["mean"].to(device), cache["std"].to(device)  # a few hundred MB at most
    deadline = Deadline(args.time_limit, args.decay_tail)  # no limit: never passes, factor 1
    last_save = last_export = time.time()
    t0, losses, step0 = time.time(), [], step

    def checkpoint() -> None:
        atomic_save({"transformer": transformer.state_dict(), "text_encoder": text_encoder.state_dict(),
                     "ema_transformer": ema_t.state_dict(), "ema_text_encoder": ema_e.state_dict(),
                     "opt": opt.state_dict(), "step": step, "gen": gen.get_state(),
                     "torch_rng": torch.get_rng_state()}, path)

    while step < args.dit_steps and not deadline.passed():
        idx = torch.randint(0, n, (args.dit_batch,), generator=gen, device=device)
        mu, sd = c_mean[idx].float(), c_std[idx].float()
        x0 = (mu + sd * torch.randn(mu.shape, generator=gen, device=device) - lm) / ls  # (B, C, F, H, W)
        keep = (torch.rand(args.dit_batch, generator=gen, device=device) >= 0.1).tolist()
        captions = [cache["captions"][i] if k else "" for i, k in zip(idx.tolist(), keep, strict=True)]
        eps = torch.randn(x0.shape, generator=gen, device=device)
        s = flow_sigmas(args.dit_batch, vm.FLOW_SHIFT, gen, device)
        sv = s.view(-1, 1, 1, 1, 1)
        xs = (1 - sv) * x0 + sv * eps
        lr = args.dit_lr * dit_lr_factor(step, args.decay_from, args.decay_to) * deadline.lr_factor()
        for g in opt.param_groups:
            g["lr"] = lr
        cond, lengths = encode_text_short(text_encoder, tokenizer, captions, device)
        cross.bias = padding_bias(lengths, cond.shape[1])
        pred = transformer(xs, timestep=s * 1000, encoder_hidden_states=cond, return_dict=False)[0]
        flow_loss = F.mse_loss(pred, eps - x0)
        layer_mass = torch.stack([pr.last_mass.mean(1) for pr in probes], 1)  # (B, layers), head mean
        frame_loss = F.relu(args.frame_target - layer_mass).mean()
        loss = flow_loss + args.frame_weight * frame_loss
        masses.append(layer_mass.detach().mean(0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        _ema_update(ema_t, transformer, decay)
        _ema_update(ema_e, text_encoder, decay)
        losses.append(flow_loss.item())
        finished = step == args.dit_steps or deadline.passed()
        if step % 50 == 0 or finished:  # the last, partial window too
            ratio = (torch.stack(masses).mean(0) * cache["mean"].shape[2]).tolist()  # x uniform share
            masses = []
            log(run, {"stage": "dit", "step": step, "loss": round(float(np.mean(losses)), 5),
                      "diag_ratio": [round(r, 2) for r in ratio], "frame_loss": round(frame_loss.item(), 4),
                      "grad_norm": round(float(gn), 3), "lr": lr, "sec": round(time.time() - t0, 1),
                      "steps_per_s": round((step - step0) / (time.time() - t0), 2)})
            losses = []
        if time.time() - last_save > args.save_every or finished:
            checkpoint()
            last_save = time.time()
        if (args.export_every and time.time() - last_export > args.export_every) or finished:
            export_pipeline(run / "pipeline", vae, ema_e, tokenizer, ema_t, meta={"dit_steps": step})
            last_export = time.time()
            log(run, {"stage": "dit", "step": step, "exported": str(run / "pipeline")})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/video"))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stage", default="all", choices=["vae", "cache", "dit", "all"])
    p.add_argument("--save-every", type=float, default=180.0, help="seconds between checkpoints")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch", type=int, default=8)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-kl", type=float, default=1e-6)
    p.add_argument("--vae-object-weight", type=float, default=4.0,
                   help="loss weight of shape pixels relative to the flat background")
    p.add_argument("--vae-init", type=Path, default=None, help="warm-start the VAE from this vae.pt")
    p.add_argument("--cache-size", type=int, default=4000)
    p.add_argument("--dit-steps", type=int, default=20000)
    p.add_argument("--dit-batch", type=int, default=16)
    p.add_argument("--dit-lr", type=float, default=8e-4)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--decay-from", type=int, default=None, help="step where the linear LR decay starts")
    p.add_argument("--decay-to", type=int, default=None, help="step where the LR reaches 0.1x and stays")
    p.add_argument("--cross-gain", type=float, default=2.5,
                   help="initial attn2 norm_q/norm_k gain (cross-attention logits x gain^2)")
    p.add_argument("--frame-weight", type=float, default=0.2,
                   help="weight of the same-frame attention hinge (0: off); documented in the model card")
    p.add_argument("--frame-target", type=float, default=0.5,
                   help="same-frame attention mass a layer is pushed to (uniform share is 1/F = 0.2)")
    p.add_argument("--init-pipeline", type=Path, default=None,
                   help="fine-tune: VAE, transformer and text encoder from this exported pipeline folder")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop the transformer stage after this many seconds (then save and export)")
    p.add_argument("--decay-tail", type=float, default=0.3,
                   help="with --time-limit: decay the LR linearly to 0.1x over this last fraction of it")
    p.add_argument("--workers", type=int, default=1, help="processes rendering the latent cache")
    p.add_argument("--export-every", type=float, default=0.0,
                   help="seconds between exports of the EMA pipeline to <out>/pipeline (0: only at the end)")
    args = p.parse_args(argv)
    if (args.decay_from is None) != (args.decay_to is None) or (
            args.decay_from is not None and not 0 <= args.decay_from < args.decay_to):
        raise ValueError(f"give both --decay-from and --decay-to with 0 <= from < to (got "
                         f"{args.decay_from}, {args.decay_to}), or neither for a constant learning rate")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available; use --device cpu")
    Deadline(args.time_limit, args.decay_tail)  # validates both
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    # the recipe of the latest start, for the model card (moving_shapes.export.training_summary reads it)
    (args.out / "args.json").write_text(json.dumps({k: str(v) if isinstance(v, Path) else v
                                                    for k, v in vars(args).items()}, indent=1))
    vae_done = (args.out / "vae.pt").exists() and (args.out / "cache.pt").exists()
    if args.init_pipeline is not None:
        vae = import_pipeline(args.out, args.init_pipeline, device)
        vae_done = True
    else:
        vae = train_vae(args.out, args, device)
    if not vae_done:  # first time past the VAE stage: record its held-out PSNR for the model card
        log(args.out, {"stage": "vae", "done": True, "psnr_full": round(eval_vae(vae, device), 2)})
    if args.stage == "vae":
        return
    cache = build_cache(args.out, args, vae, device)
    if args.stage == "cache":
        return
    train_dit(args.out, args, vae, cache, device, build_video_tokenizer())


if __name__ == "__main__":
    main()
