"""Train the shapes text-to-image model: VAE, latent cache, then UNet + text encoder.

    python -m worlds.shapes.train --out runs/shapes --device cpu --steps 8000

Each phase resumes from ``--out``: the VAE phase from ``vae_ckpt.pt`` (finished when ``vae/``
exists), the cache from ``latents.pt``, the UNet phase from ``unet_ckpt.pt`` (model, EMA,
optimiser, step and RNG states, saved every ``--save-every`` seconds). ``--steps`` is the UNet
step target, so re-running with a larger number continues training. Losses go to ``train.log``
(one JSON object per line). Export a pipeline with ``python -m worlds.shapes.export``.

Fine-tuning a shipped pipeline for a fixed wall-clock budget (e.g. on a lent GPU):

    python -m worlds.shapes.train --out runs/ft --init-pipeline assets/shapes-sd \
        --device cuda --time-limit 300 --decay-tail 0.3

``--init-pipeline`` starts the UNet, text encoder and EMA from the folder's weights (a fresh
optimiser; the EMA keeps its full decay from the first step) and takes the VAE from its ``vae/``
(copied to ``--out``/vae, so the VAE phases are skipped); ``--time-limit`` stops the UNet phase that
many seconds after it starts (``--steps`` then only caps it when given) and decays the learning rate
linearly to 0.1x over the last ``--decay-tail`` of the budget. A resumed run gets a fresh budget.

Drawing styles (the style model ``assets/shapes-style-sd``; ``worlds/shapes/styles.py``):

    python -m worlds.shapes.train --out runs/style --init-pipeline assets/shapes-sd \
        --styles flat,outline,hatched,dotted --vae-steps 1500 --vae-lr 4e-4 --device cuda \
        --vae-time-limit 120 --time-limit 300 --workers 8

``--styles`` draws each scene in one of the styles (uniform; from a generator of its own, so the
default flat-only data is unchanged) and captions it "..., outline style"; the tokenizer and text
encoder gain the style words (the init's embedding rows are kept, new words start fresh). With
styles other than flat, ``--init-vae auto`` fine-tunes the init's VAE on styled renders (the
shapes-sd VAE loses hatching and dots: 18.6-19.7 dB) instead of copying it; ``--vae-time-limit``
time-boxes that phase. ``--workers`` renders scenes in that many processes (VAE batches and the cache).

Recipe (assets/shapes-sd/MODEL_CARD.md): VAE with L1 + MSE + 1e-7 KL on random 32x32 crops for
75 % of its steps; UNet epsilon loss with min-SNR-5 weighting (Hang et al. 2023), 10 % empty captions for CFG,
AdamW 8e-4 with warm-up, grad clip 1, EMA 0.999; plus a token-grounding loss on every attn2 map
(TokenCompose) so that colour and shape words attend to their object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPTokenizer

from worlds.finetune import Deadline, atomic_save, load_weights, log, require_parts, training_device

from .attention_check import grounding_loss, install_probes
from .data import MAX_OBJECTS, check_styles, prefetched, render_arrays, scene_batch, to_tensors
from .models import IMAGE_SIZE, build_text_encoder, build_unet, build_vae, train_scheduler
from .tokenizer import build_tokenizer, style_words

VAE_SEED_OFFSET = 10_000  # the VAE sees a different scene stream than the UNet cache
HOLDOUT_SEED_OFFSET = 20_000  # PSNR is measured on scenes neither phase trained on


# ----------------------------------------------------------------------------------------- VAE
def vae_loss(vae: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.sample()).sample
    kl = post.kl().mean()
    l1, mse = (rec - x).abs().mean(), F.mse_loss(rec, x)
    return l1 + mse + 1e-7 * kl, mse.item()


@torch.no_grad()
def vae_psnr(vae: torch.nn.Module, seed: int, n: int = 256, styles: tuple[str, ...] = ("flat",)) -> float:
    """PSNR of held-out reconstructions (the scenes of ``styles``' stream, as trained) on its device."""
    x = scene_batch(seed + HOLDOUT_SEED_OFFSET, 0, n, styles=styles)["pixels"]
    x = x.to(next(vae.parameters()).device)
    rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    mse = F.mse_loss((rec + 1) / 2, (x + 1) / 2).item()
    return 10 * math.log10(1.0 / mse)


def styled_psnr(vae: torch.nn.Module, seed: int, n: int, styles: tuple[str, ...]) -> dict[str, float]:
    """Held-out PSNR per style (each style's ``n`` scenes drawn in it alone); {} for flat-only runs."""
    if styles == ("flat",):
        return {}
    return {f"psnr_{s}_db": round(vae_psnr(vae, seed, n, (s,)), 2) for s in styles}


def init_vae_mode(args: argparse.Namespace) -> str:
    """'copy' or 'finetune' the init pipeline's VAE ('auto': fine-tune when styles other than flat
    are drawn, since the flat-trained VAE cannot reconstruct them)."""
    if args.init_vae != "auto":
        return args.init_vae
    return "copy" if args.styles == ("flat",) else "finetune"


def _vae_batches(args: argparse.Namespace, first: int):  # noqa: ANN202 - a generator of numpy batches
    calls = ((args.seed + VAE_SEED_OFFSET, s * args.vae_batch, args.vae_batch, IMAGE_SIZE, 16, args.styles)
             for s in range(first, args.vae_steps))
    return prefetched(render_arrays, calls, args.workers)


def train_vae(args: argparse.Namespace, out: Path, device: torch.device) -> None:
    """Train the VAE from scratch, or fine-tune the init pipeline's (``--init-vae finetune``)."""
    if (out / "vae" / "config.json").exists():
        return
    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed)
    finetune = args.init_pipeline is not None and init_vae_mode(args) == "finetune"
    vae = (AutoencoderKL.from_pretrained(Path(args.init_pipeline) / "vae").float() if finetune
           else build_vae()).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=1e-2)
    ckpt, step = out / "vae_ckpt.pt", 0
    gen = torch.Generator().manual_seed(args.seed)
    if ckpt.exists():  # no map_location: it would move the CPU generator's state to the GPU
        state = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        step, gen = state["step"], state["gen"]
    if finetune:
        log(out, {"phase": "vae", "init_pipeline": str(args.init_pipeline), "styles": list(args.styles),
                  "step": step, **styled_psnr(vae.eval(), args.seed, args.eval_scenes // 4, args.styles)})
        vae.train()
    vae_warmup = max(1, args.vae_warmup if args.vae_warmup is not None else (100 if finetune else 0))
    deadline = Deadline(args.vae_time_limit, args.decay_tail)
    last_save, t0 = time.time(), time.time()
    batches = _vae_batches(args, step)
    for arrays in batches:
        if deadline.passed():
            break
        x = to_tensors(arrays)["pixels"]
        progress = max(step / args.vae_steps, deadline.elapsed() / (args.vae_time_limit or math.inf))
        if progress < 0.75:  # random 32x32 crops: cheaper steps, same local statistics
            i, j = (int(v) for v in torch.randint(0, 33, (2,), generator=gen))
            x = x[:, :, i : i + 32, j : j + 32]
        for g in opt.param_groups:  # a fine-tune warms up: Adam's first steps would wreck the init
            g["lr"] = args.vae_lr * min(1.0, (step + 1) / vae_warmup) * deadline.lr_factor()
        loss, mse = vae_loss(vae, x.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            log(out, {"phase": "vae", "step": step, "loss": round(loss.item(), 5), "mse": round(mse, 5),
                      "s_per_step": round((time.time() - t0) / 50, 3)})
            t0 = time.time()
        if time.time() - last_save > args.save_every:
            atomic_save({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step, "gen": gen}, ckpt)
            last_save = time.time()
    batches.close()  # stops the render workers of an interrupted stream
    atomic_save({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step, "gen": gen}, ckpt)
    vae.eval().cpu()
    with torch.no_grad():  # SD convention: latents * scaling_factor have unit variance
        x = scene_batch(args.seed + VAE_SEED_OFFSET, 0, 2 * args.eval_scenes, styles=args.styles)["pixels"]
        std = vae.encode(x).latent_dist.mode().std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    psnr = vae_psnr(vae, args.seed, args.eval_scenes, args.styles)
    per_style = styled_psnr(vae, args.seed, args.eval_scenes // 4, args.styles)
    vae.save_pretrained(out / "vae")
    log(out, {"phase": "vae", "done": True, "steps": step, "psnr_db": round(psnr, 2), **per_style,
              "stopped": "time_limit" if deadline.passed() else "steps",
              "seconds": round(deadline.elapsed(), 1), "scaling_factor": round(1.0 / std, 5),
              "lr": args.vae_lr, "batch": args.vae_batch, "warmup": vae_warmup})


def train_decoder(args: argparse.Namespace, out: Path, device: torch.device) -> None:
    """Keep training the VAE decoder with the encoder frozen (SD's ft-MSE recipe).

    The latent space is fixed once ``vae/`` is written, so the UNet can train on cached latents in
    a second process while this one sharpens the decoder; ``vae_decoder/`` is re-saved at every
    checkpoint and the export prefers it.
    """
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(out / "vae").to(device)
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=1e-2)
    ckpt, step = out / "decoder_ckpt.pt", 0
    gen = torch.Generator().manual_seed(args.seed + 2)
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        for g in opt.param_groups:  # a resumed run may lower the learning rate
            g["lr"] = args.decoder_lr
        step, gen = state["step"], state["gen"]
    last_save, t0 = time.time(), time.time()

    def save() -> None:
        atomic_save({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step, "gen": gen}, ckpt)
        vae.save_pretrained(out / "vae_decoder")
        psnr = vae_psnr(vae.eval(), args.seed, args.eval_scenes // 4, args.styles)
        log(out, {"phase": "decoder", "step": step, "psnr_db": round(psnr, 2)})
        vae.train()

    while step < args.decoder_steps:
        x = scene_batch(args.seed + VAE_SEED_OFFSET, 10**6 + step * args.vae_batch, args.vae_batch,
                        styles=args.styles)["pixels"]
        if torch.rand((), generator=gen) < 0.5:  # half the steps on 32x32 crops (4x cheaper)
            i, j = (int(v) for v in torch.randint(0, 33, (2,), generator=gen))
            x = x[:, :, i : i + 32, j : j + 32]
        x = x.to(device)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        rec = vae.decode(z).sample
        loss = (rec - x).abs().mean() + F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            log(out, {"phase": "decoder", "step": step, "loss": round(loss.item(), 5),
                      "s_per_step": round((time.time() - t0) / 50, 3), "time": time.strftime("%H:%M:%S")})
            t0 = time.time()
        if time.time() - last_save > args.save_every:
            save()
            last_save = time.time()
    save()


# --------------------------------------------------------------------------------------- cache
@torch.no_grad()
def cache_latents(
    args: argparse.Namespace, out: Path, device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Posterior mean/std (fp16) of ``--scenes`` scenes, their token ids, masks at 16x16.

    The VAE encodes on ``device``; the cache itself is kept (and saved) on the CPU, with the
    ``styles`` it was drawn in (a cache of other styles is refused rather than trained on).
    """
    path = out / "latents.pt"
    if path.exists():
        data = torch.load(path, weights_only=False)
        cached = tuple(data.get("styles", ("flat",)))
        if cached != args.styles:
            raise ValueError(f"{path} holds scenes in styles {cached}, not --styles {','.join(args.styles)}; "
                             "use another --out or the cache's styles")
        return data
    from diffusers import AutoencoderKL

    device = device or torch.device("cpu")
    vae = AutoencoderKL.from_pretrained(out / "vae").eval().to(device)
    tok = build_tokenizer(style_words(args.styles))
    means, stds, ids, masks, valid = [], [], [], [], []
    chunk = 256
    calls = ((args.seed, start, min(chunk, args.scenes - start), IMAGE_SIZE, 16, args.styles)
             for start in range(0, args.scenes, chunk))
    for start, arrays in zip(range(0, args.scenes, chunk), prefetched(render_arrays, calls, args.workers),
                             strict=True):
        b = to_tensors(arrays)
        dist = vae.encode(b["pixels"].to(device)).latent_dist
        means.append(dist.mean.half().cpu())
        stds.append(dist.std.half().cpu())
        ids.append(tok(b["captions"], padding="max_length", max_length=tok.model_max_length,
                       truncation=True, return_tensors="pt").input_ids.short())
        masks.append(b["masks"].half())
        valid.append(b["valid"])
        if start % 4096 == 0:
            log(out, {"phase": "cache", "scenes": start})
    data = {"mean": torch.cat(means), "std": torch.cat(stds), "ids": torch.cat(ids),
            "masks": torch.cat(masks), "valid": torch.cat(valid),
            "empty_ids": tok([""], padding="max_length", max_length=tok.model_max_length,
                             return_tensors="pt").input_ids[0].short(),
            "scaling_factor": torch.tensor(vae.config.scaling_factor)}
    if args.styles != ("flat",):  # flat caches keep their old layout
        data["styles"] = list(args.styles)
    atomic_save(data, path)
    return data


# ------------------------------------------------------------------------------- init pipeline
def check_init_pipeline(folder: Path) -> int | None:
    """Refuse a folder without the parts a fine-tune needs; the step it was trained for, if recorded."""
    folder = require_parts(folder, ("unet", "text_encoder", "vae"), "a pipeline folder written by "
                           "worlds.shapes.export (e.g. assets/shapes-sd)")
    record = folder / "training.json"
    step = json.loads(record.read_text()).get("step") if record.exists() else None
    return step if isinstance(step, int) else None


def copy_init_vae(folder: Path, out: Path) -> None:
    """``folder/vae`` -> ``out/vae`` (fp32), unless ``out/vae`` exists; the cache and export read it."""
    if (out / "vae" / "config.json").exists():
        return
    import shutil

    from diffusers import AutoencoderKL

    tmp = out / "vae.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    AutoencoderKL.from_pretrained(folder / "vae").float().save_pretrained(tmp)
    shutil.rmtree(out / "vae", ignore_errors=True)  # a half-written folder of an interrupted copy
    os.replace(tmp, out / "vae")


def load_init_weights(
    folder: Path, unet: torch.nn.Module, te: torch.nn.Module, tok: CLIPTokenizer, *,
    drop_unknown: bool = False,
) -> list[str]:
    """Strictly load ``folder``'s unet/ and text_encoder/ weights into freshly built models.

    ``tok`` may extend the folder's vocabulary (the style words): token-embedding rows are matched
    by token, so every old token keeps its row, even where BOS / EOS moved to new ids; the new
    tokens keep their fresh initialisation. ``drop_unknown`` lets a run for another world (the 3D
    shapes) leave out the folder's words it does not use. Returns the new whole words (tokens
    ending in ``</w>``).
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    load_weights(unet, UNet2DConditionModel, folder / "unet")
    old_vocab = CLIPTokenizer.from_pretrained(folder / "tokenizer").get_vocab()
    new_vocab = tok.get_vocab()
    if old_vocab == new_vocab:
        load_weights(te, CLIPTextModel, folder / "text_encoder")
        return []
    lost = [t for t in old_vocab if t not in new_vocab]
    if lost and not drop_unknown:
        raise ValueError(f"--init-pipeline {folder} knows tokens this run's vocabulary lacks ({lost[:5]}); "
                         "a fine-tune may add words, not remove them")
    state = CLIPTextModel.from_pretrained(folder / "text_encoder").state_dict()
    key = next(k for k in state if k.endswith("token_embedding.weight"))  # naming differs across versions
    rows = te.state_dict()[key].clone()  # (new vocab, hidden): fresh rows for the new tokens
    for token, i in new_vocab.items():
        if token in old_vocab:
            rows[i] = state[key][old_vocab[token]]
    te.load_state_dict({**state, key: rows})
    return sorted(t[: -len("</w>")] for t in new_vocab if t not in old_vocab and t.endswith("</w>"))


# ---------------------------------------------------------------------------------------- UNet
def new_generator(device: torch.device, seed: int) -> torch.Generator:
    """CPU generator on CPU runs (the streams of existing runs); one on the GPU for CUDA runs."""
    if device.type == "cuda":
        return torch.Generator(device=device).manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def generator_state(gen: torch.Generator) -> torch.Generator | torch.Tensor:
    """What the checkpoint stores: the CPU generator itself (as always), a CUDA one's state tensor."""
    return gen.get_state() if gen.device.type == "cuda" else gen


def restore_generator(saved: object, device: torch.device, seed: int) -> tuple[torch.Generator, bool]:
    """The checkpoint's generator on ``device``; ``(fresh generator, False)`` when it was saved on
    another kind of device (the stream cannot carry over between CPU and CUDA)."""
    if device.type == "cuda":
        if isinstance(saved, torch.Tensor):
            gen = torch.Generator(device=device)
            gen.set_state(saved.cpu())
            return gen, True
    elif isinstance(saved, torch.Generator) and saved.device.type == "cpu":
        return saved, True
    return new_generator(device, seed), False


def min_snr_weights(scheduler: torch.nn.Module, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma weights for epsilon prediction: min(SNR, gamma) / SNR."""
    ac = scheduler.alphas_cumprod.to(t.device)[t]
    snr = ac / (1 - ac)
    return snr.clamp(max=gamma) / snr


def train_unet(
    args: argparse.Namespace, out: Path, device: torch.device, data: dict[str, torch.Tensor]
) -> None:
    deadline = Deadline(args.time_limit, args.decay_tail)  # the budget counts from here
    torch.manual_seed(args.seed)
    tok = build_tokenizer(style_words(args.styles))
    unet, te = build_unet(), build_text_encoder(tok)
    ckpt, step = out / "unet_ckpt.pt", 0
    if args.init_pipeline is not None and not ckpt.exists():
        new_tokens = load_init_weights(Path(args.init_pipeline), unet, te, tok)
        log(out, {"phase": "unet", "init_pipeline": str(args.init_pipeline), "init_step": args.init_step,
                  **({"new_words": new_tokens} if new_tokens else {})})
    unet, te = unet.to(device), te.to(device)
    params = list(unet.parameters()) + list(te.parameters())
    ema = [p.detach().clone() for p in params]  # with --init-pipeline: the shipped (EMA) weights
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    sched = train_scheduler()
    gen = new_generator(device, args.seed + 1)
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location=device)
        unet.load_state_dict(state["unet"])
        te.load_state_dict(state["text_encoder"])
        for e, s in zip(ema, state["ema"], strict=True):
            e.copy_(s)
        opt.load_state_dict(state["opt"])
        step = state["step"]
        gen, same_stream = restore_generator(state["gen"], device, args.seed + 1 + step)
        # the initialisation belongs to the run, not to this invocation's command line
        saved = state.get("args", {})
        args.init_pipeline, args.init_step = saved.get("init_pipeline"), saved.get("init_step")
        if tuple(saved.get("styles", ("flat",))) != args.styles:
            raise ValueError(f"{ckpt} was trained with --styles {','.join(saved.get('styles', ['flat']))}; "
                             "resume with the same --styles or use another --out")
        log(out, {"phase": "unet", "resumed_at": step, **({} if same_stream else {"new_rng_stream": True})})

    probs: list[torch.Tensor] = []
    install_probes(unet, lambda name, p: probs.append(p))
    if device.type == "cuda":  # the whole cache lives on the GPU; batches are gathered there
        data = {k: v.to(device) if torch.is_tensor(v) else v for k, v in data.items()}
    rng_device = device if device.type == "cuda" else torch.device("cpu")
    n = data["mean"].shape[0]
    sf = float(data["scaling_factor"])
    empty_ids = data["empty_ids"].long()
    # A fine-tune starts from averaged weights: no EMA warm-up, which would discard them at once.
    ema_warmup = args.init_pipeline is None

    def zeros() -> dict[str, torch.Tensor]:  # fp64 sums on the device: no sync per step
        return {k: torch.zeros((), dtype=torch.float64, device=device) for k in ("loss", "eps", "ground")}

    last_save, t0, acc = time.time(), time.time(), zeros()
    loop_start, first_step, logged_step = time.time(), step, step

    def save() -> None:
        atomic_save({"unet": unet.state_dict(), "text_encoder": te.state_dict(), "ema": ema,
                     "opt": opt.state_dict(), "step": step, "gen": generator_state(gen),
                     "args": vars(args), "scaling_factor": sf}, ckpt)

    def more() -> bool:
        return (args.steps is None or step < args.steps) and not deadline.passed()

    while more():
        idx = torch.randint(0, n, (args.batch,), generator=gen, device=rng_device)
        mean, std = data["mean"][idx].float(), data["std"][idx].float()
        latents = (mean + std * torch.randn(mean.shape, generator=gen, device=rng_device)) * sf
        ids = data["ids"][idx].long()
        masks, valid = data["masks"][idx].float(), data["valid"][idx]
        drop = torch.rand(args.batch, generator=gen, device=rng_device) < args.empty_prob  # CFG
        ids = torch.where(drop[:, None], empty_ids, ids)  # empty captions (no boolean-mask sync)
        valid = valid & ~drop[:, None]
        noise = torch.randn(latents.shape, generator=gen, device=rng_device)
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), generator=gen,
                          device=rng_device)
        noisy = sched.add_noise(latents, noise, t)
        noisy, noise, t, ids = noisy.to(device), noise.to(device), t.to(device), ids.to(device)

        probs.clear()
        text = te(ids)[0]
        pred = unet(noisy, t, text).sample
        w = min_snr_weights(sched, t)
        eps = (((pred - noise) ** 2).mean((1, 2, 3)) * w).mean()
        ground = grounding_loss(probs, masks.to(device), valid.to(device))
        loss = eps + args.grounding_weight * ground

        lr = args.lr * min(1.0, (step + 1) / args.warmup) * deadline.lr_factor()
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step)) if ema_warmup else args.ema
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        step += 1
        acc["loss"] += loss.detach().double()
        acc["eps"] += eps.detach().double()
        acc["ground"] += ground.detach().double()
        if step % args.log_every == 0:
            means = {k: round(v.item() / args.log_every, 5) for k, v in acc.items()}  # syncs
            dt = time.time() - t0
            log(out, {"phase": "unet", "step": step, **means,
                      "lr": lr, "s_per_step": round(dt / args.log_every, 3),
                      "steps_per_s": round((step - logged_step) / max(dt, 1e-9), 2),
                      "time": time.strftime("%H:%M:%S")})
            acc, t0, logged_step = zeros(), time.time(), step
        if time.time() - last_save > args.save_every:
            save()
            last_save = time.time()
    save()
    seconds = time.time() - loop_start
    log(out, {"phase": "unet", "done": True, "steps": step,
              "stopped": "time_limit" if deadline.passed() else "steps", "seconds": round(seconds, 1),
              "steps_per_s": round((step - first_step) / max(seconds, 1e-9), 2),
              "phase_seconds": round(deadline.elapsed(), 1)})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/shapes"))
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--steps", type=int, default=None,
                   help="UNet + text-encoder steps (target, resumable); default 8000, "
                        "or no cap with --time-limit")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--empty-prob", type=float, default=0.1)
    p.add_argument("--grounding-weight", type=float, default=0.1, help="TokenCompose token loss weight")
    p.add_argument("--styles", default="flat", metavar="LIST",
                   help="comma-separated drawing styles of the data (flat,outline,hatched,dotted); "
                        "default flat: the data of assets/shapes-sd")
    p.add_argument("--vae-steps", type=int, default=1500, help="VAE steps (target, resumable)")
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-warmup", type=int, default=None, metavar="STEPS",
                   help="linear LR warm-up of the VAE phase (default: 100 steps when fine-tuning, else none)")
    p.add_argument("--vae-time-limit", type=float, default=None, metavar="SEC",
                   help="stop the VAE phase SEC seconds after it starts (LR decays over --decay-tail)")
    p.add_argument("--init-vae", choices=["auto", "copy", "finetune"], default="auto",
                   help="with --init-pipeline: copy DIR/vae, or fine-tune it on this run's data; "
                        "auto = copy for flat-only data, fine-tune when other styles are drawn")
    p.add_argument("--decoder-steps", type=int, default=0, help="extra decoder-only steps (--phase decoder)")
    p.add_argument("--decoder-lr", type=float, default=5e-4)
    p.add_argument("--scenes", type=int, default=30_000, help="scenes in the latent cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-scenes", type=int, default=256, help="held-out scenes for PSNR / latent scale")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on a shared CPU)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes rendering scenes (VAE batches, latent cache); 0 = in this process")
    p.add_argument("--save-every", type=float, default=180.0, help="seconds between checkpoints")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--init-pipeline", type=Path, default=None, metavar="DIR",
                   help="fine-tune: start UNet, text encoder and EMA from DIR's weights, VAE from DIR/vae")
    p.add_argument("--time-limit", type=float, default=None, metavar="SEC",
                   help="stop the UNet phase SEC seconds after it starts (save, then log done)")
    p.add_argument("--decay-tail", type=float, default=0.3, metavar="FRAC",
                   help="with --time-limit: LR decays linearly to 0.1x over this last fraction of the budget")
    p.add_argument("--phase", choices=["all", "vae", "decoder", "cache", "unet"], default="all",
                   help="all = vae, cache, unet; 'decoder' may run in a second process beside 'unet'")
    args = p.parse_args(argv)
    if args.steps is None and args.time_limit is None:
        args.steps = 8000
    if (args.steps is not None and args.steps < 0) or args.batch < 1 or args.scenes < args.batch:
        p.error("need --steps >= 0, --batch >= 1 and --scenes >= --batch")
    try:
        Deadline(args.time_limit, args.decay_tail)
        Deadline(args.vae_time_limit, args.decay_tail)
        args.styles = check_styles(s.strip() for s in args.styles.split(","))
    except ValueError as e:
        p.error(str(e))
    if args.workers < 0:
        p.error(f"--workers must be >= 0, got {args.workers}")
    args.init_step = None  # the init pipeline's training step, filled in by main()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = training_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # torch >= 2.9 may warn once (legacy API); harmless
        torch.backends.cudnn.allow_tf32 = True
    out = args.out
    if args.init_pipeline is not None:
        args.init_step = check_init_pipeline(args.init_pipeline)
    out.mkdir(parents=True, exist_ok=True)
    assert MAX_OBJECTS == 3
    log(out, {"machine": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "phase_arg": args.phase, "styles": list(args.styles),
              "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    if args.init_pipeline is not None and init_vae_mode(args) == "copy":  # the init's latent space
        copy_init_vae(args.init_pipeline, out)
    elif args.phase in ("all", "vae"):
        train_vae(args, out, device)
    if args.phase == "decoder":
        train_decoder(args, out, device)
    if args.phase in ("all", "cache", "unet"):
        if not (out / "vae" / "config.json").exists():
            raise ValueError(f"{out}/vae is missing; run --phase vae (or all) with this --out first")
        data = cache_latents(args, out, device)
        if args.phase in ("all", "unet"):
            train_unet(args, out, device, data)


if __name__ == "__main__":
    main()
