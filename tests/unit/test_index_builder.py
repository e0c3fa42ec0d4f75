"""The build knobs, vector checks and the exact (flat) index of a segment without a generation."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest

from mediasearch.errors import ConfigError, InvalidInput
from mediasearch.vector_index.builder import FLAT, BuildConfig, build_flat, check_vectors, nlist_for
from mediasearch.vector_index.generation import plan_nlist
from tests.support.index import brute_force, unit_vectors


@pytest.mark.parametrize("n", [20_000, 250_000, 1_000_000, 10_000_000])
def test_nlist_stays_within_4_to_16_sqrt_n_for_default_factor(n: int) -> None:
    nlist = nlist_for(n, 4.0)
    assert 4 * math.sqrt(n) / 1.5 <= nlist <= 16 * math.sqrt(n)
    assert nlist & (nlist - 1) == 0  # a power of two


def test_nlist_rounds_to_the_nearest_power_of_two_and_grows_with_the_factor() -> None:
    assert nlist_for(10_000, 4.0) == 512  # 400 -> 2**8.64
    assert nlist_for(10_000, 16.0) == 2048  # 1600 -> 2**10.64
    assert nlist_for(1_000_000, 4.0) == 4096  # 4000 -> 2**11.97
    assert nlist_for(0, 4.0) == 1


def test_nlist_is_capped_so_every_list_gets_enough_training_vectors() -> None:
    config = BuildConfig.defaults(nlist_factor=16, train_per_list=64)
    nlist = plan_nlist(5000, 1, config)
    assert nlist * 64 <= 5000 and nlist * 2 * 64 > 5000


def test_flat_index_search_matches_brute_force_exactly_and_returns_the_given_ids() -> None:
    x, q = unit_vectors(2000, seed=1), unit_vectors(20, seed=2)
    ids = np.arange(2000, dtype=np.int64) * 7 + 3
    index = build_flat(x, ids)
    assert FLAT == "IDMap,Flat" and isinstance(index, faiss.IndexIDMap) and index.ntotal == 2000
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    scores, found = index.search(q, 10)
    truth_scores, truth = brute_force(x, ids, q, 10)
    np.testing.assert_array_equal(found, truth)
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)


def test_check_vectors_returns_contiguous_float32_vectors_and_int64_ids() -> None:
    x = np.asfortranarray(unit_vectors(10).astype(np.float64))
    assert not x.flags.c_contiguous
    vectors, ids = check_vectors(x, [5, 4, 3, 2, 1, 0, 9, 8, 7, 6])  # type: ignore[arg-type]
    assert vectors.dtype == np.float32 and vectors.flags.c_contiguous
    assert ids.dtype == np.int64 and ids.tolist() == [5, 4, 3, 2, 1, 0, 9, 8, 7, 6]
    np.testing.assert_allclose(vectors, x, atol=1e-7)


@pytest.mark.parametrize(
    ("vectors", "ids", "message"),
    [
        (unit_vectors(10) * 2, np.arange(10), "normalised"),
        (unit_vectors(10), np.zeros(10, dtype=np.int64), "unique"),
        (unit_vectors(10), np.arange(10) - 1, "non-negative"),
        (unit_vectors(10), np.arange(9), "need"),
        (unit_vectors(10)[0], np.arange(1), "need"),
    ],
    ids=["unnormalised", "duplicate-ids", "negative-id", "count-mismatch", "one-dimensional"],
)
def test_check_vectors_refuses_what_would_corrupt_a_segment(
    vectors: np.ndarray, ids: np.ndarray, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        check_vectors(vectors, ids)
    with pytest.raises(InvalidInput, match=message):
        build_flat(vectors, ids)


@pytest.mark.parametrize("encoding", ["Flat", "SQ8", "SQ4", "SQfp16", "PQ16", "PQ16x8"])
def test_known_encodings_are_accepted(encoding: str) -> None:
    assert BuildConfig.defaults(encoding=encoding).encoding == encoding


@pytest.mark.parametrize("encoding", ["LSH", "HNSW32", "IVF64,Flat", "SQ8 "])
def test_unknown_encoding_is_a_config_error(encoding: str) -> None:
    with pytest.raises(ConfigError):
        BuildConfig.defaults(encoding=encoding)
