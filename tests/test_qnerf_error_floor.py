"""benchmarks/qnerf_error_floor.py: the headroom arithmetic, the VAE round trip, and one end-to-end
run on a tiny random-weight SD folder (fields only; the numbers mean nothing there)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import qnerf_error_floor as floor  # noqa: E402

from attn_processors.testing.tiny import tiny_pipeline  # noqa: E402
from pipelines.multiview_edit import MultiViewEditPipeline  # noqa: E402

CASES = ROOT / "benchmarks" / "cases" / "qnerf_edit.json"


def record(vae: float, redraw: float, per_view: float, group: str = "colour") -> dict:
    return {"group": group, **{name: {"consistency_error": err, "gt_psnr": 20.0}
                               for name, err in (("vae", vae), ("redraw", redraw), ("per_view", per_view))}}


def test_headroom_is_what_a_redraw_consistent_edit_would_remove():
    out = floor.summarise([record(1.0, 2.0, 4.0), record(1.0, 4.0, 4.0)])
    assert out["redraw"]["consistency_error"] == 3.0 and out["per_view"]["consistency_error"] == 4.0
    assert out["headroom"] == pytest.approx(0.25)
    assert floor.summarise([record(1.0, 3.0, 2.0)])["headroom"] == pytest.approx(-0.5)  # edit beats redraw
    assert floor.summarise([record(0.0, 0.0, 0.0)])["headroom"] is None


def test_vae_round_trip_keeps_size_and_type(tmp_path):
    torch.manual_seed(0)
    tiny_pipeline("sd15").save_pretrained(tmp_path / "model")
    pipe = MultiViewEditPipeline.from_pretrained(tmp_path / "model")
    rgbs = [torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8) for _ in range(2)]
    out = floor.vae_round_trip(pipe, rgbs)
    assert len(out) == 2 and all(x.shape == (16, 16, 3) and x.dtype == torch.uint8 for x in out)
    assert not torch.equal(out[0], rgbs[0])  # a random VAE changes the image


def test_end_to_end_on_a_tiny_model(tmp_path, capsys):
    torch.manual_seed(0)
    tiny_pipeline("sd15").save_pretrained(tmp_path / "model")
    result = floor.main(["--scenes", str(CASES), "--model", str(tmp_path / "model"), "--max-scenes", "1",
                         "--views", "2", "--steps", "3", "--size", "16"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(result)) and last["scenes"] == ["colour-00"]
    assert set(last["sets"]) == {*floor.SETS, "headroom"}
    for name in floor.SETS:
        assert {"consistency_error", "gt_psnr"} == set(last["sets"][name])
    assert last["sets"]["redraw"] != last["sets"]["per_view"]  # another scene, another prompt
    assert set(last["groups"]) == {"colour"}
    assert [r["id"] for r in last["per_scene"]] == ["colour-00"] and last["per_scene"][0]["floor"] >= 0


def test_a_scene_without_an_edit_is_named(tmp_path):
    scenes = json.loads(CASES.read_text())[:1]
    del scenes[0]["edit"]
    bad = tmp_path / "scenes.json"
    bad.write_text(json.dumps(scenes))
    torch.manual_seed(0)
    tiny_pipeline("sd15").save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match=r"scenes\[0\] has no 'edit'"):
        floor.main(["--scenes", str(bad), "--model", str(tmp_path / "model"), "--size", "16", "--views", "2"])
