"""Backfill parts: N runs split a bucket's keys by a stable hash, without overlap or gaps."""

from __future__ import annotations

import pytest

from mediasearch.errors import ConfigError
from mediasearch.indexer.backfill import Part


def test_parts_cover_every_key_exactly_once() -> None:
    keys = [f"photos/{i:05d}.jpg" for i in range(2000)]
    parts = [Part(i, 4) for i in range(4)]
    owners = [[p.index for p in parts if p.holds(key)] for key in keys]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(o == [i] for o in owners) for i in range(4)]
    assert min(sizes) > 400, sizes  # about a quarter each


def test_a_key_belongs_to_the_same_part_in_every_process() -> None:
    assert [Part(i, 3).holds("a/b.jpg") for i in range(3)] == [True, False, False]  # pinned: blake2b


@pytest.mark.parametrize("text", ["4/4", "-1/4", "1", "a/b", "1/0"])
def test_a_bad_part_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="part"):
        Part.parse(text)


def test_the_whole_is_one_part() -> None:
    assert Part.parse("0/1").holds("anything") and Part().holds("anything")
