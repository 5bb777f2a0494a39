"""benchmarks/layout_eval.py: case-file loading, box scoring with the shapes detector, the model's
settings as defaults, and clear errors for bad arguments."""

from __future__ import annotations

import json
import re

import pytest

from benchmarks.layout_eval import DEFAULT_CASES, HELDOUT_CASES, load_cases, parse_phrase, score
from worlds.shapes.render import SceneObject, draw_scene


def test_score_hits_objects_in_their_boxes_and_misses_others():
    boxes = [[0.05, 0.05, 0.45, 0.45], [0.55, 0.55, 0.95, 0.95]]
    image = draw_scene([SceneObject("red", "circle", tuple(boxes[0])),
                        SceneObject("blue", "square", tuple(boxes[1]))])
    ious = score(image, ["red circle", "blue square"], boxes)
    assert min(ious) > 0.85
    swapped = score(image, ["red circle", "blue square"], boxes[::-1])
    assert max(swapped) == 0.0  # right objects, wrong boxes: IoU 0
    wrong_shape = score(image, ["red square", "blue square"], boxes)
    assert wrong_shape[0] == 0.0 and wrong_shape[1] > 0.85


@pytest.mark.parametrize("path", [DEFAULT_CASES, HELDOUT_CASES], ids=["default", "heldout"])
def test_case_files_are_valid_layouts_without_parameters(path):
    """Both case files are plain layouts: the tuned parameters live in the model folder."""
    from attn_processors.layout.masks import phrase_token_indices, validate_boxes
    from worlds.shapes.tokenizer import build_tokenizer, check_prompt
    from worlds.shapes.vocab import parse_caption

    cases, params, sampling = load_cases(path)
    assert len(cases) >= 8 and params == {} and sampling == {}
    tok = build_tokenizer()
    for c in cases:
        check_prompt(c["prompt"])
        assert len(parse_caption(c["prompt"])) == len(c["phrases"])
        for x1, y1, x2, y2 in validate_boxes(c["boxes"]):
            assert 0.3 <= x2 - x1 <= 0.44 and 0.3 <= y2 - y1 <= 0.44  # training-object sizes
        assert len(phrase_token_indices(tok, c["prompt"], c["phrases"])) == len(c["boxes"])
        assert all(len(parse_phrase(p)) == 2 for p in c["phrases"])


def test_heldout_cases_differ_from_the_tuning_cases():
    default, _, _ = load_cases(DEFAULT_CASES)
    heldout, _, _ = load_cases(HELDOUT_CASES)
    assert not {c["prompt"] for c in default} & {c["prompt"] for c in heldout}
    boxes = [{tuple(b) for c in cases for b in c["boxes"]} for cases in (default, heldout)]
    assert not boxes[0] & boxes[1]
    assert {len(c["phrases"]) for c in heldout} == {1, 2, 3}
    assert "held-out" in json.loads(HELDOUT_CASES.read_text())["description"].lower()


def test_bad_case_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "a red circle", "boxes": [[0, 0, 1, 1]]}]))
    with pytest.raises(ValueError, match="phrases"):
        load_cases(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=f"{bad} is not valid JSON"):
        load_cases(bad)
    bad.write_text(json.dumps({"layout_params": {"keep": 0.5}, "cases": [
        {"prompt": "a red circle", "phrases": ["red circle"], "boxes": [[0, 0, 0.4, 0.4]]}]}))
    with pytest.raises(ValueError, match=r"layout_params: unknown LayoutConfig parameters \['keep'\]"):
        load_cases(bad)
    with pytest.raises(ValueError, match="no case file at"):
        load_cases(tmp_path / "missing.json")


@pytest.mark.parametrize(("argv", "message"), [
    (["--layout-params", "{scale_factor: 1}"], "--layout-params '{scale_factor: 1}' is not valid JSON"),
    (["--layout-params", "[1, 2]"], "must be a JSON object of LayoutConfig values"),
    (["--layout-params", '{"keep": 0.3}'], r"unknown LayoutConfig parameters \['keep'\]"),
    (["--layout-params", '{"iterations": -1}'], "iterations=-1 must be >= 0"),
    (["--cases", "no/such/cases.json"], "no case file at no/such/cases.json"),
    (["--steps", "-1"], "--steps -1: give a positive number"),
    (["--seeds", "0"], "--seeds 0: give at least 1 seed"),
])
def test_bad_arguments_exit_with_a_message_not_a_traceback(argv, message, capsys):
    import benchmarks.layout_eval as le

    with pytest.raises(SystemExit) as exit_info:
        le.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err


def test_seed_offset_runs_other_seeds_and_is_recorded(monkeypatch, capsys, tmp_path):
    """Parameters are tuned on --seed-offset seeds, never on the reported 0..N-1."""
    from types import SimpleNamespace

    from PIL import Image

    import benchmarks.layout_eval as le

    seen: list[tuple[str, int]] = []

    class FakePipe:
        settings = SimpleNamespace(layout={"iterations": 17}, sampling={"num_inference_steps": 20},
                                   source="model/attn_processors.json")

        def set_progress_bar_config(self, **kw):
            pass

        def __call__(self, prompt, generator=None, num_inference_steps=None, **kw):
            assert kw["layout_params"] == {"scale_factor": 2.0}  # only the overrides; the rest is the pipe's
            if num_inference_steps != 2:  # not the warm-up call
                assert num_inference_steps is None  # the model's own step count
                seen.append((kw["mode"], generator.initial_seed()))
            return SimpleNamespace(images=[Image.new("RGB", (64, 64), (220, 220, 220))])

    fake = classmethod(lambda cls, *a, **k: FakePipe())
    monkeypatch.setattr(le.LayoutToImagePipeline, "from_pretrained", fake)
    out = tmp_path / "result.json"
    assert le.main(["--seeds", "2", "--seed-offset", "100", "--methods", "unguided,full",
                    "--layout-params", '{"scale_factor": 2.0}', "--out", str(out)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == result
    # the values used: the model's settings with the overrides on top
    assert result["layout_params"] == {"iterations": 17, "scale_factor": 2.0}
    assert result["sampling"] == {"num_inference_steps": 20, "guidance_scale": 7.5}
    assert result["model_settings"] == "model/attn_processors.json"
    assert result["seeds"] == 2 and result["seed_offset"] == 100
    assert {s for _, s in seen} == {100, 101} and {m for m, _ in seen} == {"none", "full"}
    assert "layout_eval" in captured.err and "16/16" in captured.err  # one bar: 8 cases x 2 seeds
    assert result["methods"]["full"]["hit_rate"] == 0.0  # a blank image hits nothing
