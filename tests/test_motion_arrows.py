"""Motion tracking and arrows (pipelines/motion.py, pipelines/arrows.py): the spline follows the smoothed
path, the head sits at the end pointing along the last segment, static parts get no arrow, and on the
moving-shapes world the arrow points the way the caption says."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.arrows import angle_between, draw_arrows, fit_spline, make_arrow, smooth_path
from pipelines.motion import check_frames, find_span, foreground, track_parts
from worlds.moving_shapes.data import MovingObject, render_frames, sample_video

WORD_ANGLE = {"right": 0.0, "down": 90.0, "left": 180.0, "up": -90.0}


def point_to_polyline(p: np.ndarray, line: np.ndarray) -> float:
    """Distance from a point to the nearest segment of a poly-line."""
    a, b = line[:-1], line[1:]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0, 1)
    return float(np.linalg.norm(a + t[:, None] * ab - p, axis=1).min())


def noisy_arc(n: int = 15, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    theta = np.linspace(0, np.pi / 2, n)
    return np.stack([32 + 20 * np.cos(theta), 40 - 20 * np.sin(theta)], 1) + rng.normal(0, 0.6, (n, 2))


@pytest.mark.parametrize("method", ["savgol", "moving_average", "none"])
def test_spline_passes_within_one_pixel_of_the_smoothed_control_points(method):
    arrow = make_arrow(noisy_arc(), (64, 64), smoothing_method=method)
    assert arrow is not None
    dists = [point_to_polyline(p, arrow.line) for p in arrow.control]
    assert max(dists) <= 1.0
    # the control points are the smoothed centres, not the raw ones
    np.testing.assert_allclose(arrow.control, smooth_path(noisy_arc(), method))


def test_smoothing_reduces_jitter_and_keeps_a_straight_line():
    line = np.stack([np.linspace(5, 50, 11), np.full(11, 20.0)], 1)
    jitter = line + np.random.default_rng(1).normal(0, 1.0, line.shape)
    for method in ("savgol", "moving_average"):
        smooth = smooth_path(jitter, method)
        assert np.abs(smooth[:, 1] - 20).mean() < np.abs(jitter[:, 1] - 20).mean()
        np.testing.assert_allclose(smooth_path(line, method)[2:-2], line[2:-2], atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_arrowhead_sits_at_the_end_and_points_along_the_last_segment(seed):
    arrow = make_arrow(noisy_arc(seed=seed), (64, 64))
    np.testing.assert_allclose(arrow.tip, arrow.line[-1])
    assert np.linalg.norm(arrow.tip - arrow.control[-1]) <= 1.0
    axis = arrow.head[0] - (arrow.head[1] + arrow.head[2]) / 2
    assert angle_between(axis, arrow.line[-1] - arrow.line[-2]) <= 5.0
    # the barbs are symmetric about the axis and behind the tip
    assert np.isclose(np.linalg.norm(arrow.head[1] - arrow.tip), np.linalg.norm(arrow.head[2] - arrow.tip))
    assert ((arrow.head[1:] - arrow.tip) @ axis < 0).all()


def test_straight_path_head_points_along_the_motion():
    path = np.stack([np.linspace(50, 10, 9), np.linspace(12, 52, 9)], 1)  # down-left at 135 degrees
    arrow = make_arrow(path, (64, 64))
    assert abs(arrow.head_angle() - 135.0) <= 5.0
    assert angle_between(arrow.head[0] - arrow.line[-2], path[-1] - path[-2]) <= 5.0


def test_a_nearly_static_path_gets_no_arrow():
    rng = np.random.default_rng(0)
    still = np.full((9, 2), 30.0) + rng.normal(0, 0.3, (9, 2))
    assert make_arrow(still, (64, 64)) is None  # diagonal 90.5 px: 3 % is 2.7 px
    # the threshold is the path length: 3 px of travel on a 64 px frame just clears it
    short = np.stack([np.linspace(30, 33, 9), np.full(9, 30.0)], 1)
    assert make_arrow(short, (64, 64)) is not None
    assert make_arrow(short, (128, 128)) is None


def clip_with_static_part(hold: int = 3, move: int = 6) -> tuple[np.ndarray, int, int]:
    """A red square that holds, moves right for ``move`` frames and holds; a blue circle that never moves."""
    steps = 8.0 + 3.0 * np.arange(1, move + 1)
    xs = np.concatenate([np.full(hold, 8.0), steps, np.full(hold, steps[-1])])
    moving = np.stack([xs, np.full_like(xs, 6.0), xs + 16, np.full_like(xs, 22.0)], 1)
    still = np.tile([[36.0, 40.0, 54.0, 58.0]], (len(xs), 1))
    objs = [MovingObject("red", "square", "right", moving), MovingObject("blue", "circle", "up", still)]
    frames = render_frames(objs, np.full(3, 225.0, np.float32), 64,
                           [np.array([220.0, 30, 30]), np.array([40.0, 70, 225])])
    return frames, hold - 1, hold + move - 1  # the frames before the first and at the last step


def test_static_part_is_tracked_but_gets_no_arrow_and_the_span_is_the_stroke():
    frames, start, end = clip_with_static_part()
    tracks = track_parts(frames)
    assert len(tracks) == 2 and all(t.present.all() for t in tracks)
    arrows = {int(np.argmax(t.colour)): make_arrow(t.path(), (64, 64)) for t in tracks}
    assert arrows[2] is None  # blue: static
    assert abs(arrows[0].head_angle()) <= 5.0  # red: moving right
    assert find_span(tracks) == (start, end)


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_arrow_direction_matches_the_clips_motion_word(direction):
    for seed in range(3):
        clip = sample_video(np.random.default_rng(seed), num_objects=2, direction=direction)
        tracks = track_parts(clip.frames)
        assert len(tracks) == 2
        for obj in clip.objects:
            ref = np.array(clip.frames[0][tuple(np.round(obj.boxes[0, [1, 0]] + 8).astype(int))], float)
            track = min(tracks, key=lambda t: np.linalg.norm(t.colour - ref))
            arrow = make_arrow(track.path(), clip.frames.shape[1:3])
            assert arrow is not None
            err = abs((arrow.head_angle() - WORD_ANGLE[obj.direction] + 180) % 360 - 180)
            assert err <= 10.0, (seed, obj.direction, arrow.head_angle())
        assert find_span(tracks) == (0, len(clip.frames) - 1)  # steady motion: the whole clip


def test_drawn_arrow_is_red_at_the_head_and_leaves_the_rest():
    arrow = make_arrow(np.stack([np.linspace(10, 50, 9), np.full(9, 32.0)], 1), (64, 64))
    img = draw_arrows(Image.new("RGB", (64, 64), "white"), [arrow], width=2)
    a = np.asarray(img)
    tip_side = a[30:35, 44:49]
    assert (tip_side == [220, 20, 20]).all(-1).sum() >= 5
    assert (a[:20] == 255).all() and (a[45:] == 255).all()
    big = draw_arrows(Image.new("RGB", (256, 256), "white"), [arrow.scaled(4, 4)])
    assert (np.asarray(big)[120:136, 176:196] == [220, 20, 20]).all(-1).any()


def test_bad_inputs_raise_one_clear_error():
    with pytest.raises(ValueError, match="at least 2 frames"):
        check_frames(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        check_frames(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="at least 2 frames"):
        foreground(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="smoothing 'spline'"):
        smooth_path(np.zeros((5, 2)), "spline")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="give the start and end frames by index"):
        find_span([])
    frames, _, _ = clip_with_static_part()
    with pytest.raises(ValueError, match="nothing moves"):
        find_span(track_parts(np.repeat(frames[:1], 4, axis=0)))
    assert len(fit_spline(np.array([[1.0, 1.0], [1.0, 1.0]]))) == 1
