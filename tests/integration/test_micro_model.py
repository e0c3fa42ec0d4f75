"""The committed micro CLIP, exported by `mediasearch export` and served by ONNX Runtime, really
finds what a sentence describes: the check that random weights would fail (their precision@10
floor is 0.01), and that catches tokenisation or preprocessing silently going wrong."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from mediasearch.encoders.local import LocalEncoder
from mediasearch.export.micro.scenes import (
    GalleryItem,
    SceneQuery,
    label_matches,
    parse_query,
    read_gallery,
    write_gallery,
)

GALLERY_SEED = 4242  # not a training seed
QUERIES = ("a red circle", "red circles", "three green stars", "two small blue squares", "yellow triangles")


@pytest.fixture(scope="module")
def ranked(
    micro_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[GalleryItem], dict]:
    """The gallery and each query's top-10 image indices, ranked by the exported model."""
    folder = tmp_path_factory.mktemp("gallery")
    write_gallery(folder, 2000, GALLERY_SEED, 64)
    items = read_gallery(folder)

    async def rank() -> dict[str, list[int]]:
        async with LocalEncoder(micro_repository) as encoder:
            images = await encoder.encode_images([item.image.read_bytes() for item in items])
            texts = await encoder.encode_texts(list(QUERIES))
        scores = texts @ images.raise_first().T
        return {
            q: [int(i) for i in np.argsort(-row, kind="stable")[:10]]
            for q, row in zip(QUERIES, scores, strict=True)
        }

    return items, asyncio.run(rank())


def test_a_red_circle_returns_red_circles(ranked: tuple[list[GalleryItem], dict]) -> None:
    items, top = ranked
    red_circles = [items[i].label for i in top["a red circle"]]
    hits = sum(label_matches(label, SceneQuery(colour="red", shape="circle")) for label in red_circles)
    assert hits >= 7, f"{hits}/10 of the top 10 for 'a red circle' show red circles"


def test_queries_return_mostly_scenes_matching_every_attribute(
    ranked: tuple[list[GalleryItem], dict],
) -> None:
    items, top = ranked
    precision = {q: np.mean([label_matches(items[i].label, parse_query(q)) for i in top[q]]) for q in QUERIES}
    assert all(sum(label_matches(item.label, parse_query(q)) for item in items) >= 10 for q in QUERIES), (
        "the gallery must hold at least 10 answers per query"
    )
    assert np.mean(list(precision.values())) >= 0.7, precision
    assert min(precision.values()) >= 0.5, precision
