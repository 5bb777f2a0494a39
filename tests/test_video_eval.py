"""benchmarks/video_eval.py's command line: technique settings by name or in config JSON form, one clear
error for bad arguments, one progress bar over prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.video_eval import cli, main

ASSET = Path(__file__).resolve().parents[1] / "assets" / "moving-shapes-wan"
SMALL = ["--model", str(ASSET), "--num", "1", "--two-object", "0", "--steps", "2", "--frames", "5",
         "--size", "32", "--device", "cpu"]
TILE = {"k": 1, "dense_blocks": [], "dense_steps": 0.0}


def test_bad_frame_count_names_the_allowed_ones(capsys):
    assert cli(["--model", str(ASSET), "--frames", "6", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == "error: num_frames must be 2k+1 for this model (got 6); try 5 or 7.\n"  # nothing else


@pytest.mark.parametrize("argv, message", [
    (["--attention", '{"__type__": "TileSparseConfig",'], "error: --attention is not valid JSON"),
    (["--attention", "tile_sparse", "--attention-options", "[1]"],
     "error: --attention-options must be a JSON object"),
    (["--attention", '{"__type__": "TileSparseConfg"}'], "error: unknown config type 'TileSparseConfg'"),
    (["--attention", "sage", "--calibrate", "2"],
     "error: --calibrate needs a tile-sparse technique (a config with a `plan` field); got SageConfig"),
    (["--model", "/no/such/model"], "error: /no/such/model is not a saved WanPipeline folder"),
])
def test_bad_arguments_are_one_error_line(capsys, argv, message):
    assert cli(["--model", str(ASSET), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err


def test_config_json_form_matches_the_named_form(capsys):
    named = main([*SMALL, "--attention", "tile_sparse", "--attention-options", json.dumps(TILE)])
    err = capsys.readouterr().err
    assert "dense: 100%" in err and "technique: 100%" in err and "1/1" in err  # one bar over prompts
    config = {"__type__": "TileSparseConfig", **TILE}
    for spec in (config, [config]):
        as_json = main([*SMALL, "--attention", json.dumps(spec), "--no-progress"])
        assert json.loads(as_json["attention"])["k"] == 1
        assert as_json["configs"] == named["configs"] and named["configs"][0]["k"] == 1
        assert as_json["psnr_vs_dense"] == named["psnr_vs_dense"]
        assert as_json["colour_accuracy"] == named["colour_accuracy"]
    assert capsys.readouterr().err == ""  # --no-progress hides the bar, loading shows none
