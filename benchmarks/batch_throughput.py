"""Videos per minute of apps.batch_video with 1 and 2 processes (torchrun, gloo on CPU, NCCL on GPUs).

Why: the batch app scales out with data parallelism over jobs; this measures what that buys on the
machine at hand. Both runs go through the same launcher (torchrun --standalone) on the same jobs, and
the script checks that both produce byte-identical MP4s. On a 2-core CPU the ratio is bounded by the
cores (and by whatever else runs); the JSON records the load average so the number can be judged.

    OMP_NUM_THREADS=1 python benchmarks/batch_throughput.py --quick     # last line: JSON
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = ("a red circle moving right", "a blue square moving left", "a green triangle moving right",
           "a yellow circle moving left")


def run_batch(processes: int, jobs_file: Path, out: Path, model: str) -> dict:
    """One launch; returns the app's summary plus the launch's wall time (imports and model load included)."""
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(REPO)}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", str(processes), "-m", "apps.batch_video",
           str(jobs_file), "--output", str(out), "--model", model, "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:  # the app's own "error:" lines say why; else the end of its log
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        raise SystemExit(f"batch run with {processes} process(es) failed:\n"
                         + ("\n".join(errors) if errors else proc.stderr[-3000:]))
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**summary, "launch_wall_s": wall}


def digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.mp4"))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI size: 8 jobs, 5 frames, 32x32, 2 steps")
    p.add_argument("--jobs", type=int, default=24)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--size", default="64x64")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--model", default=None, help="pipeline folder or hub id (default: tiny random Wan)")
    args = p.parse_args(argv)
    if args.model is not None:
        from pipelines.video import check_model_source

        try:
            check_model_source(args.model)
        except ValueError as err:
            p.exit(2, f"error: {err}\n")
    if args.quick:
        args.jobs, args.frames, args.size, args.steps = 8, 5, "32x32", 2

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = args.model
        if model is None:
            from pipelines.video import build_tiny_wan

            model = str(root / "tiny-wan")
            build_tiny_wan().save_pretrained(model)
        jobs_file = root / "jobs.jsonl"
        rows = [{"defaults": {"frames": args.frames, "size": args.size, "steps": args.steps}}]
        rows += [{"prompt": PROMPTS[i % len(PROMPTS)]} for i in range(args.jobs)]
        jobs_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        results = {n: run_batch(n, jobs_file, root / f"out{n}", model) for n in (1, 2)}
        identical = digests(root / "out1") == digests(root / "out2")

    one, two = results[1], results[2]
    record = {
        "jobs": args.jobs, "frames": args.frames, "size": args.size, "steps": args.steps,
        "model": args.model or "tiny-wan (random weights)",
        "videos_per_minute_1proc": one["videos_per_minute"],
        "videos_per_minute_2proc": two["videos_per_minute"],
        "speedup_2proc": two["videos_per_minute"] / one["videos_per_minute"],
        "videos_per_minute_1proc_launch": 60.0 * args.jobs / one["launch_wall_s"],
        "videos_per_minute_2proc_launch": 60.0 * args.jobs / two["launch_wall_s"],
        "launch_wall_s_1proc": one["launch_wall_s"], "launch_wall_s_2proc": two["launch_wall_s"],
        "outputs_identical": identical, "cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
