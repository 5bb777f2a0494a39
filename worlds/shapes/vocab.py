"""The closed vocabulary of the synthetic "shapes" world shared by the image and video models.

Both shipped models, their tokenizers, data generators and detectors read these constants, so a
word, colour or shape is defined exactly once.
"""

from __future__ import annotations

from typing import Literal

Shape = Literal["circle", "square", "triangle"]
Colour = Literal["red", "green", "blue", "yellow", "purple", "orange"]
Direction = Literal["left", "right", "up", "down"]

SHAPES: tuple[Shape, ...] = ("circle", "square", "triangle")
COLOURS: tuple[Colour, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
DIRECTIONS: tuple[Direction, ...] = ("left", "right", "up", "down")

# Reference RGB per colour: far apart in hue and saturation, and bright enough that a
# colour-segmentation detector separates them from the light background (the prototype's dark
# green was under-produced by the model).
COLOUR_RGB: dict[Colour, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 180, 60),
    "blue": (40, 70, 225),
    "yellow": (235, 205, 20),
    "purple": (145, 50, 190),
    "orange": (245, 130, 20),
}

# Every word a caption may use: articles/conjunctions, colours, shapes and motion words.
FUNCTION_WORDS: tuple[str, ...] = ("a", "and", ",", "moving")
WORDS: tuple[str, ...] = FUNCTION_WORDS + COLOURS + SHAPES + DIRECTIONS


def object_phrase(colour: str, shape: str, direction: str | None = None) -> str:
    """'a red circle' or, for video, 'a red circle moving right'."""
    phrase = f"a {colour} {shape}"
    return f"{phrase} moving {direction}" if direction else phrase


def caption(phrases: list[str]) -> str:
    """Join object phrases with the project's exact grammar.

    >>> caption(["a red circle", "a blue square", "a yellow triangle"])
    'a red circle, a blue square and a yellow triangle'
    """
    if not phrases:
        raise ValueError("a caption needs at least one object phrase")
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def parse_caption(text: str) -> list[tuple[str, str]]:
    """Inverse of ``caption`` for image captions: the (colour, shape) of each object phrase.

    >>> parse_caption("a red circle, a blue square and a yellow triangle")
    [('red', 'circle'), ('blue', 'square'), ('yellow', 'triangle')]
    """
    words = text.replace(",", " , ").split()
    objects: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        if objects:
            sep = words[i]
            if sep not in (",", "and"):
                raise ValueError(f"expected ',' or 'and' before word {i} of {text!r}, got {sep!r}")
            i += 1
        phrase = words[i : i + 3]
        if len(phrase) != 3 or phrase[0] != "a" or phrase[1] not in COLOURS or phrase[2] not in SHAPES:
            raise ValueError(
                f"{text!r} is not a shapes caption; write e.g. 'a red circle and a blue square' "
                f"(colours {COLOURS}, shapes {SHAPES})"
            )
        objects.append((phrase[1], phrase[2]))
        i += 3
    if not objects:
        raise ValueError("empty caption; write e.g. 'a red circle'")
    if caption([f"a {c} {s}" for c, s in objects]) != " ".join(text.split()).replace(" ,", ","):
        raise ValueError(
            f"{text!r} does not follow the grammar 'a red circle, a blue square and a yellow triangle'"
        )
    return objects
