"""Queries: read the attributes a text names, and test a scene label against them.

Used to score retrieval (precision@k: a retrieved image is relevant when its label satisfies
every attribute the query names) and, in training, to know which captions describe which images.
"""

from __future__ import annotations

import re

from mediasearch.export.micro.scenes.vocab import (
    BACKGROUNDS,
    COLOURS,
    COUNTS,
    POSITIONS,
    SHAPES,
    SIZES,
    SceneLabel,
    SceneQuery,
    plural,
)

_NUMBERS = {word: n for n, word in COUNTS.items()}


def parse_query(text: str) -> SceneQuery:
    """The attributes ``text`` names, in the grammar of :mod:`mediasearch.export.micro.scenes.captions`.

    "on a gray background" names the background (so "white" there is not the shapes' colour);
    a number word names the count, and so does a singular shape noun ("a red circle" is one);
    unknown words are ignored.
    """
    words = re.findall(r"[a-z]+", text.lower())
    background = None
    for i in range(1, len(words)):
        if words[i] == "background" and words[i - 1] in BACKGROUNDS:
            background = words[i - 1]
            del words[i - 1 : i + 1]
            break
    shape, singular = _noun(words)
    count = next((_NUMBERS[w] for w in words if w in _NUMBERS), None)
    if count is None and singular:
        count = 1
    return SceneQuery(
        colour=next((w for w in words if w in COLOURS), None),
        shape=shape,
        count=count,
        size=next((w for w in words if w in SIZES), None),
        background=background,
        position=next((w for w in words if w in POSITIONS), None),
    )


def _noun(words: list[str]) -> tuple[str | None, bool]:
    """The shape a text names (``None`` for the generic "shape") and whether the noun is singular."""
    for word in words:
        if word in SHAPES or word == "shape":
            return (word if word in SHAPES else None), True
        if word == "shapes":
            return None, False
        singular = next((s for s in SHAPES if plural(s) == word), None)
        if singular is not None:
            return singular, False
    return None, False


def label_matches(label: SceneLabel, query: SceneQuery) -> bool:
    """Whether the scene ``label`` shows satisfies every attribute ``query`` names."""
    return all(value is None or getattr(label, name) == value for name, value in vars(query).items())
