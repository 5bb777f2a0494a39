"""benchmarks/qnerf_query_leverage.py: the replacement maps of each mode, the render-to-own gap, and
one end-to-end run on a tiny random-weight SD folder (fields only; the numbers mean nothing there)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import qnerf_query_leverage as lev  # noqa: E402

from attn_processors.testing.tiny import tiny_pipeline  # noqa: E402

CASES = ROOT / "benchmarks" / "cases" / "qnerf_edit.json"


def maps(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(4, 2, 2, 3, generator=g), "b": torch.randn(4, 1, 1, 5, generator=g)}


def test_each_mode_injects_what_it_names():
    extracted, rendered = {n: m.half() for n, m in maps(0).items()}, maps(1)
    assert lev.replacement("field", extracted, rendered) is None  # the QNeRF renders themselves
    own = lev.replacement("own", extracted, rendered)
    assert all(own[n].dtype == torch.float32 and torch.equal(own[n], extracted[n].float()) for n in own)
    assert all(not m.any() for m in lev.replacement("zeros", extracted, rendered).values())
    other = lev.replacement("other_view", extracted, rendered)
    assert torch.equal(other["a"][0], rendered["a"][2]) and torch.equal(other["a"][3], rendered["a"][1])
    truth = maps(2)
    injected = lev.replacement("truth", extracted, rendered, truth)
    assert all(torch.equal(m, truth[n]) for n, m in injected.items())
    with pytest.raises(ValueError, match="needs the ground-truth views' queries"):
        lev.replacement("truth", extracted, rendered)
    with pytest.raises(ValueError, match="mode='ones'"):
        lev.Injector("ones")


def test_render_gap_is_the_mean_relative_distance_over_layers():
    own = maps(0)
    assert lev.render_gap(own, own) == 0.0
    doubled = {n: 2 * m for n, m in own.items()}
    assert lev.render_gap(own, doubled) == pytest.approx(1.0)


def test_end_to_end_on_a_tiny_model(tmp_path, capsys):
    torch.manual_seed(0)
    tiny_pipeline("sd15").save_pretrained(tmp_path / "model")
    result = lev.main(["--scenes", str(CASES), "--model", str(tmp_path / "model"), "--max-scenes", "1",
                       "--views", "2", "--steps", "3", "--fit-iters", "2", "--size", "16",
                       "--modes", "field", "zeros", "truth"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(result)) and set(last["modes"]) == {"field", "zeros", "truth"}
    for row in last["modes"].values():
        assert {"consistency_error", "gt_psnr", "pixel_change", "render_vs_own"} <= set(row)
        assert row["render_vs_own"] > 0
    assert last["modes"]["zeros"]["pixel_change"] > 0  # zero queries change the edit
    assert last["modes"]["truth"]["pixel_change"] != last["modes"]["field"]["pixel_change"]
