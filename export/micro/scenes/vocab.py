"""The vocabulary of the scene world: attribute values, their colours, and the structured label.

Every scene shows one to three shapes that share a colour, a shape and a size, drawn on a plain
background. A single shape also has a position (where on the canvas it sits); a group of two or
three shapes is spread over the canvas and has none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "red": (220, 30, 35),
    "green": (35, 165, 60),
    "blue": (35, 75, 225),
    "yellow": (245, 220, 30),
    "orange": (250, 135, 20),
    "purple": (135, 45, 180),
    "white": (248, 248, 248),
    "black": (18, 18, 18),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COUNTS: dict[int, str] = {1: "one", 2: "two", 3: "three"}
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUNDS: dict[str, RGB] = {
    "white": (250, 250, 250),
    "gray": (128, 128, 128),
    "black": (12, 12, 12),
    "beige": (225, 205, 160),
}
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "middle")
# The values of each attribute of a label or query, in a fixed order (field order of SceneLabel).
ATTRIBUTE_VALUES: dict[str, tuple[str | int, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": tuple(COUNTS),
    "size": SIZES,
    "background": tuple(BACKGROUNDS),
    "position": POSITIONS,
}

# Colour-shape pairs left out of training and kept for evaluation: every colour and every shape is
# still seen in training, only these pairings are new to the model.
HELD_OUT_COMBOS: tuple[tuple[str, str], ...] = (
    ("red", "star"),
    ("green", "triangle"),
    ("blue", "circle"),
    ("yellow", "square"),
    ("purple", "star"),
    ("white", "triangle"),
)

# A background must differ from the shape colour by at least this RGB distance.
_MIN_CONTRAST = 110.0


def plural(shape: str) -> str:
    """The plural noun of a shape name (all shape names take a plain ``s``)."""
    return shape + "s"


def backgrounds_for(colour: str) -> tuple[str, ...]:
    """The background names that contrast enough with ``colour`` to be drawn under it."""
    shape_rgb = COLOURS[colour]
    return tuple(
        name
        for name, rgb in BACKGROUNDS.items()
        if sum((a - b) ** 2 for a, b in zip(shape_rgb, rgb, strict=True)) ** 0.5 >= _MIN_CONTRAST
    )


@dataclass(frozen=True)
class SceneLabel:
    """What a scene shows. ``position`` is set for a single shape and ``None`` for a group."""

    colour: str
    shape: str
    count: int
    size: str
    background: str
    position: str | None

    def __post_init__(self) -> None:
        if self.colour not in COLOURS or self.shape not in SHAPES or self.count not in COUNTS:
            raise ValueError(f"unknown colour, shape or count in {self!r}")
        if self.size not in SIZES or self.background not in BACKGROUNDS:
            raise ValueError(f"unknown size or background in {self!r}")
        if (self.position is None) != (self.count > 1) or (
            self.position is not None and self.position not in POSITIONS
        ):
            raise ValueError(f"a single shape needs a position and a group has none: {self!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the sidecar format)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneLabel:
        """The inverse of :meth:`to_dict`."""
        return cls(**data)

    def tags(self) -> list[str]:
        """The label's words an image is tagged with: colour, shape, size, background (a gallery
        sidecar's ``"tags"``, which the indexer stores and the search filters on)."""
        return list(dict.fromkeys((self.colour, self.shape, self.size, self.background)))


@dataclass(frozen=True)
class SceneQuery:
    """The attributes a caption or a query names; ``None`` means "not mentioned"."""

    colour: str | None = None
    shape: str | None = None
    count: int | None = None
    size: str | None = None
    background: str | None = None
    position: str | None = None

    def named(self) -> dict[str, str | int]:
        """Only the attributes that are set."""
        return {name: value for name, value in vars(self).items() if value is not None}
