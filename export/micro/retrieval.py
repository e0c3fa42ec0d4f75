"""Text-to-image retrieval quality on a generated gallery, with pluggable encoders (torch-free).

The encoders are two callables, so the same measurement runs on the PyTorch checkpoint, the
exported ONNX graphs or a served model: ``texts(list of str) -> [n, dim]`` and
``images(uint8 [n, size, size, 3], resized and cropped) -> [n, dim]``. Embeddings need not be
normalised; this module normalises them.

Queries are generated from attribute combinations ("a red circle", "three small green stars",
"red shapes on a gray background", ...). precision@k of a query is the share of its top-k images
whose labels satisfy every attribute :func:`~mediasearch.export.micro.scenes.parse_query` reads from its text;
only queries with at least k matching images in the gallery are scored.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from mediasearch.export.micro.scenes import (
    ATTRIBUTE_VALUES,
    HELD_OUT_COMBOS,
    SceneLabel,
    SceneQuery,
    describe,
    label_matches,
    parse_query,
    read_gallery,
)
from mediasearch.preprocess.image import ImageSpec, prepare_image

TextEncoder = Callable[[Sequence[str]], NDArray[np.floating]]
ImageEncoder = Callable[[NDArray[np.uint8]], NDArray[np.floating]]

# The attribute combinations queries are made of; every value combination of each is tried.
QUERY_FAMILIES: tuple[tuple[str, ...], ...] = (
    ("count", "colour", "shape"),
    ("colour", "shape"),
    ("size", "colour", "shape"),
    ("count", "size", "colour", "shape"),
    ("count", "colour", "shape", "background"),
    ("colour", "background"),
    ("count", "shape", "position"),
)
_IMAGE_BATCH = 256


@dataclass(frozen=True)
class Encoders:
    """A model under evaluation: its two encoders and the image contract its images need."""

    texts: TextEncoder
    images: ImageEncoder
    image_spec: ImageSpec


@dataclass(frozen=True)
class Gallery:
    """Candidate images, ready for a vision encoder, and their labels."""

    pixels: NDArray[np.uint8]  # [n, crop, crop, 3]
    labels: list[SceneLabel]


@dataclass(frozen=True)
class EvalQuery:
    """A query text, the family it came from, and whether it names a held-out colour-shape pair."""

    text: str
    family: str
    unseen_combo: bool


def load_gallery(folder: Path, spec: ImageSpec) -> Gallery:
    """A gallery folder's images through the serving preprocessing (decode, resize, crop)."""
    items = read_gallery(folder)
    pixels = np.stack([prepare_image(item.image.read_bytes(), spec) for item in items])
    return Gallery(pixels=pixels, labels=[item.label for item in items])


def eval_queries(labels: Sequence[SceneLabel], k: int) -> list[EvalQuery]:
    """Every query of :data:`QUERY_FAMILIES` that at least ``k`` of ``labels`` satisfy."""
    held_out = set(HELD_OUT_COMBOS)
    queries = []
    for family in QUERY_FAMILIES:
        for values in itertools.product(*(ATTRIBUTE_VALUES[name] for name in family)):
            query = SceneQuery(**dict(zip(family, values, strict=True)))  # type: ignore[arg-type]
            if sum(label_matches(label, query) for label in labels) < k:
                continue
            queries.append(
                EvalQuery(
                    text=describe(query),
                    family="+".join(family),
                    unseen_combo=(query.colour, query.shape) in held_out,
                )
            )
    return queries


def precision_at_k(
    encoders: Encoders, gallery: Gallery, queries: Sequence[EvalQuery], k: int
) -> NDArray[np.float64]:
    """precision@k of each query: the share of its top-k images that satisfy its text."""
    image_emb = _unit(
        np.concatenate(
            [
                encoders.images(gallery.pixels[start : start + _IMAGE_BATCH])
                for start in range(0, len(gallery.pixels), _IMAGE_BATCH)
            ]
        )
    )
    text_emb = _unit(encoders.texts([q.text for q in queries]))
    top = np.argsort(-(text_emb @ image_emb.T), axis=1, kind="stable")[:, :k]
    return np.array(
        [
            np.mean([label_matches(gallery.labels[j], parse_query(q.text)) for j in row])
            for q, row in zip(queries, top, strict=True)
        ]
    )


def _unit(x: NDArray[np.floating]) -> NDArray[np.float64]:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
