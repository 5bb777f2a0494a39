"""Sign illustration (IlluSign): a sign clip in, one stylised picture of the sign with motion arrows out.

    python -m pipelines.sign_illustration clip.mp4 --style sketch.png --out sign.png --overlay sign.mp4

The steps, top to bottom in ``SignIllustrationPipeline.__call__``:

1. frames from an MP4 (any container PyAV reads) or a folder of PNG/JPEG frames (``read_frames``);
2. the moving parts tracked offline (``pipelines.motion``: backdrop subtraction + connected
   components, no model download); the sign's start and end frames given by index or found from
   the motion (``find_span``: the stroke between the holds);
3. stage 1: the start and the end frame (centre square crop) each stylised with the style image by
   ``StyleTransferPipeline`` (IlluSign's style injection, or any peer mode of ``StyleConfig``);
4. stage 2: the two illustrations combined softly (``StyleTransferPipeline.combine``): ``"start"``
   or ``"end"`` alone, or ``"fused"``: the config's stage-2 formula with the hand masks = the
   moving parts' masks in the start and end frames;
5. one red spline arrow per moving part along its smoothed path between start and end
   (``pipelines.arrows``; parts that travel < 3 % of the diagonal get none); PNG out, and with
   ``overlay`` an MP4 showing each frame with its path so far beside the illustration.

On the moving-shapes world (``worlds.moving_shapes``) the moving shape stands in for the hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from .arrows import Arrow, draw_arrows, make_arrow
from .motion import Track, check_frames, find_span, track_parts

if TYPE_CHECKING:  # the model stack loads only when a pipeline is built
    from attn_processors.style import StyleConfig

    from .style_transfer import StyleTransferPipeline

Combination = Literal[
    "fused",  # the stage-2 formula of the config (default "query") with the moving parts as hand masks
    "start",  # the start illustration alone
    "end",  # the end illustration alone
]
COMBINATIONS: tuple[Combination, ...] = ("fused", "start", "end")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


# --------------------------------------------------------------------------------------- inputs
def _natural_key(path: Path) -> list[object]:
    """frame_2.png before frame_10.png."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", path.name)]


def read_frames(source: str | Path | np.ndarray) -> np.ndarray:
    """An MP4 file, a folder of frames or a (T, H, W, 3) array -> (T, H, W, 3) uint8 RGB.

    Raises one ValueError naming the path and what to give instead when the file is missing or
    unreadable, a folder holds no frames or frames of different sizes, or there are < 2 frames.
    """
    if isinstance(source, np.ndarray):
        return check_frames(source)
    path = Path(source)
    if not path.exists():
        raise ValueError(
            f"video {str(path)!r} does not exist; give an MP4 file or a folder of PNG/JPEG frames"
        )
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=_natural_key)
        if not files:
            raise ValueError(f"folder {str(path)!r} holds no {'/'.join(FRAME_SUFFIXES)} frames; "
                             "put the clip's frames there (sorted by name) or give an MP4 file")
        frames = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        sizes = {f.shape for f in frames}
        if len(sizes) > 1:
            raise ValueError(
                f"frames in {str(path)!r} differ in size {sorted(sizes)}; resize them to one size"
            )
        return check_frames(np.stack(frames))
    import imageio.v3 as iio

    try:
        frames = iio.imread(path, plugin="pyav")
    except Exception as err:  # PyAV raises many types for a file it cannot decode
        raise ValueError(f"could not read {str(path)!r} as a video ({type(err).__name__}: {err}); "
                         "give an MP4 (H.264) file or a folder of PNG/JPEG frames") from err
    frames = np.asarray(frames)
    if frames.ndim == 3:  # a single decoded frame comes back without the time axis
        frames = frames[None]
    return check_frames(frames[..., :3])


def check_span(num_frames: int, start: int | None, end: int | None) -> tuple[int | None, int | None]:
    """Validate user-given start/end frame indices (None = find from the motion)."""
    for name, value in (("start", start), ("end", end)):
        if value is not None and not 0 <= value < num_frames:
            raise ValueError(f"{name} frame {value} is outside the clip's frames 0..{num_frames - 1}; "
                             "give an index in that range")
    if start is not None and end is not None and start >= end:
        raise ValueError(f"start frame {start} must come before end frame {end}; give start < end")
    return start, end


def load_style(style: str | Path | Image.Image) -> Image.Image:
    """The style image as RGB, or a ValueError naming the missing / unreadable file."""
    if isinstance(style, Image.Image):
        return style.convert("RGB")
    path = Path(style)
    if not path.is_file():
        raise ValueError(
            f"style image {str(path)!r} does not exist; give the path of a PNG/JPEG style image"
        )
    try:
        return Image.open(path).convert("RGB")
    except OSError as err:
        raise ValueError(f"could not read style image {str(path)!r} ({err}); give a PNG/JPEG file") from err


# ------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Crop:
    """The centre square of a frame (IlluSign works on a centre crop) and its scale to the model."""

    x0: int
    y0: int
    side: int
    size: int  # the model's image size

    @classmethod
    def centre(cls, height: int, width: int, size: int) -> Crop:
        side = min(height, width)
        return cls((width - side) // 2, (height - side) // 2, side, size)

    def image(self, frame: np.ndarray) -> Image.Image:
        sq = frame[self.y0 : self.y0 + self.side, self.x0 : self.x0 + self.side]
        return Image.fromarray(sq).resize((self.size, self.size), Image.Resampling.BICUBIC)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """A frame mask -> (size, size) float32 in {0, 1} on the model's grid (nearest)."""
        sq = mask[self.y0 : self.y0 + self.side, self.x0 : self.x0 + self.side].astype(np.uint8) * 255
        return (np.asarray(Image.fromarray(sq).resize((self.size, self.size), Image.Resampling.NEAREST)) > 127
                ).astype(np.float32)

    def arrow(self, arrow: Arrow) -> Arrow:
        """An arrow in frame pixels -> the model image's pixels."""
        shift = np.array([self.x0, self.y0], float)
        s = self.size / self.side
        return Arrow((arrow.control - shift) * s, (arrow.line - shift) * s, (arrow.head - shift) * s)


# -------------------------------------------------------------------------------------- pipeline
@dataclass
class SignIllustration:
    """What the pipeline made: ``image`` is the picture to show (combination + arrows)."""

    image: Image.Image
    combined: Image.Image  # stage 2, before the arrows
    start_image: Image.Image  # stage 1 of the start frame
    end_image: Image.Image  # stage 1 of the end frame
    start: int
    end: int
    arrows: list[Arrow]  # in the pixels of ``image``
    tracks: list[Track]  # in the frames' pixels
    hand_masks: tuple[np.ndarray, np.ndarray]  # (size, size) moving-part masks at start and end


def moving_tracks(
    tracks: list[Track], start: int, end: int, shape: tuple[int, int]
) -> list[tuple[Track, Arrow]]:
    """The tracks that move between ``start`` and ``end``, each with its arrow (frame pixels)."""
    out = []
    for track in tracks:
        arrow = make_arrow(track.path(start, end), shape)
        if arrow is not None:
            out.append((track, arrow))
    return out


def locate(
    frames: np.ndarray, start: int | None, end: int | None
) -> tuple[int, int, list[tuple[Track, Arrow]]]:
    """The sign's span (given indices win, missing ones come from the motion) and its moving parts."""
    start, end = check_span(len(frames), start, end)
    tracks = track_parts(frames)
    if start is None or end is None:
        found = find_span(tracks)
        start = found[0] if start is None else start
        end = found[1] if end is None else end
        check_span(len(frames), start, end)
    return start, end, moving_tracks(tracks, start, end, frames.shape[1:3])


def hand_mask(moving: list[tuple[Track, Arrow]], frame: int, crop: Crop) -> np.ndarray:
    """Union of the moving parts' masks in ``frame`` on the model's grid: the stage-2 hand mask."""
    masks = [crop.mask(track.masks[frame]) for track, _ in moving]
    return np.maximum.reduce(masks) if masks else np.zeros((crop.size, crop.size), np.float32)


class SignIllustrationPipeline:
    """Stage 1 and 2 through a ``StyleTransferPipeline``; tracking, span and arrows around them.

    >>> pipe = SignIllustrationPipeline.from_pretrained("assets/shapes-style-sd")  # doctest: +SKIP
    >>> result = pipe("clip.mp4", "style.png", num_inference_steps=20)  # doctest: +SKIP
    >>> result.image.save("sign.png")  # doctest: +SKIP
    """

    def __init__(self, styler: StyleTransferPipeline) -> None:
        self.styler = styler

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> SignIllustrationPipeline:
        from .style_transfer import StyleTransferPipeline

        return cls(StyleTransferPipeline.from_pretrained(path, **kwargs))

    @property
    def size(self) -> int:
        """The model's image side in pixels."""
        return int(self.styler.image_size)

    def __call__(
        self,
        video: str | Path | np.ndarray,
        style: str | Path | Image.Image,
        *,
        start: int | None = None,
        end: int | None = None,
        combination: Combination = "fused",
        config: StyleConfig | None = None,
        prompt: str = "",
        seed: int = 0,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        out_size: int | None = 512,
    ) -> SignIllustration:
        """Illustrate the sign in ``video`` with the look of ``style``; None frames: found from the motion.

        ``config``/``prompt``/``seed``/``num_inference_steps``/``guidance_scale`` go to both
        stylisations (``StyleTransferPipeline.__call__``; None steps: its default). ``out_size``: the
        side of ``image`` (the illustration upsampled so the arrows are drawn smoothly; None: the
        model's size); ``arrows`` are in its pixels.
        """
        if combination not in COMBINATIONS:
            raise ValueError(f"combination {combination!r}; use one of {COMBINATIONS}")
        if out_size is not None and out_size < 16:
            raise ValueError(f"out_size {out_size} is too small to draw arrows on; give >= 16 or None")
        style_image = load_style(style)
        frames = read_frames(video)
        start, end, moving = locate(frames, start, end)
        crop = Crop.centre(*frames.shape[1:3], self.size)
        hands = tuple(hand_mask(moving, i, crop) for i in (start, end))
        call = dict(config=config, prompt=prompt, seed=seed, guidance_scale=guidance_scale)
        if num_inference_steps is not None:
            call["num_inference_steps"] = num_inference_steps
        first = self.styler(crop.image(frames[start]), style_image, **call)
        last = self.styler(crop.image(frames[end]), style_image, **call)
        # fused: the config's stage-2 mode (None lets combine read it); start / end: that frame alone
        mode = None if combination == "fused" else combination
        combined = self.styler.combine(first, last, list(hands), mode=mode)
        side = out_size or combined.width
        canvas = combined.resize((side, side), Image.Resampling.BICUBIC)
        arrows = [crop.arrow(a).scaled(side / self.size, side / self.size) for _, a in moving]
        image = draw_arrows(canvas, arrows)
        return SignIllustration(image, combined, first.image, last.image, start, end, arrows,
                                [t for t, _ in moving], hands)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- outputs
def overlay_frames(frames: np.ndarray, result: SignIllustration, panel: int = 256) -> np.ndarray:
    """(n, panel, 2 * panel, 3): each frame of the span with its path so far | the illustration."""
    crop = Crop.centre(*frames.shape[1:3], panel)
    right = np.asarray(result.image.resize((panel, panel), Image.Resampling.BICUBIC))
    out = []
    for t in range(result.start, result.end + 1):
        so_far = [make_arrow(tr.path(result.start, t), frames.shape[1:3], min_fraction=0.0)
                  for tr in result.tracks]
        left = draw_arrows(crop.image(frames[t]), [crop.arrow(a) for a in so_far if a is not None])
        out.append(np.concatenate([np.asarray(left), right], axis=1))
    return np.stack(out)


def write_overlay(path: str | Path, frames: np.ndarray, result: SignIllustration, fps: float = 4.0) -> Path:
    """The overlay as an H.264 MP4 (PyAV)."""
    import imageio.v3 as iio

    path = Path(path)
    iio.imwrite(path, overlay_frames(frames, result), fps=fps, plugin="pyav", codec="libx264")
    return path


# ------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> SignIllustration:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", help="an MP4 file or a folder of PNG/JPEG frames")
    p.add_argument("--style", required=True, help="the style image (PNG/JPEG)")
    p.add_argument("--out", required=True, help="where to write the illustration (PNG)")
    p.add_argument("--model", default="assets/shapes-style-sd", help="the image model folder")
    p.add_argument("--start", type=int, default=None, help="start frame index (default: from the motion)")
    p.add_argument("--end", type=int, default=None, help="end frame index (default: from the motion)")
    p.add_argument("--combination", choices=COMBINATIONS, default="fused")
    p.add_argument("--mode", default="illusign",
                   help="StyleConfig mode: illusign, style_id, kv_swap or style_aligned")
    p.add_argument("--prompt", default="", help="the prompt both frames are inverted and denoised with")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overlay", default=None, help="also write an overlay MP4 here")
    p.add_argument("--fps", type=float, default=4.0, help="frames per second of the overlay MP4")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps {args.steps}: give a positive integer")
    try:
        frames = read_frames(args.video)  # bad input is refused before the model loads
        load_style(args.style)
        check_span(len(frames), args.start, args.end)
        from attn_processors.style import StyleConfig

        config = StyleConfig(mode=args.mode)
        pipe = SignIllustrationPipeline.from_pretrained(args.model)
        result = pipe(frames, args.style, start=args.start, end=args.end, combination=args.combination,
                      config=config, prompt=args.prompt, seed=args.seed, num_inference_steps=args.steps)
    except ValueError as err:
        p.error(str(err))
    result.image.save(args.out)
    print(f"frames {result.start}..{result.end}, {len(result.arrows)} arrow(s) -> {args.out}")
    if args.overlay:
        print(f"overlay -> {write_overlay(args.overlay, frames, result, args.fps)}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
