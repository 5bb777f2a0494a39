"""apps/batch_video.py: job files, failure isolation, resume, and 1-vs-2-process equality (torchrun, gloo)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from apps.batch_video import Job, JobFileError, cli_defaults, main, parse_args, read_jobs
from pipelines.video import build_tiny_wan, read_mp4

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
DEFAULTS = {"defaults": {"frames": 5, "size": "32x32", "steps": 2, "guidance": 3.0}}
PROMPTS = ["a red circle moving right", "a blue square moving left", "a green triangle", "a yellow circle",
           "a red square", "a blue triangle moving right", "a green circle moving left", "a yellow square"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# ----------------------------------------------------------------------------- job files (no model)


def test_defaults_cli_and_job_fields_merge_in_order(tmp_path):
    jobs_file = write_jsonl(tmp_path / "jobs.jsonl", [
        {"defaults": {"frames": 9, "size": "64x48", "steps": 3, "base_seed": 100}},
        {"prompt": "a red circle"},
        "# comments and blank lines are skipped",
        "",
        {"prompt": "a blue square", "seed": 7, "width": 32, "attention": "tile_sparse",
         "attention_options": {"k": 2}},
    ])
    jobs = read_jobs(jobs_file, {"steps": 5, "guidance": 2.5})
    assert [j.line for j in jobs] == [2, 5] and [j.index for j in jobs] == [0, 1]
    first, second = jobs
    assert (first.frames, first.width, first.height, first.steps, first.guidance) == (9, 64, 48, 5, 2.5)
    assert first.seed == 100  # base_seed + global index
    assert (second.seed, second.width, second.height) == (7, 32, 48)  # job width over the defaults' size
    assert second.attention == "tile_sparse" and second.attention_options == {"k": 2}


def test_csv_jobs(tmp_path):
    path = tmp_path / "jobs.csv"
    path.write_text('prompt,seed,frames,size,guidance,attention_options\n'
                    '"a red circle, moving",,5,32x32,4.5,\n'
                    'a blue square,3,9,,,"{""k"": 1}"\n')
    a, b = read_jobs(path)
    assert (a.prompt, a.seed, a.frames, a.width, a.guidance) == ("a red circle, moving", 0, 5, 32, 4.5)
    assert (b.seed, b.frames, b.width, b.attention_options) == (3, 9, 64, {"k": 1})
    path.write_text("prompt,frames\na cat,five\n")
    with pytest.raises(JobFileError, match=r"jobs.csv:2: column 'frames' has 'five'"):
        read_jobs(path)


@pytest.mark.parametrize("bad, message", [
    ('{"prompt": "a cat", ', "not valid JSON"),
    ('["a cat"]', "expected a JSON object"),
    ('{"promt": "a cat"}', r"unknown field\(s\) \['promt'\]"),
    ('{"seed": 3}', "needs a non-empty \"prompt\""),
    ('{"prompt": "a cat", "frames": "9"}', "field 'frames' must be int"),
    ('{"prompt": "a cat", "steps": true}', "field 'steps' must be int"),
    ('{"prompt": "a cat", "size": "32 by 32"}', "size must be 'WIDTHxHEIGHT'"),
    ('{"prompt": "a cat", "size": "32x32", "width": 32}', "either \"size\" or"),
    ('{"defaults": {"frames": 5}}', "defaults object must be the first entry"),
])
def test_malformed_line_reports_its_line_number(tmp_path, bad, message):
    jobs_file = write_jsonl(tmp_path / "jobs.jsonl", [DEFAULTS, {"prompt": "a red circle"}, bad])
    with pytest.raises(JobFileError, match=f"jobs.jsonl:3: .*{message}"):
        read_jobs(jobs_file)


def test_malformed_file_stops_before_any_work(tmp_path, capsys):
    jobs_file = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": "a red circle"}, '{"prompt": 5}'])
    assert main([str(jobs_file), "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "jobs.jsonl:2: field 'prompt' must be str" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    jobs_file = write_jsonl(tmp_path / "jobs.jsonl", [DEFAULTS] + [{"prompt": p} for p in PROMPTS[:3]])
    assert main([str(jobs_file), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "3 to run on 1 process(es)" in printed and "rank 0: 3 job(s) [0, 1, 2]" in printed
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- runs (tiny model)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny-wan"
    build_tiny_wan().save_pretrained(path)
    return path


def run(jobs_file: Path, out: Path, model_dir: Path, *extra: str) -> int:
    return main([str(jobs_file), "--output", str(out), "--model", str(model_dir), "--no-progress", *extra])


def test_bad_job_fails_alone_and_resume_skips_finished(tmp_path, model_dir):
    jobs_file = write_jsonl(tmp_path / "jobs.jsonl", [
        DEFAULTS, {"prompt": PROMPTS[0]}, {"prompt": "frames not 4k+1", "frames": 6},
        {"prompt": PROMPTS[1], "size": [48, 32], "frames": 9},
        {"prompt": "no such kernel", "attention": "flash"},
        {"prompt": PROMPTS[2], "negative_prompt": "blurry"},
        {"prompt": "misspelt option", "attention": "tile_sparse", "attention_options": {"kk": 1}}])
    out = tmp_path / "out"
    assert run(jobs_file, out, model_dir) == 1  # some jobs failed -> exit code 1, the batch still finished
    s = summary(out)
    assert (s["jobs"], s["done"], s["failed"], s["skipped"]) == (6, 3, 3, 0)
    assert [e["line"] for e in s["errors"]] == [3, 5, 7]
    assert "4k+1" in s["errors"][0]["error"] and "attention must be one of" in s["errors"][1]["error"]
    assert "tile_sparse" in s["errors"][2]["error"]  # unknown option, or the technique not installed
    for index, shape in [(0, (5, 32, 32, 3)), (2, (9, 32, 48, 3)), (4, (5, 32, 32, 3))]:
        assert read_mp4(out / f"{index:05d}.mp4").shape == shape  # requested frames and size
        side = json.loads((out / f"{index:05d}.json").read_text())
        assert side["status"] == "done" and side["model"]["random_weights"] is False
        assert side["sha256"] == sha(out / f"{index:05d}.mp4")
    assert not (out / "00001.mp4").exists()
    assert json.loads((out / "00001.json").read_text())["status"] == "failed"
    lines = manifest(out)
    assert sorted(r["index"] for r in lines) == [0, 1, 2, 3, 4, 5]
    statuses = [r["status"] for r in sorted(lines, key=lambda r: r["index"])]
    assert statuses == ["done", "failed", "done", "failed", "done", "failed"]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}

    assert run(jobs_file, out, model_dir) == 0  # resume: nothing to do, failed jobs not retried
    s = summary(out)
    assert (s["done"], s["failed"], s["skipped"], s["skipped_failed"]) == (0, 0, 6, 3)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == before
    assert len(manifest(out)) == 6

    assert run(jobs_file, out, model_dir, "--retry-failed") == 1  # retried, fail again, still one line each
    s = summary(out)
    assert (s["done"], s["failed"], s["skipped"]) == (0, 3, 3)
    assert sorted(r["index"] for r in manifest(out)) == [0, 1, 2, 3, 4, 5]


def test_technique_jobs_record_their_config(tmp_path, model_dir):
    options = {"k": 1, "dense_blocks": [], "dense_steps": 0.0}
    both = {"tile_sparse": options, "sage": {"backend": "simulate", "min_kv_len": 0}}
    as_json = {"__type__": "TileSparseConfig", **options}  # what config_to_json writes, defaults omitted
    jobs_file = write_jsonl(tmp_path / "jobs.jsonl", [
        DEFAULTS, {"prompt": PROMPTS[0]}, {"prompt": PROMPTS[0], "attention": "tile_sparse",
                                           "attention_options": options},
        {"prompt": PROMPTS[0], "attention": "tile_sparse+sage", "attention_options": both},
        {"prompt": PROMPTS[0], "attention": as_json, "seed": 6},
        {"prompt": PROMPTS[0], "attention": [as_json], "seed": 6}])
    out = tmp_path / "out"
    assert run(jobs_file, out, model_dir, "--base-seed", "5", "--quality", "lossless") == 0
    dense, sparse, composed, one, listed = (json.loads((out / f"{i:05d}.json").read_text()) for i in range(5))
    assert sparse["attention"] == {"technique": "tile_sparse", "options": options}
    assert composed["attention"] == {"technique": "tile_sparse+sage", "options": both}
    assert one["attention"] == {"technique": as_json, "options": {}}
    assert listed["attention"] == {"technique": [as_json], "options": {}}
    assert (dense["seed"], sparse["seed"], composed["seed"]) == (5, 6, 7)
    assert all(read_mp4(out / f"{i:05d}.mp4").shape == (5, 32, 32, 3) for i in range(5))
    # the JSON form builds the same config as the name + options form: the same video
    assert sparse["frames_sha256"] == one["frames_sha256"] == listed["frames_sha256"]
    assert run(jobs_file, out, model_dir, "--base-seed", "5", "--quality", "lossless") == 0
    assert summary(out)["skipped"] == 5  # resume recognises config-form jobs by their sidecars


def test_config_json_form_in_job_file_csv_and_cli(tmp_path):
    from attn_processors.core.registry import config_to_json
    from attn_processors.sage import SageConfig
    from attn_processors.tile_sparse import TileSparseConfig

    config = TileSparseConfig(k=2, kernel=SageConfig(backend="simulate"))
    text = config_to_json(config)  # the full form, every field written
    row = {"prompt": "a red circle", "attention": json.loads(text)}
    jobs_file = write_jsonl(tmp_path / "jobs.jsonl", [row])
    (job,) = read_jobs(jobs_file)
    assert job.attention == json.loads(text) and job.attention_options == {}
    path = tmp_path / "jobs.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["prompt", "attention"], ["a red circle", text]])
    (job,) = read_jobs(path)
    assert job.attention == json.loads(text)
    (job,) = read_jobs(write_jsonl(tmp_path / "plain.jsonl", [{"prompt": "a red circle"}]),
                       cli_defaults(parse_args(["plain.jsonl", "-o", "out", "--attention", f"[{text}]"])))
    assert job.attention == [json.loads(text)]


@pytest.mark.parametrize("row, message", [
    ({"attention": {"__type__": "TileSparseConfg"}}, "unknown config type 'TileSparseConfg' in JSON; known "),
    ({"attention": {"__type__": "TileSparseConfig", "kk": 1}}, r"TileSparseConfig has no field\(s\) \['kk'"),
    ({"attention": {"k": 1}}, r'technique settings .* objects with a "__type__" naming the config type'),
    ({"attention": {"__type__": "TileSparseConfig"}, "attention_options": {"k": 1}},
     r'"attention" holds configs in JSON form, so their options go inside them'),
    ({"attention": 3}, r"field 'attention' must be str or dict or list, got 3"),
])
def test_bad_config_json_form_stops_at_its_line(tmp_path, row, message):
    jobs_file = write_jsonl(tmp_path / "jobs.jsonl", [DEFAULTS, {"prompt": "a red circle"},
                                                      {"prompt": "a cat", **row}])
    with pytest.raises(JobFileError, match=f"jobs.jsonl:3: {message}"):
        read_jobs(jobs_file)


def test_cli_attention_json_must_parse(tmp_path):
    args = parse_args(["jobs.jsonl", "-o", "out", "--attention", '{"__type__": "SageConfig",'])
    with pytest.raises(JobFileError, match="--attention is not valid JSON"):
        cli_defaults(args)


def test_binary_jobs_file_is_named_in_the_error(tmp_path, capsys):
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b'{"prompt": "a red circle"}\n\xeb\x9f\x00\x01binary')
    with pytest.raises(JobFileError, match=r"jobs.jsonl:2: not UTF-8 text \(byte 0xeb at offset 27\)"):
        read_jobs(path)
    assert main([str(path), "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}:2: not UTF-8 text" in err and "Traceback" not in err


def test_missing_model_is_one_error_before_any_work(tmp_path, capsys):
    jobs_file = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": "a red circle"}])
    missing = tmp_path / "no-such-model"
    assert main([str(jobs_file), "--output", str(tmp_path / "out"), "--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: model '{missing}': no such folder; pass a folder written by "
                           "pipe.save_pretrained() or a hub id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers.")
    assert not (tmp_path / "out").exists()


def test_resume_redoes_corrupt_or_unfinished_outputs(tmp_path, model_dir):
    jobs_file = write_jsonl(tmp_path / "jobs.jsonl", [DEFAULTS] + [{"prompt": p} for p in PROMPTS[:3]])
    out = tmp_path / "out"
    assert run(jobs_file, out, model_dir) == 0
    hashes = {p.name: sha(p) for p in out.glob("*.mp4")}
    (out / "00000.mp4").write_bytes((out / "00000.mp4").read_bytes()[:500])  # truncated video
    (out / "00001.json").unlink()  # crash after the video's rename, before the sidecar's
    (out / ".00002.mp4.x1y2.partial").write_bytes(b"half a video")  # temp file of a killed run
    (out / "manifest.jsonl").write_text((out / "manifest.jsonl").read_text()[:-20])  # cut mid-line

    assert run(jobs_file, out, model_dir, "--verify", "decode") == 0
    s = summary(out)
    assert (s["done"], s["skipped"], s["complete"]) == (2, 1, 3)
    assert {p.name: sha(p) for p in out.glob("*.mp4")} == hashes  # regenerated bit-identically
    assert not list(out.glob("*.partial"))
    assert sorted(r["index"] for r in manifest(out)) == [0, 1, 2]


def test_changed_jobs_file_does_not_overwrite_results(tmp_path, model_dir, capsys):
    jobs_file = write_jsonl(tmp_path / "jobs.jsonl", [DEFAULTS, {"prompt": PROMPTS[0]}])
    out = tmp_path / "out"
    assert run(jobs_file, out, model_dir) == 0
    write_jsonl(jobs_file, [DEFAULTS, {"prompt": PROMPTS[1]}])
    assert run(jobs_file, out, model_dir) == 2
    assert "use a fresh --output folder" in capsys.readouterr().err
    assert json.loads((out / "00000.json").read_text())["job"]["prompt"] == PROMPTS[0]


def test_busy_output_folder_is_refused(tmp_path, capsys):
    import fcntl

    jobs_file = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": PROMPTS[0]}])
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / ".run.lock", "w") as other_run:
        fcntl.flock(other_run, fcntl.LOCK_EX)
        assert main([str(jobs_file), "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "another batch run is using" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".run.lock"]


# ----------------------------------------------------------------------------- several processes


@pytest.fixture(scope="module")
def shared_jobs(tmp_path_factory, model_dir) -> tuple[Path, Path]:
    """Eight jobs and their 1-process reference outputs (this process: world size 1)."""
    root = tmp_path_factory.mktemp("batch")
    jobs_file = write_jsonl(root / "jobs.jsonl", [DEFAULTS] + [{"prompt": p} for p in PROMPTS])
    assert run(jobs_file, root / "reference", model_dir) == 0
    return jobs_file, root / "reference"


def torchrun(jobs_file: Path, out: Path, model_dir: Path, *extra: str) -> subprocess.Popen:
    """2 CPU processes with gloo; one intra-op thread each, like this process, so results can match."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(REPO)}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "apps.batch_video", str(jobs_file),
           "--output", str(out), "--model", str(model_dir), *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, so a test can signal it


def assert_same_outputs(out: Path, reference: Path, count: int) -> None:
    for i in range(count):
        a, b = out / f"{i:05d}.mp4", reference / f"{i:05d}.mp4"
        assert sha(a) == sha(b), f"job {i}: MP4 bytes differ"
        assert np.array_equal(read_mp4(a), read_mp4(b)), f"job {i}: decoded frames differ"
        side_a, side_b = (json.loads(p.with_suffix(".json").read_text()) for p in (a, b))
        assert side_a["frames_sha256"] == side_b["frames_sha256"]
    assert sorted(r["index"] for r in manifest(out)) == list(range(count))  # one line per job


def test_two_processes_write_the_same_files_as_one(tmp_path, shared_jobs, model_dir):
    jobs_file, reference = shared_jobs
    proc = torchrun(jobs_file, tmp_path / "out", model_dir)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    out = tmp_path / "out"
    assert_same_outputs(out, reference, len(PROMPTS))
    ranks = [json.loads((out / f"{i:05d}.json").read_text())["rank"] for i in range(len(PROMPTS))]
    assert ranks == [0, 0, 0, 0, 1, 1, 1, 1]  # accelerate's contiguous split by global index
    s = json.loads(stdout.strip().splitlines()[-1])
    assert (s["processes"], s["done"], s["failed"]) == (2, len(PROMPTS), 0)
    assert "rank 1/2 jobs" in stderr  # per-rank tqdm bars


def test_killed_run_resumes_to_exactly_one_output_per_job(tmp_path, shared_jobs, model_dir):
    jobs_file, reference = shared_jobs
    out = tmp_path / "out"
    proc = torchrun(jobs_file, out, model_dir, "--no-progress")
    deadline = time.monotonic() + 300
    while not ((out / "manifest.jsonl").exists() and (out / "manifest.jsonl").read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            pytest.fail(f"the run ended or stalled before any job finished:\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # like Ctrl-C / a scheduler: torchrun passes it to both workers
    proc.communicate(timeout=120)
    finished = [i for i in range(len(PROMPTS)) if (out / f"{i:05d}.json").exists()]
    assert 0 < len(finished) < len(PROMPTS), "the signal should land mid-way"

    assert run(jobs_file, out, model_dir) == 0  # resume with one process: world size does not matter
    s = summary(out)
    assert s["complete"] == len(PROMPTS) and s["done"] + s["skipped"] == len(PROMPTS)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [f"{i:05d}.{ext}" for i in range(len(PROMPTS)) for ext in ("mp4", "json")] + ["manifest.jsonl",
                                                                                      "summary.json"])
    assert not list(out.glob(".*.partial"))
    assert_same_outputs(out, reference, len(PROMPTS))


def test_job_dataclass_spec_excludes_line():
    job = Job(index=0, line=9, prompt="p", negative_prompt=None, seed=0, frames=5, height=32, width=32,
              steps=2, guidance=3.0, attention="dense")
    assert "line" not in job.spec() and job.stem == "00000"


def test_model_that_is_neither_a_folder_nor_a_hub_pipeline_is_one_error(tmp_path, capsys):
    jobs_file = write_jsonl(tmp_path / "jobs.jsonl", [DEFAULTS, {"prompt": "a red circle"}])
    name = "attn-processors-tests/no-such-pipeline"  # the form of a hub id: only loading can tell
    assert main([str(jobs_file), "--output", str(tmp_path / "out"), "--model", name, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: could not load model '{name}': there is no such local folder, and as a hub id it" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "00000.mp4").exists()
