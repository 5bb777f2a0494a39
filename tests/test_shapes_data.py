"""The synthetic scene generator: deterministic, grammatical, boxes and masks that agree."""

import numpy as np
import pytest

from worlds.shapes.data import MAX_OBJECTS, make_scene, sample_objects, scene_batch
from worlds.shapes.render import SceneObject, draw_scene, object_mask
from worlds.shapes.vocab import COLOURS, SHAPES, caption, object_phrase, parse_caption


def test_scene_is_deterministic_per_seed_and_index():
    a, b, c = make_scene(7, 3), make_scene(7, 3), make_scene(7, 4)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption
    assert not np.array_equal(a.image, c.image)


def test_scenes_follow_the_grammar_and_constraints():
    counts = set()
    for i in range(120):
        s = make_scene(1, i)
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert parse_caption(s.caption) == s.labels  # caption order == object order
        colours = [c for c, _ in s.labels]
        assert len(set(colours)) == len(colours), "object colours must be distinct"
        boxes = s.boxes
        assert ((boxes >= 0) & (boxes <= 1)).all()
        side = (boxes[:, 2] - boxes[:, 0]) * 64
        assert ((side >= 14 - 1e-4) & (side <= 28 + 1e-4)).all()
        for j in range(len(boxes)):
            for k in range(j + 1, len(boxes)):
                a, b = boxes[j] * 64, boxes[k] * 64
                separated = a[2] + 2 <= b[0] + 1e-4 or b[2] + 2 <= a[0] + 1e-4 or a[3] + 2 <= b[1] + 1e-4 \
                    or b[3] + 2 <= a[1] + 1e-4
                assert separated, f"scene {i}: boxes {a} and {b} overlap"
        counts.add(len(s.objects))
        corner = s.image[0, 0].astype(int)
        assert corner.min() >= 189 and corner.max() <= 251  # light background (unless an object is there)
    assert counts == set(range(1, MAX_OBJECTS + 1))


def test_caption_grammar_round_trip_and_errors():
    pairs = (("red", "circle"), ("blue", "square"), ("yellow", "triangle"))
    phrases = [object_phrase(c, s) for c, s in pairs]
    assert caption(phrases) == "a red circle, a blue square and a yellow triangle"
    assert caption(phrases[:2]) == "a red circle and a blue square"
    assert parse_caption(caption(phrases)) == [("red", "circle"), ("blue", "square"), ("yellow", "triangle")]
    for bad in ["a pink circle", "a red circle and a blue square and a green circle", "red circle", ""]:
        with pytest.raises(ValueError):
            parse_caption(bad)


def test_scene_batch_masks_lie_in_their_boxes():
    b = scene_batch(seed=2, start=0, count=16)
    assert b["pixels"].shape == (16, 3, 64, 64)
    assert float(b["pixels"].min()) >= -1 and float(b["pixels"].max()) <= 1
    masks, valid, boxes = b["masks"], b["valid"], b["boxes"]
    assert masks.shape == (16, MAX_OBJECTS, 16, 16)
    for i in range(16):
        n = len(parse_caption(b["captions"][i]))
        assert valid[i].tolist() == [j < n for j in range(MAX_OBJECTS)]
        for j in range(n):
            m = masks[i, j].numpy()
            x0, y0, x1, y1 = (boxes[i, j].numpy() * 16).tolist()
            ys, xs = np.nonzero(m > 0)
            assert xs.min() >= np.floor(x0) and xs.max() <= np.ceil(x1) - 1
            assert ys.min() >= np.floor(y0) and ys.max() <= np.ceil(y1) - 1
        assert masks[i, n:].sum() == 0


def test_render_areas_match_geometry():
    box = (0.25, 0.25, 0.75, 0.75)  # 32 px side at 64x64
    areas = {s: object_mask(SceneObject("red", s, box)).sum() for s in SHAPES}
    assert areas["square"] == pytest.approx(32 * 32, rel=0.02)
    assert areas["circle"] == pytest.approx(np.pi * 16 * 16, rel=0.03)
    assert areas["triangle"] == pytest.approx(32 * 32 / 2, rel=0.05)
    img = draw_scene([SceneObject("blue", "square", box)], background=(220, 220, 220))
    assert tuple(img[32, 32]) == (40, 70, 225) and tuple(img[2, 2]) == (220, 220, 220)


def test_bad_objects_raise():
    with pytest.raises(ValueError, match="colour"):
        SceneObject("pink", "circle", (0, 0, 0.5, 0.5))
    with pytest.raises(ValueError, match="shape"):
        SceneObject("red", "star", (0, 0, 0.5, 0.5))
    with pytest.raises(ValueError, match="x1 > x0"):
        SceneObject("red", "circle", (0.5, 0, 0.4, 0.5))
    with pytest.raises(ValueError, match="n_objects"):
        sample_objects(np.random.default_rng(0), 4)
    assert len(COLOURS) == 6


def test_flat_only_data_is_bit_identical_to_the_data_shapes_sd_was_trained_on():
    """Golden digest of scene_batch(3, 5, 24) taken before styles existed: adding the style stream must
    not move a single flat pixel, mask, box or caption."""
    import hashlib

    from worlds.shapes.data import FLAT

    for styles in ({}, {"styles": FLAT}):
        batch = scene_batch(seed=3, start=5, count=24, **styles)
        h = hashlib.sha256()
        for k in ("pixels", "masks", "valid", "boxes"):
            h.update(batch[k].numpy().tobytes())
        h.update("|".join(batch["captions"]).encode())
        assert h.hexdigest() == "ee036bd3d00ec03cb88350dedc61bf2e8ec7d1f92068be088d231d2a98a11930"


def test_styled_scenes_keep_the_flat_objects_and_name_their_style():
    from collections import Counter

    from worlds.shapes.data import check_styles, scene_style
    from worlds.shapes.styles import STYLES, parse_styled_caption, render_styled

    counts = Counter(scene_style(0, i, STYLES) for i in range(400))
    assert set(counts) == set(STYLES) and min(counts.values()) >= 70  # uniform: 100 expected each
    for i in range(40):
        flat, styled = make_scene(0, i), make_scene(0, i, styles=STYLES)
        assert styled.objects == flat.objects and styled.style == scene_style(0, i, STYLES)
        labels, style = parse_styled_caption(styled.caption)
        assert labels == flat.labels and style == styled.style
        if style == "flat":
            assert np.array_equal(styled.image, flat.image) and styled.caption == flat.caption
        else:
            assert styled.caption == f"{flat.caption}, {style} style"
            assert np.array_equal(styled.image, render_styled(flat.objects, style))
    batch = scene_batch(0, 0, 8, styles=STYLES)
    assert batch["captions"] == [make_scene(0, i, styles=STYLES).caption for i in range(8)]
    for bad in [(), ("flat", "flat"), ("flat", "sketch")]:
        with pytest.raises(ValueError, match="sketch" if "sketch" in bad else "distinct"):
            check_styles(bad)
