"""Batch video generation: sharded across processes with accelerate, resumable, nothing lost or duplicated.

A job line names a technique with its options, or gives its settings in the config JSON form the whole
toolkit shares (`config_to_json`; a list of such objects composes several techniques):
    {"prompt": "a red circle moving right", "attention": "tile_sparse", "attention_options": {"k": 2}}
    {"prompt": "a red circle moving right", "attention": {"__type__": "TileSparseConfig", "k": 2}}

Run on one process:      python -m apps.batch_video jobs.jsonl --output out/
Run on N processes:      torchrun --standalone --nproc_per_node N -m apps.batch_video jobs.jsonl --output out/
                         (or `accelerate launch --multi_gpu --num_processes N -m apps.batch_video ...`)

Why it is built this way:
- Sharding is accelerate's `PartialState.split_between_processes` over the pending jobs, each job keeping
  its global index; the seed comes from that index, so a video does not depend on the process count.
- A job is finished when its JSON sidecar says so and the MP4's size and SHA-256 match it. Both files are
  written atomically (hidden `.partial` temp, fsync, rename) and the sidecar last, so a crash leaves
  either a complete job or a job that is redone on the next run - never a half file taken for a result.
- Rank 0 holds a run lock on the output folder, decides the plan once and broadcasts it; it rewrites the
  manifest from the sidecars before work (dropping lines a crash cut short) and after, so the manifest
  has one line per finished job. During the run each finished job appends its line under a file lock.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import functools
import hashlib
import io
import json
import os
import platform
import socket
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

# job fields -> accepted JSON types (bool is excluded from numbers when checked). "attention" is a
# technique name (its options in "attention_options") or technique settings in config JSON form: an
# object {"__type__": "TileSparseConfig", ...} or a list of them (composed), as config_to_json writes.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "prompt": (str,), "negative_prompt": (str,), "seed": (int,), "frames": (int,), "height": (int,),
    "width": (int,), "size": (str, list), "steps": (int,), "guidance": (int, float),
    "attention": (str, dict, list), "attention_options": (dict,), "fps": (int, float),
}
DEFAULT_FIELDS = set(FIELD_TYPES) - {"prompt", "seed"} | {"base_seed"}
# what the shipped assets/moving-shapes-wan was trained and evaluated at (9 frames, 64x64, 20 steps)
BUILTIN_DEFAULTS: dict[str, Any] = {"negative_prompt": None, "frames": 9, "height": 64, "width": 64,
                                    "steps": 20, "guidance": 4.0, "attention": "dense",
                                    "attention_options": {}, "fps": 8, "base_seed": 0}
MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"


class JobFileError(ValueError):
    """A malformed jobs file: reported with its line number before any work starts."""


@dataclass(frozen=True)
class Job:
    index: int  # global index: position among the job lines, 0-based; names outputs and derives the seed
    line: int  # 1-based line (row) number in the jobs file, for messages
    prompt: str
    negative_prompt: str | None
    seed: int
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    attention: str | dict | list  # a technique name, or settings in config JSON form
    attention_options: dict = field(default_factory=dict)
    fps: float = 8

    @property
    def stem(self) -> str:
        return f"{self.index:05d}"

    def spec(self) -> dict[str, Any]:
        """What determines the video (no line number): compared on resume."""
        return {k: v for k, v in asdict(self).items() if k != "line"}


# ----------------------------------------------------------------------------- reading jobs


def read_jobs(path: str | os.PathLike, cli_defaults: dict[str, Any] | None = None) -> list[Job]:
    """Parse a JSONL or CSV jobs file; raise JobFileError "FILE:LINE: reason" for the first bad line.

    JSONL: one JSON object per line; blank lines and lines starting with '#' are ignored; an optional
    first object `{"defaults": {...}}` sets defaults for every job. CSV: a header row naming job fields,
    empty cells unset, `attention_options` (and `attention` in config JSON form) as JSON text.
    Precedence: job > CLI flag > file defaults > built-in defaults. Structure and types are checked
    here, and settings in config JSON form are built (so a misspelt type or field stops the run before
    any work); values the model or a named technique rejects (e.g. frames=6 for Wan) fail that job
    alone at run time.
    """
    path = Path(path)
    if not path.is_file():
        raise JobFileError(f"{path}: no such jobs file")
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    file_defaults: dict[str, Any] = {}
    jobs: list[Job] = []
    for line_no, row in rows:
        where = f"{path}:{line_no}"
        if "defaults" in row:
            if jobs or file_defaults or set(row) != {"defaults"} or not isinstance(row["defaults"], dict):
                raise JobFileError(f"{where}: a defaults object must be the first entry, alone: "
                                   '{"defaults": {"frames": 9, ...}}')
            file_defaults = _check_fields(row["defaults"], DEFAULT_FIELDS, where + " (defaults)")
            continue
        fields = _check_fields(row, set(FIELD_TYPES), where)
        if "prompt" not in fields or not fields["prompt"].strip():
            raise JobFileError(f"{where}: every job needs a non-empty \"prompt\"")
        merged = {**BUILTIN_DEFAULTS, **file_defaults, **(cli_defaults or {}), **fields}
        if not isinstance(merged["attention"], str):
            _check_config_form(merged["attention"], merged["attention_options"], where)
        jobs.append(_make_job(len(jobs), line_no, merged))
    if not jobs:
        raise JobFileError(f"{path}: no jobs found")
    return jobs


def _check_config_form(attention: dict | list, options: dict, where: str) -> None:
    """Build the configs of settings in config JSON form; JobFileError naming the line otherwise."""
    from pipelines.video import attention_configs

    if options:
        raise JobFileError(f"{where}: \"attention\" holds configs in JSON form, so their options go inside "
                           f"them, not in \"attention_options\" (got {json.dumps(options)})")
    try:
        attention_configs(attention)
    except ValueError as err:
        raise JobFileError(f"{where}: {err}") from err


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; a JobFileError naming the file, line and byte otherwise."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise JobFileError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                           f"{err.start}); jobs files are UTF-8 JSONL or CSV") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    for line_no, text in enumerate(io.StringIO(_read_text(path)), start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            reason = f"not valid JSON ({err.msg} at column {err.colno})"
            raise JobFileError(f"{path}:{line_no}: {reason}") from err
        if not isinstance(row, dict):
            raise JobFileError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        yield line_no, row


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    unknown = set(reader.fieldnames or []) - set(FIELD_TYPES)
    if not reader.fieldnames or unknown:
        raise JobFileError(f"{path}:1: the CSV header must name job fields {sorted(FIELD_TYPES)}"
                           f"{f' (unknown: {sorted(unknown)})' if unknown else ''}")
    for row in reader:
        line_no = reader.line_num
        if None in row:
            raise JobFileError(f"{path}:{line_no}: more cells than header columns")
        yield line_no, {k: _csv_value(k, v, path, line_no) for k, v in row.items() if v not in ("", None)}


def _csv_value(key: str, text: str, path: Path, line_no: int) -> Any:
    json_cell = key == "attention_options" or (key == "attention" and text.lstrip()[:1] in ("{", "["))
    try:
        if json_cell:
            return json.loads(text)
        if key in ("guidance", "fps"):
            return float(text)
        if FIELD_TYPES[key] == (int,):
            return int(text)
    except ValueError as err:
        raise JobFileError(f"{path}:{line_no}: column {key!r} has {text!r}, not "
                           f"{'valid JSON' if json_cell else 'a number'}") from err
    return text


def _check_fields(row: dict, allowed: set[str], where: str) -> dict[str, Any]:
    unknown = set(row) - allowed
    if unknown:
        raise JobFileError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    for key, value in row.items():
        types = FIELD_TYPES.get(key, (int,))  # base_seed is an int
        if value is None and key == "negative_prompt":
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise JobFileError(f"{where}: field {key!r} must be {names}, got {json.dumps(value)}")
    row = dict(row)
    if "size" in row:  # normalised here so precedence between levels works field by field
        if {"width", "height"} & set(row):
            raise JobFileError(f"{where}: give either \"size\" or \"width\"/\"height\", not both")
        row["width"], row["height"] = _parse_size(row.pop("size"), where)
    return row


def _make_job(index: int, line_no: int, values: dict[str, Any]) -> Job:
    seed = values["seed"] if "seed" in values else values["base_seed"] + index
    return Job(index=index, line=line_no, prompt=values["prompt"], negative_prompt=values["negative_prompt"],
               seed=int(seed), frames=values["frames"], height=values["height"], width=values["width"],
               steps=values["steps"], guidance=float(values["guidance"]), attention=values["attention"],
               attention_options=dict(values["attention_options"]), fps=values["fps"])


def _parse_size(size: Any, where: str) -> tuple[int, int]:
    """'WxH' or [W, H] -> (width, height)."""
    parts = size.lower().split("x") if isinstance(size, str) else size
    try:
        if any(isinstance(p, (bool, float)) for p in parts):
            raise TypeError("sizes are whole numbers")
        width, height = (int(p) for p in parts)
    except (TypeError, ValueError) as err:
        raise JobFileError(f"{where}: size must be 'WIDTHxHEIGHT' or [width, height], got {size!r}") from err
    return width, height


# ----------------------------------------------------------------------------- output folder state


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    from pipelines.video import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n"))


def read_sidecar(out: Path, job: Job) -> dict | None:
    try:
        return json.loads((out / f"{job.stem}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def job_status(out: Path, job: Job, model_name: str, verify: str) -> str:
    """'done' | 'failed' | 'pending' | 'conflict' for one job, from its sidecar and MP4."""
    side = read_sidecar(out, job)
    if side is None:
        return "pending"
    if side.get("job") != job.spec() or side.get("model", {}).get("name") != model_name:
        return "conflict"
    if side.get("status") == "failed":
        return "failed"
    video = out / f"{job.stem}.mp4"
    if side.get("status") != "done" or not video.is_file() or video.stat().st_size != side.get("bytes"):
        return "pending"
    if sha256_file(video) != side.get("sha256"):
        return "pending"
    if verify == "decode":
        from pipelines.video import read_mp4

        try:
            frames = read_mp4(video)
        except Exception:  # any decoder error means the file is not a usable result
            return "pending"
        if frames.shape != (job.frames, job.height, job.width, 3):
            return "pending"
    return "done"


def manifest_line(side: dict) -> dict[str, Any]:
    keys = ("index", "status", "video", "sha256", "seed", "rank", "error")
    line = {k: side.get(k) for k in keys}
    line["prompt"] = side["job"]["prompt"]
    line["sidecar"] = f"{side['index']:05d}.json"
    line["total_s"] = side.get("timings", {}).get("total_s")
    return line


def rewrite_manifest(out: Path, jobs: Sequence[Job], statuses: dict[int, str]) -> None:
    """Manifest = one line per settled job (done or failed), from the sidecars, in index order."""
    lines = []
    for job in jobs:
        if statuses.get(job.index) in ("done", "failed"):
            side = read_sidecar(out, job)
            if side is not None:
                lines.append(json.dumps(manifest_line(side), sort_keys=True))
    from pipelines.video import atomic_write

    atomic_write(out / MANIFEST, lambda tmp: tmp.write_text("".join(s + "\n" for s in lines)))


def append_manifest(out: Path, side: dict) -> None:
    with open(out / MANIFEST, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # ranks append concurrently; one whole line each
        f.write(json.dumps(manifest_line(side), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
        fcntl.flock(f, fcntl.LOCK_UN)


def remove_partials(out: Path) -> int:
    """Temp files of an interrupted run (`.NAME.*.partial`); only rank 0 calls this, under the run lock."""
    stale = list(out.glob(".*.partial"))
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


# ----------------------------------------------------------------------------- plan (rank 0)


@dataclass
class Plan:
    jobs: list[Job]
    statuses: dict[int, str]  # index -> done | failed | pending, before this run
    pending: list[Job]  # what this run generates, in global-index order
    error: str | None = None


def make_plan(args: argparse.Namespace, jobs: list[Job], model_name: str) -> Plan:
    """Status of every job from the output folder; what this run must generate."""
    out = Path(args.output)
    exists = out.is_dir()
    statuses = {j.index: job_status(out, j, model_name, args.verify) if exists else "pending" for j in jobs}
    conflicts = [j.index for j in jobs if statuses[j.index] == "conflict"]
    if conflicts:
        raise ValueError(f"{out} holds results of other jobs or another model at indices {conflicts[:10]} "
                         "(the jobs file or --model changed); use a fresh --output folder.")
    redo = {"pending", "failed"} if args.retry_failed else {"pending"}
    return Plan(jobs=jobs, statuses=statuses, pending=[j for j in jobs if statuses[j.index] in redo])


def cli_defaults(args: argparse.Namespace) -> dict[str, Any]:
    values = {"negative_prompt": args.negative_prompt, "frames": args.frames, "steps": args.steps,
              "guidance": args.guidance, "attention": args.attention, "fps": args.fps,
              "base_seed": args.base_seed}
    if args.size is not None:
        values["width"], values["height"] = _parse_size(args.size, "--size")
    if args.attention is not None and args.attention.lstrip()[:1] in ("{", "["):  # config JSON form
        try:
            values["attention"] = json.loads(args.attention)
        except json.JSONDecodeError as err:
            raise JobFileError(f"--attention is not valid JSON: {err.msg} at column {err.colno}") from err
    if args.attention_options is not None:
        try:
            values["attention_options"] = json.loads(args.attention_options)
        except json.JSONDecodeError as err:
            raise JobFileError(f"--attention-options is not valid JSON: {err.msg}") from err
        if not isinstance(values["attention_options"], dict):
            raise JobFileError("--attention-options must be a JSON object, e.g. '{\"k\": 2}'")
    return {k: v for k, v in values.items() if v is not None}


# ----------------------------------------------------------------------------- running jobs (every rank)


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    import accelerate
    import diffusers
    import imageio_ffmpeg
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "accelerate": accelerate.__version__,
            "ffmpeg": imageio_ffmpeg.get_ffmpeg_version(), "torch_threads": str(torch.get_num_threads())}


def run_job(model: Any, job: Job, out: Path, *, rank: int, world: int, quality: str,
            steps_bar: dict | bool) -> dict:
    """Generate, encode and commit one job; any exception makes a 'failed' sidecar instead (isolation)."""
    from pipelines.video import generate_video, write_mp4

    video = out / f"{job.stem}.mp4"
    (out / f"{job.stem}.json").unlink(missing_ok=True)  # redoing it: "pending" until the new sidecar lands
    side: dict[str, Any] = {"index": job.index, "job": job.spec(), "seed": job.seed,
                            "model": model.describe(),
                            "attention": {"technique": job.attention, "options": job.attention_options},
                            "rank": rank, "world_size": world, "host": socket.gethostname(),
                            "versions": versions(), "quality": quality}
    start = time.perf_counter()
    try:
        result = generate_video(model.pipe, job.prompt, negative_prompt=job.negative_prompt,
                                num_frames=job.frames, height=job.height, width=job.width,
                                num_inference_steps=job.steps, guidance_scale=job.guidance, seed=job.seed,
                                attention=job.attention, attention_options=job.attention_options,
                                progress=steps_bar)
        encode_start = time.perf_counter()
        write_mp4(result.frames, video, fps=job.fps, quality=quality)
        timings = {**result.timings, "encode_s": time.perf_counter() - encode_start}
        side.update(status="done", video=video.name, bytes=video.stat().st_size, sha256=sha256_file(video),
                    frames_sha256=hashlib.sha256(result.frames.tobytes()).hexdigest(),
                    shape=list(result.frames.shape), timings=timings, error=None)
    except Exception as err:  # a bad job (invalid option, out of memory, ...) must not stop the batch
        _free_cuda_memory()
        video.unlink(missing_ok=True)
        side.update(status="failed", video=None, error=f"{type(err).__name__}: {err}",
                    traceback=traceback.format_exc(limit=8), timings={})
    side["timings"]["total_s"] = time.perf_counter() - start
    side["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(out / f"{job.stem}.json", side)  # commit point: the job is now settled
    append_manifest(out, side)
    return side


def _free_cuda_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="attn-processors-batch", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jobs", help="JSONL (a job object per line, optional first {\"defaults\": {...}}) or CSV")
    p.add_argument("--output", "-o", required=True, help="output folder (MP4 + JSON sidecar per job)")
    p.add_argument("--model", default=None, help="Wan/CogVideoX pipeline folder or hub id "
                   "(default: assets/moving-shapes-wan, else a tiny random-weights Wan, labelled as such)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    g = p.add_argument_group("job defaults (a job's own fields win; these win over the file's defaults)")
    g.add_argument("--frames", type=int)
    g.add_argument("--size", help="WIDTHxHEIGHT, e.g. 832x480")
    g.add_argument("--steps", type=int)
    g.add_argument("--guidance", type=float)
    g.add_argument("--negative-prompt")
    g.add_argument("--attention", help="dense | tile_sparse | sage | tile_sparse+sage, or technique settings "
                   "in config JSON form: '{\"__type__\": \"TileSparseConfig\", \"k\": 2}' or a list of them")
    g.add_argument("--attention-options", help="JSON object of the technique's options")
    g.add_argument("--fps", type=float)
    g.add_argument("--base-seed", type=int, help="seed of job i is base_seed + i unless the job sets seed")
    p.add_argument("--quality", choices=("standard", "lossless"), default="standard",
                   help="standard: H.264 yuv420p CRF 18 (plays everywhere); lossless: H.264 RGB QP 0")
    p.add_argument("--retry-failed", action="store_true", help="rerun jobs recorded as failed")
    p.add_argument("--verify", choices=("hash", "decode"), default="hash",
                   help="resume check of finished outputs: size + SHA-256, or also decode every frame")
    p.add_argument("--dry-run", action="store_true", help="print which rank does which jobs, then exit")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    p.add_argument("--timeout-hours", type=float, default=24.0,
                   help="collective timeout: ranks wait this long for the slowest one at the end")
    return p.parse_args(argv)


def _log(rank: int, msg: str) -> None:
    print(f"[rank {rank}] {msg}", file=sys.stderr, flush=True)


def _model_name(args: argparse.Namespace) -> str:
    from pipelines.video import DEFAULT_MODEL_DIR, TINY_RANDOM_NAME

    if args.model is not None:  # a local folder by its absolute path, so resuming from elsewhere matches
        return str(Path(args.model).resolve()) if Path(args.model).exists() else str(args.model)
    return str(DEFAULT_MODEL_DIR) if (DEFAULT_MODEL_DIR / "model_index.json").is_file() else TINY_RANDOM_NAME


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m apps.batch_video` and `attn-processors-batch`; returns the exit code."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object

    args = parse_args(argv)
    # cpu=True is required on CPU-only machines: without it torchrun ranks each see world=1 and all
    # render every job
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=args.timeout_hours))
    out = Path(args.output)
    with contextlib.ExitStack() as held:  # rank 0's run lock, released when the run ends
        plan = _prepare(args, out, held) if state.is_main_process else None
        plan = broadcast_object_list([plan], from_process=0)[0]  # one plan, decided once
        if plan.error:
            if state.is_main_process:
                print(f"error: {plan.error}", file=sys.stderr)
            return 2
        with state.split_between_processes(plan.pending) as mine:  # contiguous shards by global index
            mine = list(mine)
        if args.dry_run:
            return _print_plan(state, plan, mine, gather_object)
        stats = _run_shard(args, state, mine, out)
        all_stats = gather_object([stats])  # also a barrier: every rank has finished its shard
        load_errors = sorted({s["load_error"] for s in all_stats if "load_error" in s})
        if state.is_main_process:
            if load_errors:
                print(f"error: {'; '.join(load_errors)}", file=sys.stderr, flush=True)
            else:
                print(json.dumps(_summarize(args, plan, all_stats, out), sort_keys=True), flush=True)
        state.wait_for_everyone()  # nobody exits (and makes a launcher stop the others) before the summary
    if load_errors:
        return 2
    return 1 if sum(s["failed"] for s in all_stats) else 0


def _prepare(args: argparse.Namespace, out: Path, held: contextlib.ExitStack) -> Plan:
    """Rank 0: read the jobs, lock the folder, plan, clean up after a crash; errors become plan.error."""
    try:
        if args.model is not None:
            from pipelines.video import check_model_source

            check_model_source(args.model)  # a missing folder stops here (a hub id is checked on load)
        jobs = read_jobs(args.jobs, cli_defaults(args))  # a malformed line stops here, nothing written
        if args.dry_run:
            return make_plan(args, jobs, _model_name(args))
        held.enter_context(run_lock(out))
        plan = make_plan(args, jobs, _model_name(args))
        removed = remove_partials(out)
        if removed:
            _log(0, f"removed {removed} partial file(s) left by an interrupted run")
        redo = {j.index for j in plan.pending}  # their lines are appended when they finish
        rewrite_manifest(out, plan.jobs, {i: s for i, s in plan.statuses.items() if i not in redo})
        return plan
    except (ValueError, OSError) as err:  # bad input, conflicting or busy folder: stop before any work
        return Plan(jobs=[], statuses={}, pending=[], error=str(err))


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """One run per output folder: an exclusive, non-blocking flock held by rank 0."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".run.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise ValueError(f"another batch run is using {out}; wait or use another --output") from err
        yield


def _run_shard(args: argparse.Namespace, state: Any, mine: list[Job], out: Path) -> dict[str, Any]:
    import torch
    from tqdm.auto import tqdm

    from pipelines.video import load_video_pipeline

    rank, world, local = state.process_index, state.num_processes, state.local_process_index
    stats: dict[str, Any] = {"rank": rank, "done": 0, "failed": 0, "load_s": 0.0, "work_s": 0.0, "errors": []}
    if not mine:
        return stats
    start = time.perf_counter()
    auto = torch.bfloat16 if state.device.type == "cuda" else torch.float32
    dtype = {"auto": auto, "float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}[args.dtype]
    name = _model_name(args) if args.model else None
    try:
        model = load_video_pipeline(name, device=state.device, dtype=dtype)
    except ValueError as err:  # e.g. a hub id that does not exist: no job can run on this rank
        stats["load_error"] = str(err)
        return stats
    stats["load_s"] = time.perf_counter() - start
    steps_bar: dict | bool = (False if args.no_progress else
                              {"position": 2 * local + 1, "desc": f"rank {rank} steps", "leave": False})
    work_start = time.perf_counter()
    bar = tqdm(mine, desc=f"rank {rank}/{world} jobs", position=2 * local, disable=args.no_progress)
    for job in bar:
        side = run_job(model, job, out, rank=rank, world=world, quality=args.quality, steps_bar=steps_bar)
        if side["status"] == "done":
            stats["done"] += 1
        else:
            stats["failed"] += 1
            stats["errors"].append({"index": job.index, "line": job.line, "error": side["error"]})
            _log(rank, f"job {job.index} (line {job.line}) failed: {side['error']}")
    bar.close()
    stats["work_s"] = time.perf_counter() - work_start
    return stats


def _print_plan(state: Any, plan: Plan, mine: list[Job], gather_object: Any) -> int:
    shards = gather_object([(state.process_index, [j.index for j in mine])])
    if state.is_main_process:
        counts = {s: sum(1 for v in plan.statuses.values() if v == s) for s in ("done", "failed", "pending")}
        world = state.num_processes
        print(f"{len(plan.jobs)} jobs {counts}; {len(plan.pending)} to run on {world} process(es)")
        for rank, indices in sorted(shards):
            print(f"rank {rank}: {len(indices)} job(s) {indices}")
    return 0


def _summarize(args: argparse.Namespace, plan: Plan, all_stats: list[dict], out: Path) -> dict[str, Any]:
    final = {j.index: job_status(out, j, _model_name(args), "hash") for j in plan.jobs}
    rewrite_manifest(out, plan.jobs, final)
    done = sum(s["done"] for s in all_stats)
    work_s = max((s["work_s"] for s in all_stats), default=0.0)
    wall_s = max((s["work_s"] + s["load_s"] for s in all_stats), default=0.0)
    summary = {
        "jobs": len(plan.jobs), "done": done, "failed": sum(s["failed"] for s in all_stats),
        "skipped": len(plan.jobs) - len(plan.pending),
        "skipped_failed": sum(1 for j in plan.jobs if plan.statuses[j.index] == "failed"
                              and not args.retry_failed),
        "complete": sum(1 for v in final.values() if v == "done"), "processes": len(all_stats),
        "videos_per_minute": 60.0 * done / work_s if work_s > 0 else None,
        "videos_per_minute_with_load": 60.0 * done / wall_s if wall_s > 0 else None,
        "work_s": work_s, "model_load_s": max((s["load_s"] for s in all_stats), default=0.0),
        "errors": sorted((e for s in all_stats for e in s["errors"]), key=lambda e: e["index"]),
    }
    write_json_atomic(out / SUMMARY, summary)
    return summary


if __name__ == "__main__":
    sys.exit(main())
