"""Index type by size: exact below the threshold, trained IVF-HNSW above; results vs brute force."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest

from mediasearch.errors import ConfigError, InvalidInput
from mediasearch.vector_index.builder import BuildConfig, build_index, choose_spec, nlist_for
from tests.support.index import brute_force, clustered, recall, unit_vectors


def test_choose_spec_is_flat_below_threshold_and_ivf_hnsw_above() -> None:
    config = BuildConfig.defaults(flat_max=1000)
    assert choose_spec(999, config).factory == "IDMap,Flat"
    spec = choose_spec(1_000_000, config)
    assert spec.kind == "ivf" and spec.factory == f"IVF{spec.nlist}_HNSW32,Flat"


@pytest.mark.parametrize("n", [20_000, 250_000, 1_000_000, 10_000_000])
def test_nlist_stays_within_4_to_16_sqrt_n_for_default_factor(n: int) -> None:
    nlist = nlist_for(n, 4.0)
    assert 4 * math.sqrt(n) / 1.5 <= nlist <= 16 * math.sqrt(n)
    assert nlist & (nlist - 1) == 0  # a power of two


def test_nlist_is_capped_so_every_list_gets_enough_training_vectors() -> None:
    spec = choose_spec(5000, BuildConfig.defaults(flat_max=100, nlist_factor=16, train_per_list=64))
    assert spec.nlist * 64 <= 5000


def test_flat_segment_search_matches_brute_force_exactly() -> None:
    x, q = unit_vectors(2000, seed=1), unit_vectors(20, seed=2)
    ids = np.arange(2000, dtype=np.int64) * 7 + 3
    index, spec = build_index(x, ids, BuildConfig.defaults())
    assert spec.kind == "flat"
    scores, found = index.search(q, 10)
    truth_scores, truth = brute_force(x, ids, q, 10)
    np.testing.assert_array_equal(found, truth)
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)


def test_ivf_segment_is_exact_when_every_list_is_probed() -> None:
    x, q = clustered(6000, seed=3), clustered(30, seed=4)
    ids = np.arange(6000, dtype=np.int64)
    index, spec = build_index(x, ids, BuildConfig.defaults(flat_max=1000))
    ivf = faiss.extract_index_ivf(index)
    assert spec.kind == "ivf" and ivf.nlist == spec.nlist and index.ntotal == 6000
    params = faiss.SearchParametersIVF(nprobe=ivf.nlist)
    _, found = index.search(q, 10, params=params)
    assert recall(found, brute_force(x, ids, q, 10)[1]) >= 0.999


def test_sq8_encoding_builds_a_scalar_quantised_ivf() -> None:
    x = clustered(4000, seed=5)
    index, spec = build_index(x, np.arange(4000), BuildConfig.defaults(flat_max=1000, encoding="SQ8"))
    assert spec.factory.endswith(",SQ8")
    assert isinstance(faiss.downcast_index(index), faiss.IndexIVFScalarQuantizer)


def test_builder_refuses_unnormalised_vectors_and_duplicate_ids() -> None:
    x = unit_vectors(10)
    with pytest.raises(InvalidInput, match="normalised"):
        build_index(x * 2, np.arange(10), BuildConfig.defaults())
    with pytest.raises(InvalidInput, match="unique"):
        build_index(x, np.zeros(10, dtype=np.int64), BuildConfig.defaults())


def test_unknown_encoding_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        BuildConfig.defaults(encoding="LSH")
