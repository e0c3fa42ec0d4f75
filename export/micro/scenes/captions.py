"""Captions: turn a label, or any subset of its attributes, into an English phrase.

One grammar serves training captions and evaluation queries::

    [prefix] (a|an|one|two|three) [small|large] [colour] (shape|shapes) [position] [background]

e.g. "two small blue squares on a beige background" or "a photo of one large purple triangle
on the left". A singular noun always means exactly one shape; a plural noun without a number
leaves the count open. :func:`mediasearch.export.micro.scenes.matching.parse_query` reads this grammar back.
"""

from __future__ import annotations

import numpy as np

from mediasearch.export.micro.scenes.vocab import (
    BACKGROUNDS,
    COLOURS,
    COUNTS,
    SHAPES,
    SIZES,
    SceneLabel,
    SceneQuery,
    plural,
)

_PREFIXES = ("", "a photo of ", "a picture of ", "an image of ")
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "middle": "in the middle",
}


def caption(label: SceneLabel, rng: np.random.Generator) -> str:
    """A random true caption of ``label``: a random subset of its attributes, a random template."""
    return describe(caption_attributes(label, rng), rng)


def caption_attributes(label: SceneLabel, rng: np.random.Generator) -> SceneQuery:
    """A random subset of ``label``'s attributes for a caption to mention.

    Most captions name most attributes. A single shape always keeps its count: the grammar reads
    a plural noun without a number as "any count", which would not be true of one shape.
    """
    draws = rng.random(6)
    return SceneQuery(
        colour=label.colour if draws[0] < 0.95 else None,
        shape=label.shape if draws[1] < 0.95 else None,
        count=label.count if label.count == 1 or draws[2] < 0.9 else None,
        size=label.size if draws[3] < 0.7 else None,
        background=label.background if draws[4] < 0.5 else None,
        position=label.position if draws[5] < 0.85 else None,
    )


def describe(query: SceneQuery, rng: np.random.Generator | None = None) -> str:
    """The phrase for ``query``'s attributes; canonical without ``rng``, varied with one.

    With ``rng`` the template varies (prefix, "a" or "one", order of the trailing phrases);
    the attributes it names never change.
    """
    noun = query.shape or "shape"
    words = [w for w in (query.size, query.colour) if w is not None]
    words.append(noun if query.count == 1 else plural(noun))
    if query.count == 1:
        use_one = rng is not None and rng.random() < 0.3
        words.insert(0, "one" if use_one else _article(words[0]))
    elif query.count is not None:
        words.insert(0, COUNTS[query.count])
    tail = []
    if query.position is not None:
        tail.append(POSITION_PHRASES[query.position])
    if query.background is not None:
        tail.append(f"on {_article(query.background)} {query.background} background")
    prefix = ""
    if rng is not None:
        if len(tail) == 2 and rng.random() < 0.5:
            tail.reverse()
        prefix = _PREFIXES[int(rng.integers(len(_PREFIXES)))]
    return prefix + " ".join(words + tail)


def caption_words() -> list[str]:
    """Every word this grammar can produce, sorted: the vocabulary a caption model needs."""
    nouns = [*SHAPES, "shape"]
    words = {"a", "an", "background", *COUNTS.values(), *SIZES, *COLOURS, *BACKGROUNDS}
    words.update(nouns + [plural(n) for n in nouns])
    for phrase in (*_PREFIXES, *POSITION_PHRASES.values()):
        words.update(phrase.split())
    return sorted(words)


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"
