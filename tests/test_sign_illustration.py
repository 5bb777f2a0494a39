"""pipelines/sign_illustration.py: clips in (MP4 or folder), bad input as one clear ValueError each, and
the whole pipeline end to end on a moving-shapes clip with a small model (stages 1 and 2, arrows, PNG,
MP4)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipelines import sign_illustration as si
from worlds.moving_shapes.data import sample_video


@pytest.fixture(scope="module")
def clip():
    return sample_video(np.random.default_rng(4), num_objects=2, direction="right")


class NoStyler:
    """Bad input must be refused before any model runs."""

    image_size = 64

    def __call__(self, *a, **k):
        raise AssertionError("the model must not run for bad input")

    combine = __call__


class RecordingStyler:
    """Records what the pipeline hands to stage 1 and stage 2 (the wiring, without a model)."""

    image_size = 32

    def __init__(self) -> None:
        self.contents: list[np.ndarray] = []
        self.combined: list[tuple] = []

    def __call__(self, content, style, **kwargs):
        self.contents.append(np.asarray(content))
        return SimpleNamespace(image=content, kwargs=kwargs)

    def combine(self, start, end, masks, *, mode=None):
        self.combined.append((start, end, masks, mode))
        return Image.new("RGB", (32, 32), "white")


def write_folder(frames: np.ndarray, folder) -> None:
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"frame_{i}.png")


def test_reads_a_folder_in_natural_order_and_an_mp4(clip, tmp_path):
    write_folder(clip.frames, tmp_path / "frames")  # frame_10.png would sort before frame_2.png by name
    np.testing.assert_array_equal(si.read_frames(tmp_path / "frames"), clip.frames)
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "clip.mp4", clip.frames, fps=4, plugin="pyav", codec="libx264")
    frames = si.read_frames(tmp_path / "clip.mp4")
    assert frames.shape == clip.frames.shape
    assert np.abs(frames.astype(int) - clip.frames).mean() < 6  # lossy H.264


def test_bad_input_raises_one_clear_error_each(clip, tmp_path):
    pipe = si.SignIllustrationPipeline(NoStyler())
    style = tmp_path / "style.png"
    Image.new("RGB", (64, 64), "white").save(style)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    cases = [
        (dict(video=tmp_path / "missing.mp4", style=style), "does not exist; give an MP4 file or a folder"),
        (dict(video=tmp_path / "broken.mp4", style=style), "could not read .*broken.mp4.* as a video"),
        (dict(video=clip.frames[:1], style=style), "at least 2 frames"),
        (dict(video=clip.frames, style=style, start=5, end=5), "start frame 5 must come before end frame 5"),
        (dict(video=clip.frames, style=style, start=6, end=2), "give start < end"),
        (dict(video=clip.frames, style=style, end=40), "end frame 40 is outside the clip's frames 0..8"),
        (dict(video=clip.frames, style=tmp_path / "nope.png"), "style image .*nope.png.* does not exist"),
        (dict(video=clip.frames, style=style, combination="blend"), "combination 'blend'; use one of"),
        (dict(video=np.repeat(clip.frames[:1], 5, 0), style=style), "give the start and end frames by index"),
    ]
    for kwargs, message in cases:
        video, style_arg = kwargs.pop("video"), kwargs.pop("style")
        with pytest.raises(ValueError, match=message):
            pipe(video, style_arg, **kwargs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .png"):
        si.read_frames(tmp_path / "empty")


def test_cli_reports_bad_input_without_a_traceback(clip, tmp_path, capsys):
    write_folder(clip.frames, tmp_path / "frames")
    with pytest.raises(SystemExit) as info:
        si.main([str(tmp_path / "frames"), "--style", str(tmp_path / "none.png"),
                 "--out", str(tmp_path / "o.png")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "style image" in err and "does not exist" in err and "Traceback" not in err


def test_crop_maps_masks_and_arrows_onto_the_model_grid():
    crop = si.Crop.centre(48, 80, 24)  # a wide frame: the centre 48 x 48 square, halved
    assert (crop.x0, crop.y0, crop.side) == (16, 0, 48)
    mask = np.zeros((48, 80), bool)
    mask[10:20, 30:40] = True
    small = crop.mask(mask)
    assert set(np.unique(small)) == {0.0, 1.0}
    ys, xs = np.nonzero(small)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (5, 9, 7, 11)


def test_end_to_end_on_a_moving_shapes_clip(clip, tmp_path, capsys):
    """CLI: folder of frames + style image -> PNG with one arrow per moving shape, and an overlay MP4."""
    from worlds.shapes.render import SceneObject
    from worlds.shapes.styles import render_styled

    write_folder(clip.frames, tmp_path / "frames")
    Image.fromarray(render_styled([SceneObject("green", "square", (0.3, 0.3, 0.7, 0.7))], "outline")).save(
        tmp_path / "style.png")
    out, overlay = tmp_path / "sign.png", tmp_path / "sign.mp4"
    result = si.main([str(tmp_path / "frames"), "--style", str(tmp_path / "style.png"), "--out", str(out),
                      "--model", "assets/shapes-sd", "--steps", "2", "--overlay", str(overlay)])
    assert "frames 0..8, 2 arrow(s)" in capsys.readouterr().out
    assert (result.start, result.end) == (0, len(clip.frames) - 1)  # steady motion: the whole clip
    image = np.asarray(Image.open(out))
    assert image.shape == (512, 512, 3)
    assert result.start_image.size == result.combined.size == (64, 64)
    # hand masks: the two moving shapes' pixels in the start and end frames, on the model's grid
    for mask, t in zip(result.hand_masks, (0, 8), strict=True):
        np.testing.assert_array_equal(mask, np.any([tr.masks[t] for tr in result.tracks], axis=0))
        for obj in clip.objects:  # the mask covers each shape's box at that frame
            x0, y0, x1, y1 = np.round(obj.boxes[t]).astype(int)
            assert mask[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].mean() > 0.5
    words = {o.colour: o.direction for o in clip.objects}
    angles = {"right": 0.0, "left": 180.0, "up": -90.0, "down": 90.0}
    got = sorted(round(a.head_angle() / 90) * 90 % 360 for a in result.arrows)
    assert got == sorted(round(angles[w] / 90) * 90 % 360 for w in words.values())
    for arrow in result.arrows:  # each head is drawn in red where the arrow says
        x, y = np.round(arrow.tip - (arrow.tip - arrow.head[1:].mean(0)) * 0.3).astype(int)
        assert (image[y - 1 : y + 2, x - 1 : x + 2] == [220, 20, 20]).all(-1).any()
    import imageio.v3 as iio

    video = iio.imread(overlay, plugin="pyav")
    assert video.shape == (len(clip.frames), 256, 512, 3)


@pytest.mark.parametrize(("combination", "mode"), [("fused", None), ("start", "start"), ("end", "end")])
def test_stage_one_gets_the_span_frames_and_stage_two_the_moving_masks(clip, combination, mode):
    styler = RecordingStyler()
    style = Image.new("RGB", (32, 32), "white")
    result = si.SignIllustrationPipeline(styler)(clip.frames, style, start=2, end=7, combination=combination,
                                                 seed=5, num_inference_steps=3, out_size=None)
    crop = si.Crop.centre(64, 64, 32)
    np.testing.assert_array_equal(styler.contents[0], np.asarray(crop.image(clip.frames[2])))
    np.testing.assert_array_equal(styler.contents[1], np.asarray(crop.image(clip.frames[7])))
    (start, end, masks, got_mode), = styler.combined
    assert got_mode == mode and start.kwargs == end.kwargs
    assert start.kwargs["seed"] == 5 and start.kwargs["num_inference_steps"] == 3
    assert len(masks) == 2 and all(m.shape == (32, 32) for m in masks)
    for m, t in zip(masks, (2, 7), strict=True):  # the moving shapes' pixels at that frame, halved
        np.testing.assert_array_equal(m, crop.mask(np.any([tr.masks[t] for tr in result.tracks], axis=0)))
    assert len(result.arrows) == 2 and result.image.size == (32, 32)
