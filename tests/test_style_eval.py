"""benchmarks/style_eval.py and its metrics: the pair file, scores on ground-truth renders (where the
answer is known), bad arguments, and one end-to-end run on the shipped flat model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import benchmarks.style_eval as se
from benchmarks.style_metrics import canny, edge_f1, gram_distance, gram_reduction
from worlds.shapes.styles import STYLES


def test_default_pair_file_is_valid_and_balanced():
    pairs = se.load_pairs(se.DEFAULT_PAIRS)
    assert len(pairs) == 12
    assert sorted({p["style"] for p in pairs}) == ["dotted", "hatched", "outline"]
    assert [p["style"] for p in pairs[: se.QUICK_PAIRS]] == ["outline", "hatched", "dotted"]
    for p in pairs:  # the two scenes never share a colour (copying the style scene keeps no content)
        content = {c for c, _ in se.parse_caption(p["content_prompt"])}
        assert not content & {c for c, _ in se.parse_caption(p["style_prompt"])}


def test_scenes_are_deterministic_and_follow_the_caption():
    a, objects = se.render_scene("a red square and a green circle", 3, "flat", 64)
    b, _ = se.render_scene("a red square and a green circle", 3, "flat", 64)
    np.testing.assert_array_equal(a, b)
    assert [(o.colour, o.shape) for o in objects] == [("red", "square"), ("green", "circle")]
    hatched, _ = se.render_scene("a red square and a green circle", 3, "hatched", 64)
    assert (hatched[0, 0] == 255).all() and not (a[0, 0] == 255).all()  # paper vs the grey ground


@pytest.mark.parametrize("pair", se.load_pairs(se.DEFAULT_PAIRS)[3:6])  # 1-2 objects, every style
def test_scores_on_ground_truth_renders(pair):
    content, objects = se.render_scene(pair["content_prompt"], pair["content_seed"], "flat", 64)
    style_image, _ = se.render_scene(pair["style_prompt"], pair["style_seed"], pair["style"], 64)
    ideal, _ = se.render_scene(pair["content_prompt"], pair["content_seed"], pair["style"], 64)
    same = se.score(content, content, style_image, objects, pair["style"])  # no transfer at all
    assert same["style_accuracy"] == 0.0 and same["content_kept"] == 1.0
    assert same["edge_f1"] == 1.0 and same["gram_reduction"] == 0.0
    best = se.score(ideal, content, style_image, objects, pair["style"])  # the content drawn in the style
    assert best["style_accuracy"] == 1.0 and best["content_kept"] == 1.0
    assert best["gram_reduction"] > 0.5 and best["edge_f1"] > 0.7
    copy = se.score(style_image, content, style_image, objects, pair["style"])  # the style image copied
    assert copy["style_accuracy"] == 1.0 and copy["content_kept"] == 0.0
    assert copy["gram_distance"] == 0.0 and copy["gram_reduction"] == 1.0


def test_gram_distance_orders_styles_and_edges_are_canny():
    imgs = {s: se.render_scene("a blue square and a orange triangle", 10, s, 64)[0] for s in STYLES}
    d = {s: gram_distance(imgs[s], imgs["hatched"]) for s in STYLES}
    assert d["hatched"] == 0.0 and d["dotted"] < d["outline"] < d["flat"]
    symmetric = gram_distance(imgs["dotted"], imgs["flat"])
    assert gram_distance(imgs["flat"], imgs["dotted"]) == pytest.approx(symmetric)
    assert gram_reduction(imgs["dotted"], imgs["flat"], imgs["hatched"]) > 0.5
    square = np.full((32, 32, 3), 255, np.uint8)
    square[8:24, 8:24] = (40, 70, 225)
    edges = canny(square)
    assert edges[8:24, 7:10].any(axis=1).all() and not edges[12:20, 12:20].any()
    shifted = np.roll(square, 2, axis=1)
    assert edge_f1(shifted, square) == 1.0  # within the 3 px tolerance
    assert edge_f1(np.roll(square, 6, axis=1), square) < 0.7


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "0"], "--seeds 0: give a positive integer"),
    (["--steps", "-2"], "--steps -2: give a positive integer"),
    (["--modes", "none,sketchy"], "give comma-separated modes of"),
    (["--pairs", "no/such/pairs.json"], "pair file 'no/such/pairs.json' does not exist"),
    (["--model", "no/such/model"], "--model no/such/model: no Diffusers pipeline folder there"),
    (["--set", "illusign.contrst=1.2"], "--set 'illusign.contrst=1.2': give MODE.FIELD=VALUE"),
    (["--set", "text.contrast=1.2"], "--set 'text.contrast=1.2': give MODE.FIELD=VALUE"),
    (["--set", "illusign.contrast=-1"], "StyleConfig.contrast=-1 must be >= 0"),
])
def test_bad_arguments_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        se.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_style_model_names_the_way_out(capsys, monkeypatch):
    monkeypatch.setattr(se, "DEFAULT_MODEL", se.ROOT / "assets" / "no-such-style-model")
    with pytest.raises(SystemExit):
        se.main([])
    err = capsys.readouterr().err
    assert "assets/no-such-style-model is not there yet" in err and "--model assets/shapes-sd" in err


def test_overrides_change_one_mode_and_are_recorded(tmp_path, capsys):
    items = ["illusign.steps=[0.2, 0.8]", "illusign.edge_stream=out", "kv_swap.contrast=1.5"]
    assert se.parse_overrides(items) == {"illusign": {"steps": (0.2, 0.8), "edge_stream": "out"},
                                         "kv_swap": {"contrast": 1.5}}
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(se.load_pairs(se.DEFAULT_PAIRS)[:1]))
    base = ["--model", "assets/shapes-sd", "--pairs", str(pairs), "--seeds", "1", "--steps", "4",
            "--modes", "illusign"]
    plain = se.main(base)
    changed = se.main([*base, "--set", "illusign.contrast=1.0", "--set", "illusign.w_edge=0.0"])
    assert plain["overrides"] == {} and changed["overrides"] == {"illusign": {"contrast": 1.0, "w_edge": 0.0}}
    assert plain["methods"]["illusign"]["gram_distance"] != changed["methods"]["illusign"]["gram_distance"]


def test_bad_pairs_are_named(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"content_prompt": "a red circle", "content_seed": 0, "style": "flat",
                                 "style_prompt": "a blue square", "style_seed": 1}]))
    with pytest.raises(ValueError, match="pair 0: style 'flat'; use one of"):
        se.load_pairs(path)
    path.write_text(json.dumps([{"content_prompt": "a red circle"}]))
    with pytest.raises(ValueError, match="lacks \\['content_seed'"):
        se.load_pairs(path)


def test_end_to_end_on_the_flat_model(tmp_path, capsys):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(se.load_pairs(se.DEFAULT_PAIRS)[:1]))
    grid = tmp_path / "grid.png"
    result = se.main(["--model", "assets/shapes-sd", "--pairs", str(pairs), "--seeds", "1", "--steps", "2",
                      "--grid", str(grid)])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(result))
    assert set(last["methods"]) == set(se.MODES) | {m + se.KEPT_SUFFIX for m in se.INJECTION_MODES}
    assert "skipped" in last["methods"]["text"]  # the flat model has no style words
    none = last["methods"]["none"]
    # no injection replays the content's inversion: the flat content comes back, objects and edges kept
    assert none["content_kept"] == 1.0 and none["style_accuracy"] == 0.0 and none["edge_f1"] > 0.9
    # one row (the pair), columns content, style, none and the four injection modes as drawn and with
    # the content's colours, each 64 px x2
    assert Image.open(grid).size == (11 * 64 * 2, 64 * 2)
    for mode in se.INJECTION_MODES:
        row, kept = last["methods"][mode], last["methods"][mode + se.KEPT_SUFFIX]
        assert row["images"] == kept["images"] == 1 and row["seconds_per_image"] > 0
        assert kept["edge_f1"] == pytest.approx(row["edge_f1"], abs=0.15)  # recolouring keeps the strokes
        assert 0.0 <= row["style_accuracy"] <= 1.0 and 0.0 <= row["content_kept"] <= 1.0
