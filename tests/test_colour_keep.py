"""pipelines.colour_keep: stroke colours from the content, geometry from the output, paper untouched."""

import numpy as np
from PIL import Image

from pipelines.colour_keep import MIN_INK, border_median, keep_content_colours
from worlds.shapes.render import SceneObject
from worlds.shapes.style_classifier import detect_styled
from worlds.shapes.styles import render_styled

BOXES = ((0.1, 0.1, 0.45, 0.45), (0.55, 0.5, 0.9, 0.85))


def scene(colours: tuple[str, str], style: str, boxes=BOXES) -> np.ndarray:
    objects = zip(colours, ("circle", "square"), boxes, strict=True)
    return render_styled([SceneObject(c, s, b) for c, s, b in objects], style)


def ink(image: np.ndarray) -> np.ndarray:
    x = image.astype(np.float32)
    return np.linalg.norm(x - border_median(x), axis=-1) > MIN_INK


def test_strokes_take_the_content_colours_and_keep_their_style_and_shape():
    content = scene(("red", "blue"), "flat")
    for style in ("outline", "hatched", "dotted"):
        styled_wrong = scene(("green", "yellow"), style)  # the style's palette on the content's layout
        kept = np.asarray(keep_content_colours(Image.fromarray(styled_wrong), Image.fromarray(content)))
        found = sorted((d.colour, d.shape, d.style) for d in detect_styled(kept))
        assert found == [("blue", "square", style), ("red", "circle", style)]
        np.testing.assert_array_equal(ink(kept), ink(styled_wrong))  # the strokes stay where they were
        paper = ~ink(styled_wrong)
        np.testing.assert_array_equal(kept[paper], styled_wrong[paper])  # paper is left alone


def test_geometry_is_never_taken_from_the_content():
    content = scene(("red", "blue"), "flat")
    moved = scene(("green", "yellow"), "outline", boxes=((0.1, 0.1, 0.45, 0.45), (0.1, 0.55, 0.4, 0.85)))
    kept = np.asarray(keep_content_colours(Image.fromarray(moved), Image.fromarray(content)))
    found = {d.colour: d for d in detect_styled(kept)}
    assert found["red"].shape == "circle"  # on the content's red circle: recoloured
    assert "yellow" in found and "blue" not in found  # a stroke far from every content object: as drawn
    np.testing.assert_array_equal(ink(kept), ink(moved))


def test_matching_colours_change_little_and_sizes_may_differ():
    content = scene(("red", "blue"), "flat")
    same = scene(("red", "blue"), "hatched")
    kept = np.asarray(keep_content_colours(Image.fromarray(same), Image.fromarray(content)))
    assert np.abs(kept.astype(int) - same).mean() < 3.0
    big = Image.fromarray(content).resize((128, 128), Image.Resampling.NEAREST)
    assert keep_content_colours(Image.fromarray(same), big).size == (64, 64)
    blank = np.full((64, 64, 3), 255, np.uint8)  # no content objects: nothing to take a colour from
    untouched = keep_content_colours(Image.fromarray(same), Image.fromarray(blank))
    np.testing.assert_array_equal(np.asarray(untouched), same)
