"""Which conditions does a novel-view model read? Its loss with each one removed or falsified.

    python benchmarks/zero123_probe.py --model assets/shapes3d-zero123
    python benchmarks/zero123_probe.py --model DIR --scenes 8 --pairs 2     # quicker

On pairs of views of training-distribution scenes that the trainer never saw
(``worlds.shapes3d.probe``), the same noisy targets are denoised with the full conditions, with the
input latent zeroed or replaced by the target's own, with the token zeroed, with another pair's pose
and with the azimuth mirrored. Ratios above 0 say the model uses a condition:
``input_latent_use`` (zeroed input latent), ``target_latent_gain`` (how much a perfect input latent
would help), ``token_use``, ``pose_use`` (shuffled poses) and ``azimuth_use`` (mirrored azimuth),
with the ``cc_projection`` weight norms of the pose columns. ``--facing`` probes one-object scenes
from the view facing the object instead, where the sign of sin d azimuth alone says which way the
object moves. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from worlds.shapes3d.probe import PROBE_SEED, conditioning_losses  # noqa: E402
from worlds.shapes3d.zero123 import load_parts  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("assets/shapes3d-zero123"))
    p.add_argument("--scenes", type=int, default=32)
    p.add_argument("--pairs", type=int, default=4, help="view pairs per scene")
    p.add_argument("--seed", type=int, default=PROBE_SEED)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--facing", action="store_true",
                   help="one-object orbit scenes seen from the view facing the object: sin d azimuth alone "
                        "says which way it moves")
    args = p.parse_args(argv)
    if args.scenes < 1 or args.pairs < 1:
        p.error(f"--scenes {args.scenes} --pairs {args.pairs}: both must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = conditioning_losses(load_parts(args.model), args.scenes, args.pairs, args.seed,
                                 facing=args.facing)
    result.update(model=str(args.model), seconds=round(time.perf_counter() - start, 2),
                  torch=torch.__version__)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
