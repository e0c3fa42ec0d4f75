"""Segments: immutable, checksummed files in a store, memory-mapped when opened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mediasearch.errors import CorruptData, InvalidInput, NotFound
from mediasearch.vector_index.builder import BuildConfig
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


@pytest.mark.parametrize("flat_max", [100_000, 1000], ids=["flat", "ivf"])
def test_opened_index_is_memory_mapped_from_the_segment_file(tmp_path: Path, flat_max: int) -> None:
    x = unit_vectors(3000)
    write_segment(
        tmp_path,
        x,
        np.arange(3000),
        shard=0,
        model_version=MODEL,
        config=BuildConfig.defaults(flat_max=flat_max),
    )
    index = open_index(tmp_path, mmap_ivf=True)
    maps = Path("/proc/self/maps").read_text()
    assert str(tmp_path / INDEX_FILE) in maps
    assert index.ntotal == 3000


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
