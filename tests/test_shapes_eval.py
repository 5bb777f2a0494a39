"""benchmarks/shapes_eval.py: bad arguments end in one message and a non-zero exit (before any model
loads), and generation shows one progress bar over the images."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import benchmarks.shapes_eval as se


@pytest.mark.parametrize(("argv", "message"), [
    (["--steps", "-1"], "--steps -1: give a positive integer"),
    (["--steps", "0"], "--steps 0: give a positive integer"),
    (["--batch", "0"], "--batch 0: give a positive integer"),
    (["--single", "-3"], "--single -3: give 0 or more"),
    (["--seeds", "a,b"], "--seeds 'a,b': give comma-separated integers"),
    (["--seeds", ","], "--seeds is empty"),
])
def test_bad_arguments_exit_with_a_message(argv, message, capsys, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("the model must not load for bad arguments")

    monkeypatch.setattr(se, "load_pipeline", no_model)
    with pytest.raises(SystemExit) as exit_info:
        se.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_generation_shows_one_bar_over_the_images(capsys):
    calls = []

    def fake_pipe(prompts, generator=None, **kw):
        calls.append(len(prompts))
        return SimpleNamespace(images=np.full((len(prompts), 8, 8, 3), 0.9, dtype=np.float32))

    images, _ = se.generate(fake_pipe, ["a red circle", "a blue square", "a green triangle"], [0, 1],
                            steps=1, cfg=1.0, batch=4, tally=None, attn_images=0)
    assert len(images) == 6 and calls == [4, 2]
    err = capsys.readouterr().err
    assert "shapes_eval" in err and "6/6" in err
