"""benchmarks/z2h_eval.py without the trained model: the method table and its NFE, argument checks,
the relative pose of scene-file views, the cross-seed std, one clear error when the 3D world or the model
is missing, and one end-to-end run on the tiny random-weight model (fields only, no claimed numbers)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import z2h_eval  # noqa: E402

CASES = ROOT / "benchmarks" / "cases" / "shapes3d_novel_view.json"


def test_method_table_is_the_issues_with_its_network_evaluations():
    m = z2h_eval.METHODS
    assert list(m) == ["plain", "plain_equal_nfe", "hourglass", "hourglass_resample",
                       "hourglass_resample_amf", "z2h"]
    assert {k: c.nfe() for k, c in m.items()} == {"plain": 50, "plain_equal_nfe": 66, "hourglass": 26,
                                                 "hourglass_resample": 66, "hourglass_resample_amf": 66,
                                                 "z2h": 66}
    flags = {k: (c.schedule, c.resample_iterations, c.amf, c.msa) for k, c in m.items()}
    assert flags["plain"] == ("uniform", 1, False, False) == flags["plain_equal_nfe"]
    assert flags["hourglass"] == ("hourglass", 1, False, False)
    assert flags["hourglass_resample"] == ("hourglass", 5, False, False)
    assert flags["hourglass_resample_amf"] == ("hourglass", 5, True, False)
    assert flags["z2h"] == ("hourglass", 5, True, True)


@pytest.mark.parametrize("argv, message", [
    (["--methods", "plain,z2hh"], "--methods 'plain,z2hh': unknown ['z2hh']; choose from"),
    (["--seeds", "0"], "--seeds 0: give at least 1"),
    (["--per-group", "0"], "--per-group 0: give at least 1"),
    (["--scenes", "nowhere.json"], "--scenes nowhere.json: no such file"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        z2h_eval.parse_args(argv)
    assert message in capsys.readouterr().err


def test_quick_and_method_list():
    args = z2h_eval.parse_args(["--quick", "--methods", "plain, z2h"])
    assert (args.per_group, args.seeds, args.methods) == (1, 2, ["plain", "z2h"])


def test_relative_pose_and_seed_std():
    v = lambda e, a, r: SimpleNamespace(elevation=e, azimuth=a, radius=r)  # noqa: E731
    assert z2h_eval.relative_pose(v(20, 350, 2.4), v(30, 10, 2.2)) == pytest.approx((-10.0, 20.0, -0.2))
    assert z2h_eval.relative_pose(v(20, 10, 2.0), v(20, 200, 2.0)) == pytest.approx((0.0, -170.0, 0.0))
    a = np.zeros((2, 4, 4, 3), np.uint8)
    assert z2h_eval.seed_std([a]) is None
    assert z2h_eval.seed_std([a, a]) == 0.0
    assert z2h_eval.seed_std([a, a + 255]) == 0.5  # two seeds at 0 and 1: std 0.5 everywhere


def test_missing_world_gives_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "worlds.shapes3d", None)
    with pytest.raises(z2h_eval.MissingWorld, match="needs the 3D shapes world"):
        z2h_eval.world()
    with pytest.raises(SystemExit, match="z2h_eval: benchmarks/z2h_eval.py needs the 3D shapes world"):
        z2h_eval.main(["--quick"])


def test_missing_model_gives_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="z2h_eval: no model folder at .*; train and export"):
        z2h_eval.main(["--model", str(tmp_path / "none"), "--quick"])


def test_end_to_end_on_the_tiny_model_reports_every_field(tmp_path, capsys):
    from attn_processors.testing.tiny_zero123 import save_tiny_zero123

    model = save_tiny_zero123(tmp_path / "model")
    scene = json.loads(CASES.read_text())[0]
    scene["views"] = scene["views"][:3]
    (tmp_path / "scenes.json").write_text(json.dumps([scene]))
    z2h_eval.main(["--model", str(model), "--scenes", str(tmp_path / "scenes.json"), "--seeds", "2",
                   "--methods", "plain,hourglass,z2h", "--save", str(tmp_path / "grids")])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(result["methods"]) == ["plain", "hourglass", "z2h"]
    for name, nfe in (("plain", 50), ("hourglass", 26), ("z2h", 66)):
        row = result["methods"][name]
        assert row["nfe"] == nfe and row["seconds_per_view"] > 0 and row["seed_std"] > 0
        assert all(isinstance(row[k], float) for k in ("psnr", "ssim"))
        assert set(z2h_eval.METRICS) <= set(row)
    assert set(result["deltas"]) == {"z2h_vs_plain"} and result["scenes"] == 1
    assert len(list((tmp_path / "grids").glob("*.png"))) == 1


def test_a_run_split_by_methods_merges_into_the_joint_run(tmp_path, capsys):
    from attn_processors.testing.tiny_zero123 import save_tiny_zero123

    model = save_tiny_zero123(tmp_path / "model")
    scene = json.loads(CASES.read_text())[0]
    scene["views"] = scene["views"][:2]
    (tmp_path / "scenes.json").write_text(json.dumps([scene]))
    common = ["--model", str(model), "--scenes", str(tmp_path / "scenes.json"), "--seeds", "1"]
    joint = z2h_eval.main([*common, "--methods", "plain,z2h"])
    for name, method in (("a.log", "z2h"), ("b.log", "plain")):
        capsys.readouterr()
        z2h_eval.main([*common, "--methods", method])
        (tmp_path / name).write_text("loading...\n" + capsys.readouterr().out)
    merged = z2h_eval.main(["--merge", str(tmp_path / "a.log"), str(tmp_path / "b.log")])
    assert list(merged["methods"]) == ["plain", "z2h"]  # the paper's order, whatever the parts' order
    for name in ("plain", "z2h"):  # paired seeds: the same images, so the same scores
        assert {k: merged["methods"][name][k] for k in z2h_eval.METRICS} == {
            k: joint["methods"][name][k] for k in z2h_eval.METRICS}
    assert merged["deltas"] == joint["deltas"] and merged["seeds"] == 1
    with pytest.raises(ValueError, match=r"methods \['plain'\] are in another part too"):
        z2h_eval.merge([tmp_path / "b.log", tmp_path / "b.log"])
    other = json.loads((tmp_path / "b.log").read_text().splitlines()[-1]) | {"seeds": 3}
    (tmp_path / "c.log").write_text(json.dumps(other) + "\n")
    with pytest.raises(ValueError, match="ran with other settings"):
        z2h_eval.merge([tmp_path / "a.log", tmp_path / "c.log"])
    (tmp_path / "d.log").write_text("Traceback ...\n")
    with pytest.raises(ValueError, match="d.log: no finished z2h_eval result"):
        z2h_eval.merge([tmp_path / "d.log"])
