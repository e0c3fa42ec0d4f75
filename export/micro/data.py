"""Training data: a pool of pre-rendered scenes in memory, and caption batches drawn over it.

Rendering costs about as much as a training step, so scenes are rendered once, on every core,
into a uint8 pool; every batch draws fresh captions for its scenes. Every scene goes through the serving
path: rendered at a random size, encoded as a gallery file would be, then decoded, resized and
cropped by :mod:`mediasearch.preprocess.image`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
from numpy.typing import NDArray

from mediasearch.export.micro.scenes import (
    ATTRIBUTE_VALUES,
    HELD_OUT_COMBOS,
    SceneLabel,
    SceneQuery,
    caption_attributes,
    describe,
    encode_scene,
    render_scene,
    scene_rng,
)
from mediasearch.preprocess.image import ImageSpec, prepare_image

# Scenes are drawn at these sizes and resized to the model's input, like gallery files of any size.
RENDER_SIZES = (64, 96, 128)
# Words outside the vocabulary that users put in front of queries; they become [UNK].
_FILLERS = ("show me", "find", "search for")
_FILLER_RATE = 0.1
_UNSET = -1
# Scenes in one hard-negative group share these attributes (see hard_negative_batches).
HARD_NEGATIVE_GROUPINGS = (("colour", "background"), ("colour", "background", "size", "count"))


@dataclass(frozen=True)
class ScenePool:
    """Pre-rendered training scenes: model-ready pixels and their labels."""

    pixels: NDArray[np.uint8]  # [n, size, size, 3], resized and cropped
    labels: list[SceneLabel]
    codes: NDArray[np.int64]  # [n, attributes]: the labels as attribute codes


@dataclass(frozen=True)
class CaptionBatch:
    """Captions for a batch of scenes and which scenes each caption truly describes."""

    texts: list[str]
    positives: NDArray[np.bool_]  # [captions, scenes]: caption i is true of scene j


def attribute_codes(attrs: SceneLabel | SceneQuery) -> NDArray[np.int64]:
    """One integer per attribute: the value's index, or -1 where it is unset."""
    values = ((name, getattr(attrs, name)) for name in ATTRIBUTE_VALUES)
    return np.array(
        [_UNSET if v is None else ATTRIBUTE_VALUES[name].index(v) for name, v in values], dtype=np.int64
    )


def render_pool(seed: int, count: int, spec: ImageSpec, workers: int) -> ScenePool:
    """Render ``count`` training scenes (never a held-out colour-shape pair) on ``workers`` processes."""
    render = partial(_render_one, seed=seed, spec=spec)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        scenes = list(pool.map(render, range(count), chunksize=256))
    labels = [label for _, label in scenes]
    return ScenePool(
        pixels=np.stack([pixels for pixels, _ in scenes]),
        labels=labels,
        codes=np.stack([attribute_codes(label) for label in labels]),
    )


def _render_one(index: int, *, seed: int, spec: ImageSpec) -> tuple[NDArray[np.uint8], SceneLabel]:
    rng = scene_rng(seed, index)
    size = RENDER_SIZES[int(rng.integers(len(RENDER_SIZES)))]
    img, label = render_scene(rng, size, HELD_OUT_COMBOS)
    return prepare_image(encode_scene(img), spec), label


def hard_negative_batches(
    pool: ScenePool, batch_size: int, group_size: int, rng: np.random.Generator
) -> Iterator[NDArray[np.int64]]:
    """Endless batches made of groups of similar scenes: every batch is full of hard negatives.

    Colour and background are learned first and then tell most random pairs apart. Half the groups
    of a batch share colour and background (count, size, shape and position differ inside them);
    the other half also share size and count (only shape and position differ). Pairs from
    different groups still teach everything else.
    """
    groupings = [_groups(pool, attributes) for attributes in HARD_NEGATIVE_GROUPINGS]
    if batch_size % (group_size * len(groupings)):
        raise ValueError(f"batch size {batch_size} is not a multiple of {group_size * len(groupings)}")
    per_grouping = batch_size // group_size // len(groupings)
    while True:
        chosen = []
        for groups in groupings:
            for g in rng.choice(len(groups), size=per_grouping, replace=False):
                chosen.append(rng.choice(groups[g], size=group_size, replace=len(groups[g]) < group_size))
        yield np.concatenate(chosen)


def _groups(pool: ScenePool, attributes: Sequence[str]) -> list[NDArray[np.int64]]:
    """The pool's scene indices grouped by equal values of ``attributes``."""
    names = list(ATTRIBUTE_VALUES)
    columns = [names.index(name) for name in attributes]
    _, group_of = np.unique(pool.codes[:, columns], axis=0, return_inverse=True)
    return [np.flatnonzero(group_of == g) for g in range(int(group_of.max()) + 1)]


def caption_batch(pool: ScenePool, indices: NDArray[np.int64], rng: np.random.Generator) -> CaptionBatch:
    """A fresh random caption for each scene in ``indices``, with the batch's positive pairs.

    A caption that names only some attributes ("two red circles") is true of every scene in the
    batch that has them, not only of its own; the loss treats all of those as matches.
    """
    texts, query_codes = [], []
    for index in indices:
        attrs = caption_attributes(pool.labels[int(index)], rng)
        text = describe(attrs, rng)
        if rng.random() < _FILLER_RATE:
            text = f"{_FILLERS[int(rng.integers(len(_FILLERS)))]} {text}"
        texts.append(text)
        query_codes.append(attribute_codes(attrs))
    queries = np.stack(query_codes)[:, None, :]
    labels = pool.codes[indices][None, :, :]
    positives = np.all((queries == _UNSET) | (queries == labels), axis=-1)
    return CaptionBatch(texts=texts, positives=positives)
