"""Drawing styles: flat is draw_scene, each style's defining look, determinism, captions, bad input."""

import numpy as np
import pytest

from worlds.shapes.data import make_scene, make_styled_scene
from worlds.shapes.detector import colour_labels
from worlds.shapes.render import SceneObject, draw_scene, object_mask
from worlds.shapes.styles import (
    PAPER,
    STYLE_WORDS,
    STYLES,
    check_style,
    inset_box_shape,
    parse_styled_caption,
    render_styled,
    styled_caption,
)
from worlds.shapes.tokenizer import MODEL_MAX_LENGTH, build_tokenizer
from worlds.shapes.vocab import COLOURS, SHAPES, WORDS

# A 24 px square / circle / triangle whose box starts at a fractional pixel (patterns are centre-anchored).
BOX = (10.25 / 64, 12.5 / 64, 34.25 / 64, 36.5 / 64)


def _interior(obj: SceneObject, depth: int = 3) -> np.ndarray:
    """Pixels fully inside the shape and at least ``depth`` px from its border."""
    m = object_mask(obj) >= 1.0
    for _ in range(depth):
        m = m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
    return m


@pytest.mark.parametrize("index", range(6))
def test_flat_is_draw_scene_pixel_for_pixel(index):
    scene = make_scene(seed=3, index=index)
    assert np.array_equal(render_styled(scene.objects, "flat"), draw_scene(scene.objects))
    bg = (201, 207, 199)
    flat = render_styled(scene.objects, "flat", background=bg)
    assert np.array_equal(flat, draw_scene(scene.objects, background=bg))
    assert np.array_equal(make_styled_scene(3, index, "flat")[0], scene.image)


@pytest.mark.parametrize("style", STYLES)
def test_render_is_deterministic_and_moves_with_its_object(style):
    objs = make_scene(seed=4, index=2).objects
    a, b = render_styled(objs, style), render_styled(list(objs), style)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3) and np.array_equal(a, b)
    # moving an object by whole pixels moves its drawing unchanged (the pattern travels with the box)
    obj = SceneObject("blue", "circle", BOX)
    dx, dy = 5 / 64, 3 / 64
    moved = SceneObject("blue", "circle", (BOX[0] + dx, BOX[1] + dy, BOX[2] + dx, BOX[3] + dy))
    x = render_styled([obj], style, background=(230, 230, 230))
    y = render_styled([moved], style, background=(230, 230, 230))
    assert np.array_equal(x[10:40, 8:40], y[13:43, 13:45])


@pytest.mark.parametrize("shape", SHAPES)
def test_outline_interior_is_paper_and_the_stroke_keeps_the_colour(shape):
    obj = SceneObject("purple", shape, BOX)
    img = render_styled([obj], "outline")
    inside = _interior(obj)
    assert inside.sum() > 20 and (img[inside] == PAPER).all()
    outside = object_mask(obj) == 0
    assert (img[outside] == PAPER).all()  # the stroke stays inside the box's shape
    labels = colour_labels(img)
    stroke = (labels >= 0) & ~inside
    assert stroke.sum() > 40 and set(np.unique(labels[labels >= 0])) == {COLOURS.index("purple")}


def test_hatching_is_periodic_along_the_diagonal():
    obj = SceneObject("red", "square", BOX)
    img = render_styled([obj], "hatched").astype(int)
    inside = _interior(obj)
    ys, xs = np.nonzero(inside)
    pairs = [
        (y, x) for y, x in zip(ys, xs, strict=True)
        if inside[y - 1, x + 1] and inside[y, x + 6] and inside[y + 1, x + 1]
    ]
    along = [np.array_equal(img[y, x], img[y - 1, x + 1]) for y, x in pairs]  # "/" direction
    period = [np.array_equal(img[y, x], img[y, x + 6]) for y, x in pairs]  # one period to the right
    across = [np.array_equal(img[y, x], img[y + 1, x + 1]) for y, x in pairs]  # "\" = a third of one
    assert len(pairs) > 100 and all(along) and all(period) and np.mean(across) < 0.2
    ink = 1 - img[inside][:, 1] / 255.0  # green channel: 255 on paper, ~30 on red
    assert 0.3 < ink.mean() / (1 - 30 / 255) < 0.45  # HATCH_WIDTH / HATCH_PERIOD = 0.375


def test_dots_form_a_staggered_grid_with_no_preferred_diagonal():
    obj = SceneObject("green", "square", BOX)
    img = render_styled([obj], "dotted").astype(int)
    inside = _interior(obj)
    ys, xs = np.nonzero(inside)
    ok = [
        (y, x) for y, x in zip(ys, xs, strict=True)
        if y + 6 < 64 and x + 6 < 64 and inside[y + 6, x + 3] and inside[y, x + 6]
    ]
    assert len(ok) > 80
    assert all(np.array_equal(img[y, x], img[y, x + 6]) for y, x in ok)  # period along rows
    assert all(np.array_equal(img[y, x], img[y + 6, x + 3]) for y, x in ok)  # next row, shifted half
    grey = img[:, :, 0].astype(float)
    sub = np.where(inside)
    a = grey[sub] - grey[sub].mean()
    slash = (a * (grey[sub[0] - 1, sub[1] + 1] - grey[sub].mean())).mean()
    backslash = (a * (grey[sub[0] + 1, sub[1] + 1] - grey[sub].mean())).mean()
    assert abs(slash - backslash) < 0.1 * a.var()


@pytest.mark.parametrize("style", STYLES[1:])
def test_illustration_styles_keep_colour_and_paper_ground(style):
    image, text, objects = make_styled_scene(5, 1, style)
    assert tuple(image[0, 0]) == PAPER and text.endswith(f", {style} style")
    labels = colour_labels(image)
    assert {COLOURS[i] for i in np.unique(labels[labels >= 0])} >= {o.colour for o in objects}


def test_inset_triangle_moves_every_side_inward_by_d():
    box = (0.0, 0.0, 100.0, 100.0)
    outer = inset_box_shape("triangle", box, 0.0)
    inner = inset_box_shape("triangle", box, 6.0)
    for i in range(3):  # distance from each inner vertex to the two outer sides through the same corner
        p = np.array(inner[i])
        for j in (i - 1, i + 1):
            a, b = np.array(outer[i]), np.array(outer[j % 3])
            d = abs(np.cross(b - a, p - a)) / np.linalg.norm(b - a)
            assert d == pytest.approx(6.0, abs=1e-9)
    assert inset_box_shape("triangle", (0, 0, 10, 10), 6.0) is None
    assert inset_box_shape("square", (0, 0, 10, 10), 2.0) == (2, 2, 8, 8)


def test_captions_round_trip_and_fit_the_tokenizer():
    pairs = [("red", "circle"), ("blue", "square"), ("yellow", "triangle")]
    assert styled_caption(pairs) == "a red circle, a blue square and a yellow triangle"
    for style in STYLES:
        text = styled_caption(pairs, style)
        assert parse_styled_caption(text) == (pairs, style)
    assert parse_styled_caption("a red circle, outline style") == ([("red", "circle")], "outline")
    # the vocabulary change the model side needs: new words are single tokens and the longest
    # styled caption still fits the 16-token context (11 words + 3 style words + BOS + EOS)
    assert not set(STYLE_WORDS) & set(WORDS)
    tok = build_tokenizer(WORDS + STYLE_WORDS)
    ids = tok(styled_caption(pairs, "hatched")).input_ids
    assert len(ids) == MODEL_MAX_LENGTH


def test_bad_style_names_the_allowed_ones():
    obj = [SceneObject("red", "circle", BOX)]
    calls = (
        lambda: render_styled(obj, "neon"), lambda: styled_caption(obj, "Outline"), lambda: check_style("")
    )
    for call in calls:
        with pytest.raises(ValueError, match="flat.*outline.*hatched.*dotted"):
            call()
    for text in ("a red circle, flat style", "a red circle, neon style", "a red circle outline style"):
        with pytest.raises(ValueError, match="outline"):
            parse_styled_caption(text)
    with pytest.raises(ValueError, match="background array"):
        render_styled(obj, "outline", background=np.zeros((64, 64, 3), np.uint8))
