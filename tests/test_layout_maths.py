"""CSG maths: golden parity with the official code, hand-computed losses, redistribution invariants,
masks and input validation (attn_processors/layout)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attn_processors.layout.losses import (
    LossWeights,
    SamplingParams,
    csg_loss,
    generator_perms,
    identity_perms,
    selection_sizes,
    step_sizes,
)
from attn_processors.layout.masks import (
    box_masks,
    check_masks,
    grid_box,
    normalise_boxes,
    phrase_token_indices,
    validate_boxes,
)
from attn_processors.layout.redistribution import redistribute
from worlds.shapes.tokenizer import build_tokenizer

GOLDEN = Path(__file__).resolve().parent / "golden" / "csg"


def _golden_cases() -> list[tuple[dict, dict]]:
    assert (GOLDEN / "index.json").is_file(), f"golden data missing: expected {GOLDEN}/index.json"
    index = json.loads((GOLDEN / "index.json").read_text())
    return [(json.loads((GOLDEN / c["json"]).read_text()), load_file(str(GOLDEN / c["tensors"])))
            for c in index["cases"]]


# ---------------------------------------------------------------- golden parity


def test_golden_parity_script_passes_every_case():
    import benchmarks.csg_parity as parity

    result = parity.run(GOLDEN)
    assert result["cases"] >= 4 and result["pass"], result
    errs = result["max_abs_err"]
    assert errs["masks"] == 0.0 and errs["redistribution"] <= 1e-6 and errs["selection"] == 0.0
    for key in ("intra_terms", "inter_terms", "self_terms", "loss_cross", "loss_self", "loss_total"):
        assert errs[key] <= 1e-5, key


def test_parity_script_fails_on_a_wrong_golden_value(tmp_path, capsys):
    import shutil

    from safetensors.torch import save_file

    import benchmarks.csg_parity as parity

    for f in GOLDEN.iterdir():
        shutil.copy(f, tmp_path / f.name)
    name = "two_objects_overlap.safetensors"
    tensors = load_file(str(tmp_path / name))
    tensors["default.loss_total"] = tensors["default.loss_total"] + 1e-4
    save_file(tensors, str(tmp_path / name))
    assert parity.main(["--golden", str(tmp_path)]) == 1
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["pass"] is False and last["max_abs_err"]["loss_total"] > 1e-5 and last["cases"] == 4


def test_golden_masks_from_normalised_boxes_are_exact():
    for meta, tensors in _golden_cases():
        layouts = meta["layouts"] if "layouts" in meta else [dict(meta, tensor="masks")]
        for lay in layouts:
            n_fg = len(lay["fg_boxes_px"])
            norm = lay["boxes_norm_xyxy"]
            masks = box_masks(norm[:n_fg], norm[n_fg:], (16, 16))
            assert torch.equal(masks, tensors[lay["tensor"]])
            assert [grid_box(b, (16, 16)) for b in norm] == [tuple(g) for g in lay["boxes_grid_xyxy"]]
            assert masks.sum(-1).int().tolist() == lay["mask_cells"]


def test_golden_k_r_and_selected_cells_match():
    for meta, tensors in _golden_cases():
        for name, var in meta.get("variants", {}).items():
            p = var["params"]
            for j, tok in enumerate(var["per_token"]):
                sizes = selection_sizes(tok["mask_cells"], p["topk_coef"], p["dropout"])
                assert sizes == (tok["k"], tok["r"])
                assert tensors[f"{name}.sel_pixels_cross_{j}"].numel() == tok["r"]


def test_seeded_generator_reproduces_the_reference_draws():
    """Selective sampling through a private generator seeded like the reference's global RNG gives
    the recorded permutations, so the loss equals the golden loss without injecting anything."""
    for meta, tensors in _golden_cases():
        for var in meta.get("variants", {}).values():
            p = var["params"]
            g = torch.Generator().manual_seed(var["rng"]["torch_manual_seed"])
            terms = csg_loss(tensors["cross_attn"], tensors["self_attn"], tensors["masks"],
                             [[t] for t in meta["indices"]],
                             SamplingParams(p["topk_coef"], p["dropout"], p["margin"]),
                             perms=generator_perms(g))
            assert abs(float(terms.total) - var["expected"]["loss_total"]) <= 1e-5


# ---------------------------------------------------------------- hand-computed losses


def _toy():
    """4 cells, K=3 positions; object 0 = token 1 in cells {0, 1}, object 1 = token 2 in cells {2, 3}."""
    A = torch.tensor([[0.5, 0.4, 0.1],
                      [0.6, 0.3, 0.1],
                      [0.7, 0.1, 0.2],
                      [0.8, 0.05, 0.15]])
    masks = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    return A, masks


def test_intra_and_inter_by_hand_with_keep_one():
    A, masks = _toy()
    params = SamplingParams(topk_coef=1.0, keep_fraction=1.0, margin=0.1)  # k = r = 2, no randomness
    t = csg_loss(A, None, masks, [[1], [2]], params, LossWeights(1.0, 1.0, 0.0), identity_perms)
    # object 0: s_in = 0.4+0.3, s_out = top-2 out-of-box of col 1 = 0.1+0.05
    assert t.intra[0].item() == pytest.approx((1 - 0.7 / 0.85) ** 2, abs=1e-6)
    # object 1: s_in = 0.2+0.15, s_out = 0.1+0.1
    assert t.intra[1].item() == pytest.approx((1 - 0.35 / 0.55) ** 2, abs=1e-6)
    # inter 0: mu = 0.35, M = mean(col 2 on cells 0,1) = 0.1 -> relu(0.1 - 0.35 + 0.1) = 0 (hinge off)
    assert t.inter[0].item() == 0.0
    # inter 1: mu = 0.175, M = mean(col 1 on cells 2,3) = 0.075 -> relu(0.075-0.175+0.1)=0 -> on the edge
    assert t.inter[1].item() == pytest.approx(0.0, abs=1e-12)
    wide = csg_loss(A, None, masks, [[1], [2]], SamplingParams(1.0, 1.0, 0.3), LossWeights(1.0, 1.0, 0.0),
                    identity_perms)
    assert wide.inter[0].item() == pytest.approx(0.05 ** 2, abs=1e-7)  # hinge on: 0.1 - 0.35 + 0.3
    assert wide.inter[1].item() == pytest.approx(0.2 ** 2, abs=1e-7)
    assert wide.total.item() == pytest.approx(wide.intra.sum().item() + 0.05 ** 2 + 0.2 ** 2, abs=1e-6)


def test_weights_apply_as_documented():
    A, masks = _toy()
    S = torch.softmax(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)), -1)
    p = SamplingParams(1.0, 1.0, 0.3)
    t = csg_loss(A, S, masks, [[1], [2]], p, LossWeights(5.0, 50.0, 5.0), identity_perms)
    assert t.loss_cross.item() == pytest.approx(5 * (t.intra.sum() + 50 * t.inter.sum()).item(), rel=1e-6)
    assert t.loss_self.item() == pytest.approx(5 * t.self_.sum().item(), rel=1e-6)
    # self term of object 0 by hand: s = S @ m0; in-box cells 0,1; out-of-box top-2 = cells 2,3
    s = S @ masks[0]
    expected = (1 - (s[0] + s[1]) / s.sum()) ** 2
    assert t.self_[0].item() == pytest.approx(expected.item(), abs=1e-6)


def test_multi_token_object_uses_mean_column():
    A, masks = _toy()
    p = SamplingParams(1.0, 1.0, 0.1)
    grouped = csg_loss(A, None, masks, [[1, 2], [0]], p, LossWeights(1, 1, 0), identity_perms)
    B = torch.cat([A, A[:, 1:3].mean(-1, keepdim=True)], -1)
    single = csg_loss(B, None, masks, [[3], [0]], p, LossWeights(1, 1, 0), identity_perms)
    assert torch.allclose(grouped.intra, single.intra) and torch.allclose(grouped.inter, single.inter)


def test_single_object_has_no_inter_term_and_loss_has_gradient():
    A = torch.softmax(torch.randn(16, 5, generator=torch.Generator().manual_seed(1)), -1).requires_grad_()
    masks = box_masks([(0.0, 0.0, 0.5, 0.5)], res=(4, 4))
    t = csg_loss(A, None, masks, [[2]], perms=identity_perms)
    assert t.inter.tolist() == [0.0]
    t.total.backward()
    assert A.grad is not None and A.grad.abs().sum() > 0


def test_selection_sizes_float32_rules():
    assert [selection_sizes(n, 0.8, 0.5)[1] for n in (1, 2, 3)] == [1, 1, 1]  # k=1,1,2 -> r=1
    assert selection_sizes(64, 0.8, 0.5) == (51, 26)  # 25.5 -> 26 (half to even)
    assert selection_sizes(10, 0.8, 0.5) == (8, 4)
    assert selection_sizes(1, 0.8, 1.0) == (1, 1)


def test_step_size_schedule():
    eta = step_sizes(51, 0.5)
    assert eta.shape == (51,) and eta[0].item() == pytest.approx(0.5)
    assert eta[24].item() == pytest.approx(0.5 * math.sqrt(1 - 0.5 * 24 / 50), abs=1e-6)
    assert eta[-1].item() == pytest.approx(0.5 * math.sqrt(0.5), abs=1e-6)


# ---------------------------------------------------------------- redistribution


def test_redistribution_invariants_random_maps():
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(6, 64, 10, generator=g) * 2, -1)  # (rows, N=8x8, K)
    masks = box_masks([(0.0, 0.0, 0.5, 0.75), (0.25, 0.25, 1.0, 1.0)], [(0.0, 0.5, 1.0, 1.0)], (8, 8))
    idx = torch.tensor([2, 5, 7])
    out = redistribute(probs, idx, masks)
    for j, t in enumerate(idx):
        assert (out[..., t][:, masks[j] == 0] == 0).all()  # exactly zero outside its box
    assert (out.sum(-1) - 1).abs().max() <= 1e-6
    # non-layout columns only rescaled, by one factor per row
    other = [c for c in range(10) if c not in idx.tolist()]
    ratio = out[..., other] / probs[..., other]
    assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio), atol=1e-5)
    assert torch.equal(probs, torch.softmax(torch.randn(6, 64, 10, generator=g.manual_seed(3)) * 2, -1))


def test_redistribution_in_box_mass_by_hand():
    probs = torch.tensor([[[0.5, 0.2, 0.3], [0.6, 0.3, 0.1]]])  # 2 cells, 3 positions
    out = redistribute(probs, torch.tensor([1, 2]), torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    # cell 0 in both boxes: both get 0.5 -> [0.5, 0.5, 0.5] / 1.5; cell 1 only box 2: [0.6, 0, 0.4]
    assert torch.allclose(out, torch.tensor([[[1 / 3, 1 / 3, 1 / 3], [0.6, 0.0, 0.4]]]))


# ---------------------------------------------------------------- masks and bad input


def test_non_square_grid_and_pixel_boxes():
    boxes = normalise_boxes([(0, 0, 64, 32)], image_hw=(64, 128))  # (h, w)
    assert boxes == [(0.0, 0.0, 0.5, 0.5)]
    m = box_masks(boxes, res=(4, 8)).reshape(4, 8)
    assert m[:2, :4].all() and m.sum() == 8


def test_bad_boxes_raise():
    with pytest.raises(ValueError, match="outside"):
        validate_boxes([(0.1, 0.1, 1.2, 0.5)])
    with pytest.raises(ValueError, match="empty"):
        validate_boxes([(0.5, 0.1, 0.5, 0.5)])
    with pytest.raises(ValueError, match="4 numbers"):
        validate_boxes([(0.1, 0.2, 0.3)])


def test_empty_masks_repaired_or_rejected():
    fg = [(0.2, 0.2, 0.21, 0.21)]
    masks = box_masks(fg, res=(16, 16))
    assert masks.sum() == 0
    with pytest.warns(UserWarning, match="covers no cell"):
        fixed = check_masks(masks, fg, (16, 16), ["dot"], n_fg=1)
    assert fixed.sum() == 1 and fixed[0, 3 * 16 + 3] == 1
    with pytest.raises(ValueError, match="covers no cell"):
        check_masks(masks, fg, (16, 16), ["dot"], n_fg=1, on_empty="error")
    boxes = [(0.0, 0.0, 1.0, 0.625), (0.125, 0.125, 0.875, 0.5)]
    with pytest.raises(ValueError, match="entirely covered"):
        check_masks(box_masks(boxes[:1], boxes[1:]), boxes, (16, 16), ["sky", "cloud"], n_fg=1)
    with pytest.raises(ValueError, match="empty"):
        csg_loss(torch.rand(256, 5), None, masks, [[1]])


def test_phrase_token_indices_multi_token_and_repeats():
    tok = build_tokenizer()
    prompt = "a red circle and a red square"
    assert phrase_token_indices(tok, prompt, ["a red circle", "red square"]) == [[2, 3], [6, 7]]
    assert phrase_token_indices(tok, prompt, ["square", "circle"]) == [[7], [3]]
    assert phrase_token_indices(tok, "a red circle and a red circle", ["red circle", "red circle"]) == [
        [2, 3], [6, 7]]


def test_phrase_errors_name_the_problem():
    tok = build_tokenizer()
    with pytest.raises(ValueError, match=r"not found.*'red</w>'"):
        phrase_token_indices(tok, "a red circle", ["blue circle"])
    with pytest.raises(ValueError, match="at most 16"):
        phrase_token_indices(tok, ", ".join(["a red circle"] * 6), ["red circle"])
    with pytest.raises(ValueError, match="reuses"):
        phrase_token_indices(tok, "a red circle", ["red circle", "circle"])


def test_layout_config_json_roundtrip_and_validation():
    from attn_processors.core import config_from_json, config_to_json
    from attn_processors.layout import LayoutConfig

    cfg = LayoutConfig(boxes=((0.1, 0.2, 0.5, 0.6), (0.0, 0.5, 1.0, 1.0)), token_groups=((2, 3), (6,)),
                       phrases=("red circle", "grass"), n_background=1, scale_factor=20.0, res_factor=2)
    assert config_from_json(config_to_json(cfg)) == cfg
    masks = cfg.masks((4, 4))
    assert masks[1].reshape(4, 4)[2:].sum() == 8 - masks[0].reshape(4, 4)[2:].sum()  # bg minus fg
    with pytest.raises(ValueError, match="2 boxes for 1 phrases"):
        LayoutConfig(boxes=cfg.boxes, token_groups=((2,),))
    with pytest.raises(ValueError, match="outside"):
        LayoutConfig(boxes=((0.0, 0.0, 1.5, 1.0),), token_groups=((2,),))
