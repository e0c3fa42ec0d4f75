"""GPU path: the flat-quantizer conversion (testable on CPU) and the guard when FAISS sees no GPU."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from mediasearch.errors import ConfigError
from mediasearch.vector_index.builder import build_flat
from mediasearch.vector_index.gpu import gpu_count, maybe_to_gpu, to_gpu, with_flat_quantizer
from tests.support.index import brute_force, clustered, recall


def _ivf_hnsw(x: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """An IVF index with an HNSW coarse quantizer (what GPU cloning has to convert)."""
    index = faiss.index_factory(x.shape[1], "IVF64_HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add_with_ids(x, ids)
    return index


def test_flat_quantizer_copy_keeps_the_lists_and_searches_at_least_as_well() -> None:
    x, q = clustered(6000, seed=1), clustered(40, seed=2)
    ids = np.arange(6000, dtype=np.int64)
    index = _ivf_hnsw(x, ids)
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(index).quantizer), faiss.IndexHNSW)
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


def test_a_flat_index_has_no_quantizer_to_replace() -> None:
    x = clustered(100)
    with pytest.raises(ConfigError, match="only IVF"):
        with_flat_quantizer(build_flat(x, np.arange(100)))


@pytest.mark.skipif(gpu_count() > 0, reason="a GPU is visible")
def test_gpu_clone_is_refused_without_a_gpu_and_cpu_stays_the_default() -> None:
    x = clustered(3000)
    index = _ivf_hnsw(x, np.arange(3000))
    with pytest.raises(ConfigError, match="no GPU"):
        to_gpu(index)
    assert maybe_to_gpu(index, enabled=True) is index
    flat = build_flat(x, np.arange(3000))
    assert maybe_to_gpu(flat, enabled=True) is flat  # only IVF segments would ever move
