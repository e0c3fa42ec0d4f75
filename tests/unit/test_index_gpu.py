"""GPU path: the flat-quantizer conversion (testable on CPU) and the guard when FAISS sees no GPU."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from mediasearch.errors import ConfigError
from mediasearch.vector_index.builder import BuildConfig, build_index
from mediasearch.vector_index.gpu import gpu_count, maybe_to_gpu, to_gpu, with_flat_quantizer
from tests.support.index import brute_force, clustered, recall


def test_flat_quantizer_copy_keeps_the_lists_and_searches_at_least_as_well() -> None:
    x, q = clustered(6000, seed=1), clustered(40, seed=2)
    ids = np.arange(6000, dtype=np.int64)
    index, _ = build_index(x, ids, BuildConfig.defaults(flat_max=1000))
    flat = with_flat_quantizer(index)
    assert isinstance(faiss.downcast_index(flat.quantizer), faiss.IndexFlat)
    assert flat.ntotal == index.ntotal
    truth = brute_force(x, ids, q, 10)[1]
    params = faiss.SearchParametersIVF(nprobe=4)
    r_flat = recall(flat.search(q, 10, params=params)[1], truth)
    r_hnsw = recall(index.search(q, 10, params=params)[1], truth)
    assert r_flat >= r_hnsw - 0.01
    del index  # the copy owns its lists and quantizer
    assert recall(flat.search(q, 10, params=faiss.SearchParametersIVF(nprobe=flat.nlist))[1], truth) > 0.999


@pytest.mark.skipif(gpu_count() > 0, reason="a GPU is visible")
def test_gpu_clone_is_refused_without_a_gpu_and_cpu_stays_the_default() -> None:
    index, _ = build_index(clustered(3000), np.arange(3000), BuildConfig.defaults(flat_max=1000))
    with pytest.raises(ConfigError, match="no GPU"):
        to_gpu(index)
    assert maybe_to_gpu(index, enabled=True) is index
