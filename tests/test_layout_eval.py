"""benchmarks/layout_eval.py: case-file loading and box scoring with the shapes detector."""

from __future__ import annotations

import json

import pytest

from benchmarks.layout_eval import DEFAULT_CASES, load_cases, parse_phrase, score
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


def test_default_cases_are_valid_layouts(tmp_path):
    from attn_processors.layout.masks import phrase_token_indices, validate_boxes
    from worlds.shapes.tokenizer import build_tokenizer

    cases, params, sampling = load_cases(DEFAULT_CASES)
    assert len(cases) >= 8 and "scale_factor" in params and sampling["num_inference_steps"] > 0
    tok = build_tokenizer()
    for c in cases:
        validate_boxes(c["boxes"])
        assert len(phrase_token_indices(tok, c["prompt"], c["phrases"])) == len(c["boxes"])
        assert all(len(parse_phrase(p)) == 2 for p in c["phrases"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "a red circle", "boxes": [[0, 0, 1, 1]]}]))
    with pytest.raises(ValueError, match="phrases"):
        load_cases(bad)


def test_seed_offset_runs_other_seeds_and_is_recorded(monkeypatch, capsys):
    """Parameters are tuned on --seed-offset seeds, never on the reported 0..N-1."""
    from types import SimpleNamespace

    from PIL import Image

    import benchmarks.layout_eval as le

    seen: list[tuple[str, int]] = []

    class FakePipe:
        def set_progress_bar_config(self, **kw):
            pass

        def __call__(self, prompt, generator=None, num_inference_steps=20, **kw):
            if num_inference_steps > 2:  # not the warm-up call
                seen.append((kw["mode"], generator.initial_seed()))
            return SimpleNamespace(images=[Image.new("RGB", (64, 64), (220, 220, 220))])

    fake = classmethod(lambda cls, *a, **k: FakePipe())
    monkeypatch.setattr(le.LayoutToImagePipeline, "from_pretrained", fake)
    assert le.main(["--seeds", "2", "--seed-offset", "100", "--methods", "unguided,full"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["seeds"] == 2 and result["seed_offset"] == 100
    assert {s for _, s in seen} == {100, 101} and {m for m, _ in seen} == {"none", "full"}
    assert result["methods"]["full"]["hit_rate"] == 0.0  # a blank image hits nothing
