"""Drawing scenes: sample a :class:`SceneLabel`, then render it with nuisance variation.

The label decides everything a caption can say (colour, shape, count, size, background,
position); the nuisances vary what no caption mentions: exact placement, rotation, outline width,
small colour shifts, blur, sensor noise and JPEG artefacts. All randomness comes from the
``numpy.random.Generator`` passed in, so a seed fixes the image bit for bit.
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mediasearch.export.micro.scenes.vocab import (
    BACKGROUNDS,
    COLOURS,
    COUNTS,
    POSITIONS,
    RGB,
    SHAPES,
    SIZES,
    SceneLabel,
    backgrounds_for,
)

# Circumradius as a fraction of the canvas side, per size.
_RADIUS = {"small": (0.09, 0.12), "large": (0.18, 0.22)}
# Per-shape scale so the four shapes look about equally big at the same size.
_SHAPE_SCALE = {"circle": 0.9, "square": 1.0, "triangle": 1.12, "star": 1.12}
# Upright pose per shape (a flat-bottomed square, triangles and stars pointing up), tilted at most
# by _MAX_TILT: rotation varies, but a square never becomes a diamond.
_UPRIGHT = {"circle": 0.0, "square": math.pi / 4, "triangle": -math.pi / 2, "star": -math.pi / 2}
_MAX_TILT = math.radians(20)
_SUPERSAMPLE = 2  # draw at twice the size and downscale: anti-aliased edges
_PLACEMENT_TRIES = 64
Point = tuple[float, float]


def sample_label(rng: np.random.Generator, held_out_combos: Collection[tuple[str, str]] = ()) -> SceneLabel:
    """A uniformly random label whose colour-shape pair is not in ``held_out_combos``."""
    combos = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held_out_combos]
    colour, shape = combos[int(rng.integers(len(combos)))]
    count = int(rng.choice(list(COUNTS)))
    backgrounds = backgrounds_for(colour)
    return SceneLabel(
        colour=colour,
        shape=shape,
        count=count,
        size=SIZES[int(rng.integers(len(SIZES)))],
        background=backgrounds[int(rng.integers(len(backgrounds)))],
        position=POSITIONS[int(rng.integers(len(POSITIONS)))] if count == 1 else None,
    )


def render_scene(
    rng: np.random.Generator, size: int, held_out_combos: Collection[tuple[str, str]] = ()
) -> tuple[Image.Image, SceneLabel]:
    """A random ``size`` x ``size`` RGB scene and its label (see :func:`sample_label`)."""
    label = sample_label(rng, held_out_combos)
    return render_label(label, rng, size), label


def render_label(label: SceneLabel, rng: np.random.Generator, size: int) -> Image.Image:
    """Draw ``label`` on a ``size`` x ``size`` RGB canvas with random nuisances."""
    big = size * _SUPERSAMPLE
    background = _shift(BACKGROUNDS[label.background], rng, 10)
    fill = _shift(COLOURS[label.colour], rng, 18)
    outline = _outline_colour(fill)
    outline_width = int(rng.integers(0, 3)) * _SUPERSAMPLE
    img = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(img)
    radii = [_radius(label, rng) for _ in range(label.count)]
    for (cx, cy), r in zip(_place(label, radii, rng), radii, strict=True):
        angle = _UPRIGHT[label.shape] + float(rng.uniform(-_MAX_TILT, _MAX_TILT))
        _draw_shape(draw, label.shape, (cx * big, cy * big), r * big, angle, fill, outline, outline_width)
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    return _degrade(img, rng)


def _shift(rgb: RGB, rng: np.random.Generator, amount: int) -> RGB:
    shifted = np.clip(np.asarray(rgb) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    r, g, b = (int(v) for v in shifted)
    return r, g, b


def _outline_colour(fill: RGB) -> RGB:
    """A darker shade of the fill (a lighter one for very dark fills)."""
    if sum(fill) < 150:
        r, g, b = (min(255, v + 70) for v in fill)
    else:
        r, g, b = (int(v * 0.6) for v in fill)
    return r, g, b


def _radius(label: SceneLabel, rng: np.random.Generator) -> float:
    low, high = _RADIUS[label.size]
    return float(rng.uniform(low, high)) * _SHAPE_SCALE[label.shape]


def _place(label: SceneLabel, radii: Sequence[float], rng: np.random.Generator) -> list[Point]:
    """Shape centres in unit coordinates: in the label's region, or spread without overlap."""
    if label.position is not None:
        return [_place_single(label.position, radii[0], rng)]
    best: list[Point] = []
    best_gap = -math.inf
    for _ in range(_PLACEMENT_TRIES):
        centres = [(float(rng.uniform(r, 1 - r)), float(rng.uniform(r, 1 - r))) for r in radii]
        gap = _smallest_gap(centres, radii)
        if gap > best_gap:
            best, best_gap = centres, gap
        if gap >= 0.02:
            break
    return best


def _place_single(position: str, r: float, rng: np.random.Generator) -> Point:
    """A centre inside the region that ``position`` names (the middle band of that side)."""
    edge = float(rng.uniform(r + 0.02, max(r + 0.02, 0.3)))
    across = float(rng.uniform(0.4, 0.6))
    if position == "left":
        return edge, across
    if position == "right":
        return 1 - edge, across
    if position == "top":
        return across, edge
    if position == "bottom":
        return across, 1 - edge
    return float(rng.uniform(0.44, 0.56)), float(rng.uniform(0.44, 0.56))


def _smallest_gap(centres: Sequence[Point], radii: Sequence[float]) -> float:
    """The smallest distance between two shapes' outer circles (inf for a single shape)."""
    gaps = [
        math.dist(centres[i], centres[j]) - radii[i] - radii[j]
        for i in range(len(centres))
        for j in range(i + 1, len(centres))
    ]
    return min(gaps, default=math.inf)


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    centre: Point,
    r: float,
    angle: float,
    fill: RGB,
    outline: RGB,
    width: int,
) -> None:
    cx, cy = centre
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
        return
    draw.polygon(_vertices(shape, centre, r, angle), fill=fill, outline=outline, width=width)


def _vertices(shape: str, centre: Point, r: float, angle: float) -> list[Point]:
    """Polygon corners of a square, triangle or five-pointed star with circumradius ``r``."""
    corners = {"square": 4, "triangle": 3, "star": 10}[shape]
    cx, cy = centre
    points = []
    for k in range(corners):
        radius = r * 0.45 if shape == "star" and k % 2 else r
        theta = angle + 2.0 * math.pi * k / corners
        points.append((cx + radius * math.cos(theta), cy + radius * math.sin(theta)))
    return points


def _degrade(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Camera-like nuisances: optional blur, optional noise, optional JPEG round trip."""
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 0.012 * img.width + 0.2))))
    if rng.random() < 0.5:
        pixels = np.asarray(img, dtype=np.float32)
        noisy = pixels + rng.normal(0.0, float(rng.uniform(2.0, 9.0)), size=pixels.shape)
        img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    if rng.random() < 0.4:
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=int(rng.integers(30, 91)))
        img = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return img
