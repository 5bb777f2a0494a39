"""Train the 3D world's text-to-image model and its depth ControlNet; export both.

    python -m worlds.shapes3d.train_depth --out runs/sd3d --vae runs/zero123/vae --steps 20000 \
        --controlnet-steps 10000
    python -m worlds.shapes3d.train_depth --out runs/sd3d --device cuda --batch 128 --time-limit 300 \
        --controlnet-time-limit 300
    python -m worlds.shapes3d.train_depth --out runs/sd3d --export assets/shapes3d-sd

Phases, each resumable from ``--out``:

1. ``vae``: ``--vae DIR`` copies a fine-tuned world VAE (e.g. the novel-view run's); without it the
   shapes-sd VAE is fine-tuned on renders as in ``train_zero123``;
2. ``cache``: ``--scenes`` scenes x 6 views (``data.TRAIN_SPEC``): posterior mean/std, caption
   token ids ("a red cube and a blue sphere"), inverse-depth control maps (``models.depth_control``);
3. ``unet``: UNet + text encoder (shapes-sd layout, 3D vocabulary; ``--init-pipeline assets/shapes-sd``
   starts from the 2D world's weights, shared words keeping their embeddings), epsilon loss with min-SNR-5
   weights, 10 % empty captions, AdamW, EMA 0.999 -> ``unet_ckpt.pt``;
4. ``controlnet``: a ``ControlNetModel`` initialised from the UNet's EMA weights, trained on depth
   with the UNet and text encoder frozen -> ``controlnet_ckpt.pt``;
5. ``joint`` (only with ``--phase joint``): UNet, text encoder and ControlNet fine-tuned together
   through the depth path, which is the path the text + depth benchmark scores, from this run's two
   checkpoints or an exported folder (``--init-pipeline DIR`` with ``controlnet-depth/``) ->
   ``joint_ckpt.pt``, which ``--export`` then prefers (its ``training.json`` names the folder started
   from and that folder's steps). ``--multi-object-frac`` draws that fraction of
   each batch from views of two or more objects, where colours leak from one object to the other.

``--export DIR`` writes a ``StableDiffusionPipeline`` folder with the ControlNet in
``DIR/controlnet-depth``; both load offline with
``StableDiffusionControlNetPipeline.from_pretrained(DIR, controlnet=ControlNetModel.from_pretrained(DIR /
"controlnet-depth"))``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionPipeline

from worlds.finetune import Deadline, atomic_save, log, read_log, training_device
from worlds.shapes.tokenizer import save_vocab_files
from worlds.shapes.train import load_init_weights

from .data import TRAIN_SPEC, render_scenes, to_model_range
from .models import (
    WORDS3D,
    build_controlnet,
    build_t2i_unet,
    build_text_encoder3d,
    build_tokenizer3d,
    depth_control,
    sample_scheduler,
    scene_caption,
    train_scheduler,
)
from .scene import sample_scene
from .train_zero123 import DEFAULT_INIT_VAE, min_snr_weights, train_vae

CONTROLNET_DIR = "controlnet-depth"


@torch.no_grad()
def cache(args: argparse.Namespace, out: Path, device: torch.device) -> dict[str, torch.Tensor]:
    path = out / "depth_cache.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    vae = AutoencoderKL.from_pretrained(out / "vae").eval().to(device)
    tok = build_tokenizer3d()
    means, stds, ids, controls = [], [], [], []
    for start in range(0, args.scenes, 64):
        n = min(64, args.scenes - start)
        b = render_scenes(args.seed, start, n)
        dist = vae.encode(to_model_range(b["images"].flatten(0, 1)).to(device)).latent_dist
        means.append(dist.mean.half().cpu())
        stds.append(dist.std.half().cpu())
        captions = [scene_caption(sample_scene(args.seed, i, TRAIN_SPEC).objects)
                    for i in range(start, start + n)]
        enc = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.short()
        ids.append(enc.repeat_interleave(TRAIN_SPEC.views, 0))  # one caption per view
        controls.append(torch.stack([depth_control(d)[0] for d in b["depth"].flatten(0, 1)]).half())
        log(out, {"phase": "cache", "scenes": start + n})
    data = {"mean": torch.cat(means), "std": torch.cat(stds), "ids": torch.cat(ids),
            "control": torch.cat(controls),  # (N*V, 64, 64) in [0, 1]
            "empty_ids": tok([""], padding="max_length", max_length=tok.model_max_length,
                             return_tensors="pt").input_ids[0].short(),
            "scaling_factor": torch.tensor(vae.config.scaling_factor)}
    atomic_save(data, path)
    return data


def _loop(args: argparse.Namespace, out: Path, device: torch.device, data: dict[str, torch.Tensor],
          phase: str, modules: dict[str, torch.nn.Module], trainable: list[str], steps: int | None,
          limit: float | None, predict: Callable[..., torch.Tensor]) -> None:
    """One resumable training phase: AdamW, warm-up, clip 1, EMA, min-SNR epsilon loss, checkpoints."""
    deadline = Deadline(limit, args.decay_tail)
    params = [p for name in trainable for p in modules[name].parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    gen = torch.Generator(device=device).manual_seed(args.seed + PHASE_SEED_OFFSET[phase])
    ckpt, step = out / f"{phase}_ckpt.pt", 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location=device)
        for name in trainable:
            modules[name].load_state_dict(state[name])
        for e, s in zip(ema, state["ema"], strict=True):
            e.copy_(s)
        opt.load_state_dict(state["opt"])
        step = state["step"]
        gen.set_state(state["gen"].cpu())
        log(out, {"phase": phase, "resumed_at": step})
    log(out, {"phase": phase, "start": {  # the recipe of this invocation, for the model card
        "step": step, "target_steps": steps, "time_limit": limit, "batch": args.batch, "lr": args.lr,
        "warmup": args.warmup, "decay_tail": args.decay_tail, "ema": args.ema, "empty_prob": args.empty_prob,
        "init_pipeline": None if args.init_pipeline is None else str(args.init_pipeline),
        "multi_object_frac": args.multi_object_frac,
        "device": str(device), "threads": args.threads}})
    sched = train_scheduler()
    alphas = sched.alphas_cumprod.to(device)
    n, sf = data["mean"].shape[0], float(data["scaling_factor"])
    multi = multi_object_views(data["ids"]).nonzero()[:, 0].to(device)
    n_multi = 0 if args.multi_object_frac is None else round(args.batch * args.multi_object_frac)
    if n_multi and not len(multi):
        raise ValueError(f"--multi-object-frac {args.multi_object_frac}: the cache ({n} views) has no "
                         "view of two or more objects; cache more --scenes or leave the option out")

    def save() -> None:
        atomic_save({**{k: modules[k].state_dict() for k in trainable}, "ema": ema, "opt": opt.state_dict(),
                     "step": step, "gen": gen.get_state()}, ckpt)

    last_save, t0 = time.time(), time.time()
    acc = torch.zeros((), dtype=torch.float64, device=device)
    while (steps is None or step < steps) and not deadline.passed():
        idx = torch.randint(0, n, (args.batch,), generator=gen, device=device)
        if n_multi:
            idx[:n_multi] = multi[torch.randint(0, len(multi), (n_multi,), generator=gen, device=device)]
        mean, std = data["mean"][idx].float(), data["std"][idx].float()
        latents = (mean + std * torch.randn(mean.shape, generator=gen, device=device)) * sf  # (B, 4, 16, 16)
        drop = torch.rand(args.batch, generator=gen, device=device) < args.empty_prob
        ids = torch.where(drop[:, None], data["empty_ids"].long(), data["ids"][idx].long())
        noise = torch.randn(latents.shape, generator=gen, device=device)
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), generator=gen, device=device)
        control = data["control"][idx].float()[:, None].expand(-1, 3, -1, -1)  # (B, 3, 64, 64)
        pred = predict(sched.add_noise(latents, noise, t), t, ids, control)
        loss = (((pred - noise) ** 2).mean((1, 2, 3)) * min_snr_weights(alphas, t)).mean()
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * deadline.lr_factor()
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        step += 1
        acc += loss.detach().double()
        if step % args.log_every == 0:
            log(out, {"phase": phase, "step": step, "loss": round(acc.item() / args.log_every, 5), "lr": lr,
                      "s_per_step": round((time.time() - t0) / args.log_every, 4)})
            acc.zero_()
            t0 = time.time()
        if time.time() - last_save > args.save_every:
            save()
            last_save = time.time()
    save()
    log(out, {"phase": phase, "done": True, "steps": step,
              "stopped": "time_limit" if deadline.passed() else "steps"})


PHASE_SEED_OFFSET = {"unet": 1, "controlnet": 2, "joint": 3}
JOINT_MODULES = ["unet", "text_encoder", "controlnet"]  # the joint checkpoint's EMA order


def multi_object_views(ids: torch.Tensor) -> torch.Tensor:
    """(N, L) caption token ids -> (N,) bool: captions naming two or more objects (one "a" each)."""
    return (ids == build_tokenizer3d().convert_tokens_to_ids("a</w>")).sum(1) >= 2


def _ema_into(modules: list[torch.nn.Module], ema: list[torch.Tensor]) -> None:
    params = [p for m in modules for p in m.parameters()]
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)


def train_unet(args: argparse.Namespace, out: Path, device: torch.device, data: dict[str, torch.Tensor]
               ) -> None:
    torch.manual_seed(args.seed)
    unet, tok = build_t2i_unet(), build_tokenizer3d()
    te = build_text_encoder3d(tok)
    if args.init_pipeline is not None and not (out / "unet_ckpt.pt").exists():
        new_words = load_init_weights(args.init_pipeline, unet, te, tok, drop_unknown=True)
        log(out, {"phase": "unet", "init": str(args.init_pipeline), "new_words": new_words})
    unet, te = unet.to(device).train(), te.to(device).train()
    _loop(args, out, device, data, "unet", {"unet": unet, "text_encoder": te}, ["unet", "text_encoder"],
          args.steps, args.time_limit, lambda x, t, ids, _c: unet(x, t, te(ids)[0]).sample)


def frozen_t2i(out: Path, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The text-to-image UNet and text encoder with their EMA weights, frozen."""
    path = out / "unet_ckpt.pt"
    if not path.exists():
        raise ValueError(f"{path} is missing: train the text-to-image model first (--phase unet)")
    state = torch.load(path, weights_only=False, map_location="cpu")
    unet, te = build_t2i_unet(), build_text_encoder3d(build_tokenizer3d())
    _ema_into([unet, te], state["ema"])
    return unet.to(device).eval().requires_grad_(False), te.to(device).eval().requires_grad_(False)


def train_controlnet(args: argparse.Namespace, out: Path, device: torch.device, data: dict[str, torch.Tensor]
                     ) -> None:
    unet, te = frozen_t2i(out, device)
    cn = build_controlnet(unet).to(device).train()

    def predict(x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
        text = te(ids)[0]
        down, mid = cn(x, t, text, controlnet_cond=control, return_dict=False)
        return unet(x, t, text, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample

    _loop(args, out, device, data, "controlnet", {"controlnet": cn}, ["controlnet"], args.controlnet_steps,
          args.controlnet_time_limit, predict)


def _init_joint(args: argparse.Namespace, out: Path, unet: torch.nn.Module, te: torch.nn.Module,
                cn: torch.nn.Module) -> str:
    """Start weights of the joint phase: this run's EMA checkpoints, else ``--init-pipeline``'s folder."""
    if (out / "unet_ckpt.pt").exists() and (out / "controlnet_ckpt.pt").exists():
        _ema_into([unet, te], torch.load(out / "unet_ckpt.pt", weights_only=False, map_location="cpu")["ema"])
        _ema_into([cn], torch.load(out / "controlnet_ckpt.pt", weights_only=False, map_location="cpu")["ema"])
        return str(out)
    folder = args.init_pipeline
    if folder is None or not (folder / CONTROLNET_DIR / "config.json").exists():
        raise ValueError(f"--phase joint needs {out}/unet_ckpt.pt and controlnet_ckpt.pt, or --init-pipeline "
                         f"DIR with {CONTROLNET_DIR}/ (got {folder}); give an exported folder")
    load_init_weights(folder, unet, te, build_tokenizer3d(), drop_unknown=True)
    cn.load_state_dict(ControlNetModel.from_pretrained(folder / CONTROLNET_DIR).state_dict())
    return str(folder)


def train_joint(args: argparse.Namespace, out: Path, device: torch.device, data: dict[str, torch.Tensor]
                ) -> None:
    torch.manual_seed(args.seed)
    unet, te = build_t2i_unet(), build_text_encoder3d(build_tokenizer3d())
    cn = build_controlnet(unet)
    if not (out / "joint_ckpt.pt").exists():
        log(out, {"phase": "joint", "init": _init_joint(args, out, unet, te, cn)})
    unet, te, cn = unet.to(device).train(), te.to(device).train(), cn.to(device).train()

    def predict(x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
        text = te(ids)[0]
        down, mid = cn(x, t, text, controlnet_cond=control, return_dict=False)
        return unet(x, t, text, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample

    _loop(args, out, device, data, "joint", {"unet": unet, "text_encoder": te, "controlnet": cn},
          JOINT_MODULES, args.joint_steps, args.joint_time_limit, predict)


def trained_weights(out: Path) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module | None]:
    """EMA UNet, text encoder and ControlNet (None before that phase) of a run, the joint phase first."""
    joint = out / "joint_ckpt.pt"
    if not joint.exists():
        unet, te = frozen_t2i(out, torch.device("cpu"))
        cn_path = out / "controlnet_ckpt.pt"
        if not cn_path.exists():
            return unet, te, None
        cn = build_controlnet(unet)
        _ema_into([cn], torch.load(cn_path, weights_only=False, map_location="cpu")["ema"])
        return unet, te, cn
    unet, te = build_t2i_unet(), build_text_encoder3d(build_tokenizer3d())
    cn = build_controlnet(unet)
    _ema_into([unet, te, cn], torch.load(joint, weights_only=False, map_location="cpu")["ema"])
    return unet, te, cn


def fine_tuned_from(out: Path) -> dict | None:
    """The exported folder a joint phase started from and that folder's own steps (from its
    ``training.json``), so that an export of a fine-tune still records what it was built on."""
    records = read_log(out / "train.log") if (out / "train.log").is_file() else []
    init = next((r["init"] for r in records if r.get("phase") == "joint" and "init" in r), None)
    if init is None or Path(init) == out:
        return None
    record = Path(init) / "training.json"
    steps = json.loads(record.read_text()).get("steps") if record.is_file() else None
    return {"pipeline": init, "steps": steps}


def export(out: Path, dest: Path) -> Path:
    """EMA weights -> ``dest`` (StableDiffusionPipeline) + ``dest/controlnet-depth`` (ControlNetModel)."""
    base = fine_tuned_from(out)  # read before ``dest`` is written: it may be the folder itself
    unet, te, cn = trained_weights(out)
    tok = build_tokenizer3d()
    vae = AutoencoderKL.from_pretrained(out / "vae")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=sample_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(dest, safe_serialization=True)
    save_vocab_files(dest / "tokenizer", WORDS3D)
    if cn is not None:
        cn.save_pretrained(dest / CONTROLNET_DIR, safe_serialization=True)
    steps = {p: torch.load(out / f"{p}_ckpt.pt", weights_only=False)["step"]
             for p in PHASE_SEED_OFFSET if (out / f"{p}_ckpt.pt").exists()}
    record = {"steps": steps} if base is None else {"steps": steps, "fine_tuned_from": base}
    (dest / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return dest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/sd3d"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--vae", type=Path, default=None, help="a fine-tuned world VAE folder to copy")
    p.add_argument("--init-vae", type=Path, default=DEFAULT_INIT_VAE, help="without --vae: VAE to fine-tune")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-batch", type=int, default=12)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--eval-scenes", type=int, default=16)
    p.add_argument("--scenes", type=int, default=4000)
    p.add_argument("--init-pipeline", type=Path, default=None, metavar="DIR",
                   help="start the text-to-image model from this SD folder's UNet and text encoder "
                        "(e.g. assets/shapes-sd: shared words keep their embeddings)")
    p.add_argument("--steps", type=int, default=None, help="text-to-image steps (target); default 20000")
    p.add_argument("--controlnet-steps", type=int, default=None,
                   help="ControlNet steps (target); default 10000")
    p.add_argument("--time-limit", type=float, default=None, metavar="SEC", help="text-to-image phase budget")
    p.add_argument("--controlnet-time-limit", type=float, default=None, metavar="SEC")
    p.add_argument("--joint-steps", type=int, default=None, help="joint phase steps (target); default 5000")
    p.add_argument("--joint-time-limit", type=float, default=None, metavar="SEC")
    p.add_argument("--multi-object-frac", type=float, default=None, metavar="F",
                   help="fraction of each batch from views of two or more objects (default: uniform)")
    p.add_argument("--decay-tail", type=float, default=0.3, metavar="FRAC")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--empty-prob", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-every", type=float, default=180.0)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--phase", choices=["all", "vae", "cache", "unet", "controlnet", "joint"], default="all")
    p.add_argument("--export", type=Path, default=None, metavar="DIR", help="export the run to DIR and stop")
    args = p.parse_args(argv)
    if args.steps is None and args.time_limit is None:
        args.steps = 20_000
    if args.controlnet_steps is None and args.controlnet_time_limit is None:
        args.controlnet_steps = 10_000
    if args.joint_steps is None and args.joint_time_limit is None:
        args.joint_steps = 5_000
    if args.multi_object_frac is not None and not 0.0 <= args.multi_object_frac <= 1.0:
        p.error(f"--multi-object-frac {args.multi_object_frac} must lie in [0, 1]")
    try:
        Deadline(args.time_limit, args.decay_tail)
        Deadline(args.controlnet_time_limit, args.decay_tail)
        Deadline(args.joint_time_limit, args.decay_tail)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = training_device(args.device)
    out = args.out
    if args.export is not None:
        print(json.dumps({"exported": str(export(out, args.export))}))
        return
    out.mkdir(parents=True, exist_ok=True)
    if args.vae is not None and not (out / "vae" / "config.json").exists():
        if not (args.vae / "config.json").exists():
            raise ValueError(f"--vae {args.vae} has no config.json; give a Diffusers AutoencoderKL folder")
        shutil.copytree(args.vae, out / "vae")
    if args.phase in ("all", "vae"):
        train_vae(args, out, device)
    if args.phase in ("all", "cache", "unet", "controlnet", "joint"):
        data = cache(args, out, device)
        if device.type == "cuda":
            data = {k: v.to(device) for k, v in data.items()}
        if args.phase in ("all", "unet"):
            train_unet(args, out, device, data)
        if args.phase in ("all", "controlnet"):
            train_controlnet(args, out, device, data)
        if args.phase == "joint":
            train_joint(args, out, device, data)


if __name__ == "__main__":
    main()
