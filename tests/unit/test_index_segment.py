"""Segments: immutable, checksummed files in a store, memory-mapped when opened."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from mediasearch.errors import CorruptData, InvalidInput, NotFound
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.generation import Generation, train_generation
from mediasearch.vector_index.segment import INDEX_FILE, load_vectors, open_index, read_meta, write_segment
from mediasearch.vector_index.store import LocalFolderStore, MemoryStore, open_store
from tests.support.index import MODEL, unit_vectors


def _segment(folder: Path, n: int = 500, shard: int = 2) -> tuple[np.ndarray, np.ndarray]:
    x, ids = unit_vectors(n, seed=n), np.arange(n, dtype=np.int64) + 100
    write_segment(folder, x, ids, shard=shard, model_version=MODEL, config=BuildConfig.defaults())
    return x, ids


def test_segment_round_trip_through_local_store_keeps_ids_vectors_and_model_version(tmp_path: Path) -> None:
    x, ids = _segment(tmp_path / "w")
    store = LocalFolderStore(tmp_path / "store")
    uri = store.put(tmp_path / "w", read_meta(tmp_path / "w"))
    folder = store.open(uri)
    meta = read_meta(folder)
    assert (meta.shard, meta.count, meta.dim, meta.model_version) == (2, 500, 32, MODEL)
    got_ids, got_x = load_vectors(folder)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_x, x)
    assert [e.segment_id for e in store.list()] == [meta.segment_id]
    assert store.list()[0].complete


def _generation_segment(folder: Path, x: np.ndarray, ids: np.ndarray) -> Generation:
    generation, lists = train_generation(x, number=3, num_shards=1, config=BuildConfig.defaults())
    write_segment(
        folder, x, ids, shard=0, model_version=MODEL, config=BuildConfig.defaults(), generation=generation,
        lists=lists,
    )  # fmt: skip
    return generation


@pytest.mark.parametrize("layout", ["flat", "generation"])
def test_opened_index_is_memory_mapped_from_the_segment_file(tmp_path: Path, layout: str) -> None:
    x = unit_vectors(3000)
    if layout == "flat":
        write_segment(
            tmp_path, x, np.arange(3000), shard=0, model_version=MODEL, config=BuildConfig.defaults()
        )
    else:
        _generation_segment(tmp_path, x, np.arange(3000))
    path = str(tmp_path / INDEX_FILE)
    index = open_index(tmp_path)  # by default only a flat index is mapped (IVF is read into RAM)
    assert index.ntotal == 3000
    assert (path in Path("/proc/self/maps").read_text()) == (layout == "flat")
    del index
    index = open_index(tmp_path, mmap_ivf=True)
    assert path in Path("/proc/self/maps").read_text()
    assert index.ntotal == 3000


@pytest.mark.parametrize("layout", ["flat", "generation"])
def test_segment_stores_ids_sorted_with_their_vectors(tmp_path: Path, layout: str) -> None:
    x = unit_vectors(2000, seed=4)
    ids = np.random.default_rng(4).permutation(2000).astype(np.int64) * 3 + 7
    if layout == "flat":
        write_segment(tmp_path, x, ids, shard=0, model_version=MODEL, config=BuildConfig.defaults())
    else:
        _generation_segment(tmp_path, x, ids)
    got_ids, got_x = load_vectors(tmp_path)
    order = np.argsort(ids)
    np.testing.assert_array_equal(got_ids, ids[order])
    np.testing.assert_array_equal(got_x, x[order])
    if layout == "flat":  # each vector finds its own id first: the index labels match the stored ids
        assert open_index(tmp_path).search(x[:5], 1)[1][:, 0].tolist() == ids[:5].tolist()


def test_generation_segment_holds_each_vector_in_its_list_without_the_quantizer(tmp_path: Path) -> None:
    x = unit_vectors(3000, seed=5)
    ids = np.arange(3000, dtype=np.int64) + 1000
    generation = _generation_segment(tmp_path, x, ids)
    meta = read_meta(tmp_path)
    assert meta.generation == 3 and meta.index_type == generation.factory == "IVF32,SQ8@g3"
    index = open_index(tmp_path)
    ivf = faiss.extract_index_ivf(index)  # a view into ``index``: keep that alive
    assert index.ntotal == 3000
    assert ivf.nlist == generation.nlist and ivf.quantizer.ntotal == 0  # stripped: the router probes
    placed = {}
    for lst in range(ivf.nlist):
        size = ivf.invlists.list_size(lst)
        for i in faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), size).tolist():
            placed[i] = lst
    assert len(placed) == 3000
    np.testing.assert_array_equal([placed[i] for i in ids.tolist()], generation.assign(x))
    flat = tmp_path.parent / "flat"
    write_segment(flat, x, ids, shard=0, model_version=MODEL, config=BuildConfig.defaults())
    assert read_meta(flat).generation == 0 and read_meta(flat).index_type == "IDMap,Flat"


def test_corrupted_segment_fails_its_checksum_when_opened(tmp_path: Path) -> None:
    _segment(tmp_path / "w")
    store = LocalFolderStore(tmp_path / "store")
    uri = store.put(tmp_path / "w", read_meta(tmp_path / "w"))
    path = Path(uri.removeprefix("file://")) / "ids.npy"
    path.write_bytes(path.read_bytes()[:-8] + b"garbage!")
    with pytest.raises(CorruptData, match="checksum"):
        store.open(uri)


def test_memory_store_downloads_to_cache_and_release_deletes_the_copy(tmp_path: Path) -> None:
    _segment(tmp_path / "w")
    store = MemoryStore(tmp_path / "cache")
    uri = store.put(tmp_path / "w", read_meta(tmp_path / "w"))
    folder = store.open(uri)
    assert folder.parent == tmp_path / "cache" and read_meta(folder).count == 500
    store.release(uri, folder)
    assert not folder.exists()
    store.delete(uri)
    assert store.list() == []
    with pytest.raises(NotFound):
        store.open(uri)


def test_local_store_leaves_no_staging_folder_after_put(tmp_path: Path) -> None:
    _segment(tmp_path / "w")
    store = LocalFolderStore(tmp_path / "store")
    store.put(tmp_path / "w", read_meta(tmp_path / "w"))
    assert [p.name.startswith(".") for p in (tmp_path / "store").iterdir()] == [False]


def test_write_segment_refuses_a_missing_model_version(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="model version"):
        write_segment(
            tmp_path, unit_vectors(5), np.arange(5), shard=0, model_version="", config=BuildConfig.defaults()
        )


def test_open_store_picks_the_implementation_from_the_url(tmp_path: Path) -> None:
    assert isinstance(open_store(f"file://{tmp_path}/s", cache_dir=tmp_path), LocalFolderStore)
    assert isinstance(open_store("memory://", cache_dir=tmp_path), MemoryStore)
