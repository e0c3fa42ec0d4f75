"""The indexing pipeline on a local folder: real ONNX (tiny CLIP), SQLite, a folder segment store.

Exactly-once in effect (duplicates, redelivery, resumption after a crash, a lost race), versions
replacing each other, removals, and a corpus of bad inputs that are recorded, never fatal.
"""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import numpy as np
import pytest

from mediasearch.encoders import LocalEncoder
from mediasearch.encoders.fake import FakeEncoder, fake_vector
from mediasearch.indexer.commit import Committer
from mediasearch.indexer.events import ObjectEvent
from mediasearch.indexer.folder import index_folder
from mediasearch.indexer.items import Item
from mediasearch.indexer.progress import ProgressBar
from mediasearch.indexer.service import run_pipeline
from mediasearch.indexer.source import Delivery, MemorySource
from mediasearch.metadata.images_repo import NewImage, get_thumbnail, reserve
from mediasearch.metadata.models import FAILED, INDEXED, PENDING, REMOVED
from mediasearch.objects import FolderObjects
from mediasearch.settings import Settings
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.partition import HashPartitioner
from tests.support.index import sessions_for
from tests.support.indexer import (
    bad_inputs,
    indexer_settings,
    rows,
    scene_bytes,
    search_ids,
    served_ids,
    store_of,
)


@pytest.fixture
def settings(tmp_path: Path, tiny_repository: Path) -> Settings:
    return indexer_settings(tmp_path, tiny_repository)


def own_vector(repository: Path, data: bytes) -> np.ndarray:
    async def go() -> np.ndarray:
        async with LocalEncoder(repository) as enc:
            return (await enc.encode_images([data])).raise_first()[0]

    return asyncio.run(go())


def write(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def test_folder_index_makes_good_images_searchable_and_records_each_bad_input_with_its_reason(
    settings: Settings, tmp_path: Path, tiny_repository: Path
) -> None:
    photos = tmp_path / "photos"
    good = {f"scenes/s{i}.jpg": scene_bytes(i) for i in range(20)}
    corpus = bad_inputs()
    write(photos, good | {name: data for name, (data, _) in corpus.items()})
    (photos / "notes.json").write_text("{}")  # not an image extension: not even looked at
    bar_out = io.StringIO()
    report = index_folder(settings, photos, progress=ProgressBar("t", stream=bar_out, log_every_s=0))

    assert (report.indexed, report.failed, report.skipped, report.retried) == (20, len(corpus), 0, 0)
    assert "/28" in bar_out.getvalue() and "ETA" in bar_out.getvalue()
    sessions = sessions_for(settings.database_url)
    by_key = {r.key: r for r in rows(sessions)}
    assert set(by_key) == set(good) | set(corpus)
    for name, (_, reason) in corpus.items():
        assert by_key[name].status == FAILED and reason in (by_key[name].error or ""), (
            name,
            by_key[name].error,
        )
    store = store_of(settings)
    served = served_ids(sessions, store, settings.num_shards)
    assert sorted(served) == sorted(by_key[k].id for k in good) and set(served.values()) == {1}
    row = by_key["scenes/s7.jpg"]
    assert (row.status, row.width, row.height, row.bucket, row.shard is not None) == (
        INDEXED,
        64,
        64,
        "local",
        True,
    )
    assert row.model_version and row.indexed is not None and row.content_type == "image/jpeg"
    assert (
        search_ids(sessions, store, settings.num_shards, own_vector(tiny_repository, good["scenes/s7.jpg"]))[
            0
        ]
        == row.id
    )


def test_running_again_indexes_nothing_twice_and_a_changed_file_replaces_its_old_version(
    settings: Settings, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    write(photos, {f"p{i}.jpg": scene_bytes(i) for i in range(6)})
    assert index_folder(settings, photos).indexed == 6
    again = index_folder(settings, photos)
    assert (again.indexed, again.skipped) == (0, 6)

    sessions = sessions_for(settings.database_url)
    old = {r.key: r.id for r in rows(sessions)}
    (photos / "p2.jpg").write_bytes(scene_bytes(100))  # new content at the same key
    changed = index_folder(settings, photos)
    assert (changed.indexed, changed.skipped) == (1, 5)
    by_id = {r.id: r for r in rows(sessions)}
    assert by_id[old["p2.jpg"]].status == REMOVED
    served = served_ids(sessions, store_of(settings), settings.num_shards)
    assert old["p2.jpg"] not in served and set(served.values()) == {1} and len(served) == 6


def test_prune_removes_the_files_gone_from_the_folder_and_only_with_prune(
    settings: Settings, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    write(photos, {f"p{i}.jpg": scene_bytes(i) for i in range(6)} | {"broken.jpg": b"not an image"})
    first = index_folder(settings, photos)
    assert (first.indexed, first.failed) == (6, 1)
    sessions = sessions_for(settings.database_url)
    ids = {r.key: r.id for r in rows(sessions)}
    for name in ("p1.jpg", "p4.jpg", "broken.jpg"):
        (photos / name).unlink()

    plain = index_folder(settings, photos)  # without --prune the index keeps them
    assert (plain.removed, plain.skipped) == (0, 4)
    assert len(served_ids(sessions, store_of(settings), settings.num_shards)) == 6

    pruned = index_folder(settings, photos, prune=True)
    assert (pruned.removed, pruned.indexed, pruned.skipped) == (3, 0, 4)
    by_key = {r.key: r for r in rows(sessions)}
    assert {k for k, r in by_key.items() if r.status == REMOVED} == {"p1.jpg", "p4.jpg", "broken.jpg"}
    served = served_ids(sessions, store_of(settings), settings.num_shards)
    assert sorted(served) == sorted(ids[f"p{i}.jpg"] for i in (0, 2, 3, 5))
    assert index_folder(settings, photos, prune=True).removed == 0  # nothing left to prune


def run_events(
    settings: Settings, folder: Path, batches: list[list[ObjectEvent]], **kw: object
) -> MemorySource:
    source = MemorySource(batches, **kw)  # type: ignore[arg-type]
    asyncio.run(run_pipeline(settings, source, FolderObjects(folder, max_bytes=settings.max_image_bytes)))
    return source


def test_the_same_object_delivered_many_times_in_and_across_batches_is_indexed_once(
    settings: Settings, tmp_path: Path
) -> None:
    write(tmp_path / "f", {"a.jpg": scene_bytes(1), "b.jpg": scene_bytes(2)})
    a, b = ObjectEvent("created", "local", "a.jpg"), ObjectEvent("created", "local", "b.jpg")
    source = run_events(settings, tmp_path / "f", [[a, a], [a], [b, a, b]])
    run_events(settings, tmp_path / "f", [[a], [b]])  # redelivered later
    assert len(source.acked) == 3 and not source.retried
    sessions = sessions_for(settings.database_url)
    # batches run concurrently, so either object may have reserved its id first
    assert sorted((r.key, r.status) for r in rows(sessions)) == [("a.jpg", INDEXED), ("b.jpg", INDEXED)]
    assert sorted(served_ids(sessions, store_of(settings), settings.num_shards).values()) == [1, 1]


def test_object_removed_marks_the_deleted_object_removed_and_tombstones_its_vector(
    settings: Settings, tmp_path: Path
) -> None:
    write(tmp_path / "f", {"a.jpg": scene_bytes(1), "b.jpg": scene_bytes(2)})
    created = [ObjectEvent("created", "local", k) for k in ("a.jpg", "b.jpg")]
    run_events(settings, tmp_path / "f", [created])
    (tmp_path / "f" / "a.jpg").unlink()
    run_events(settings, tmp_path / "f", [[ObjectEvent("removed", "local", "a.jpg")]])
    sessions = sessions_for(settings.database_url)
    status = {r.key: (r.id, r.status) for r in rows(sessions)}
    assert status["a.jpg"][1] == REMOVED and status["b.jpg"][1] == INDEXED
    assert list(served_ids(sessions, store_of(settings), settings.num_shards)) == [status["b.jpg"][0]]


def test_a_removal_event_handled_after_the_key_was_written_again_keeps_the_new_version(
    settings: Settings, tmp_path: Path
) -> None:
    write(tmp_path / "f", {"a.jpg": scene_bytes(1)})
    run_events(settings, tmp_path / "f", [[ObjectEvent("created", "local", "a.jpg")]])
    (tmp_path / "f" / "a.jpg").write_bytes(scene_bytes(2))  # deleted, then written again ...
    run_events(settings, tmp_path / "f", [[ObjectEvent("created", "local", "a.jpg")]])
    run_events(
        settings, tmp_path / "f", [[ObjectEvent("removed", "local", "a.jpg")]]
    )  # ... delete arrives late
    sessions = sessions_for(settings.database_url)
    (old, new) = rows(sessions)
    assert (old.status, new.status) == (REMOVED, INDEXED)
    assert dict(served_ids(sessions, store_of(settings), settings.num_shards)) == {new.id: 1}


def test_a_row_reserved_by_a_run_that_died_is_resumed_under_the_same_id(
    settings: Settings, tmp_path: Path
) -> None:
    from mediasearch.objects import content_etag

    data = scene_bytes(5)
    write(tmp_path / "f", {"a.jpg": data})
    sessions = sessions_for(settings.database_url)
    with sessions.begin() as s:  # what a killed indexer leaves: a PENDING row, no published vector
        (reserved,) = reserve(s, [NewImage("local", "a.jpg", content_etag(data), len(data))])
    assert reserved.status == PENDING
    run_events(settings, tmp_path / "f", [[ObjectEvent("created", "local", "a.jpg")]])
    assert [(r.id, r.status) for r in rows(sessions)] == [(reserved.image_id, INDEXED)]
    assert dict(served_ids(sessions, store_of(settings), settings.num_shards)) == {reserved.image_id: 1}


def test_an_indexer_that_loses_the_race_for_a_row_drops_its_copy_instead_of_serving_it_twice(
    settings: Settings, tmp_path: Path
) -> None:
    from mediasearch.objects import StoredObject

    sessions = sessions_for(settings.database_url)
    store = store_of(settings)

    def item() -> Item:
        ev = ObjectEvent("created", "photos", "x.jpg", "e1")
        it = Item(Delivery([ev]), ev, fetched=StoredObject("e1", 10, "image/jpeg", ev.time or _now()))
        it.vector, it.width, it.height = np.eye(1, 32, dtype=np.float32)[0], 1, 1
        return it

    first, second = (
        Committer(sessions, store, HashPartitioner(2), BuildConfig.defaults(), "v") for _ in range(2)
    )
    mine, theirs = item(), item()
    reserved = second.reserve([theirs])  # two indexers got the message and reserved the same row
    assert [it.image_id for it in reserved] == [theirs.image_id]
    first.commit([mine])  # the first publishes it ...
    assert mine.image_id == theirs.image_id
    second.publish(reserved, [])  # ... the second finds it no longer PENDING and drops its copy
    assert (mine.outcome, theirs.outcome) == ("indexed", "duplicate")
    assert dict(served_ids(sessions, store, 2)) == {mine.image_id: 1}


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)


def test_index_command_reports_counts_and_failures_and_draws_progress_on_stderr(
    tmp_path: Path, tiny_repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mediasearch.cli import main

    write(
        tmp_path / "photos",
        {"a.jpg": scene_bytes(1), "sub/b.png": scene_bytes(2, fmt="png"), "c.jpg": b"junk"},
    )
    db, store = f"sqlite:///{tmp_path / 'm.db'}", (tmp_path / "segments").as_uri()
    args = ["index", str(tmp_path / "photos"), "--database-url", db, "--store-url", store,
            "--model-repository", str(tiny_repository), "--bucket", "album"]  # fmt: skip
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out.startswith("indexed 2, failed 1, removed 0, skipped 0")
    assert "failed: album/c.jpg: not an image" in out
    assert "indexing [####################] 3/3 100%" in err
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("indexed 0, failed 0, removed 0, skipped 3")


def test_metrics_count_outcomes_and_time_every_stage(settings: Settings, tmp_path: Path) -> None:
    import urllib.request

    from mediasearch.indexer.metrics import IndexerMetrics

    write(tmp_path / "f", {"good.jpg": scene_bytes(1), "bad.jpg": b"not an image"})
    events = [ObjectEvent("created", "local", k) for k in ("good.jpg", "bad.jpg")]
    metrics = IndexerMetrics()
    port = metrics.serve("127.0.0.1", 0)
    try:
        source = MemorySource([events])
        fetcher = FolderObjects(tmp_path / "f", max_bytes=settings.max_image_bytes)
        asyncio.run(run_pipeline(settings, source, fetcher, metrics=metrics))
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        metrics.stop()
    assert 'mediasearch_indexer_images_total{outcome="indexed"} 1.0' in text
    assert 'mediasearch_indexer_images_total{outcome="failed"} 1.0' in text
    counts = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'mediasearch_indexer_stage_seconds_count\{stage="(\w+)"\} (\S+)', text)
    }
    assert counts["fetch"] == counts["decode"] == 2  # per image
    assert counts["encode"] == 1  # one image could be encoded: one encoder call
    assert counts["commit"] >= 1  # per batch (the failed image may commit in its own)
    assert "mediasearch_indexer_in_flight 0.0" in text


class _ServerDecodingEncoder(FakeEncoder):
    """An encoder whose server decodes files (as Triton's bytes ensemble does); it records what it
    was sent, and refuses a file that is corrupt past its header, as DALI would."""

    def __init__(self) -> None:
        super().__init__(dim=32)
        self.files: list[bytes] = []
        self.pixel_images = 0

    @property
    def accepts_encoded_images(self) -> bool:
        return True

    async def encode_images(self, images):  # type: ignore[no-untyped-def]
        from mediasearch.encoders.base import ImageEmbeddings
        from mediasearch.errors import ImageError

        self.files.extend(images)
        errors = tuple(ImageError("corrupt JPEG data") if b"\xff\xd9" not in d else None for d in images)
        vectors = np.stack([fake_vector(d, self.dim) for d in images])
        return ImageEmbeddings(vectors, errors)

    async def encode_pixels(self, pixels):  # type: ignore[no-untyped-def]
        self.pixel_images += len(pixels)
        return await super().encode_pixels(pixels)


def test_with_an_encoder_that_decodes_on_its_server_the_indexer_sends_the_files_it_can_take(
    settings: Settings, tmp_path: Path
) -> None:
    from PIL import Image

    rgba = io.BytesIO()
    Image.new("RGBA", (40, 30), (10, 200, 30, 128)).save(rgba, "PNG")  # alpha: decoded here
    truncated = scene_bytes(3)[:-400]  # the header is fine; the server finds the rest corrupt
    files = {
        "a.jpg": scene_bytes(1),
        "b.jpg": scene_bytes(2),
        "alpha.png": rgba.getvalue(),
        "bad.jpg": truncated,
    }
    write(tmp_path / "f", files)
    encoder = _ServerDecodingEncoder()

    async def go() -> None:
        async with encoder:
            events = [ObjectEvent("created", "local", k) for k in files]
            source = MemorySource([events])
            await run_pipeline(
                settings, source, FolderObjects(tmp_path / "f", max_bytes=10**6), encoder=encoder
            )

    asyncio.run(go())
    assert sorted(encoder.files) == sorted([files["a.jpg"], files["b.jpg"], truncated])
    assert encoder.pixel_images == 1  # the PNG with alpha, decoded by the indexer's workers
    by_key = {r.key: r for r in rows(sessions_for(settings.database_url))}
    assert {k: r.status for k, r in by_key.items()} == {
        "a.jpg": INDEXED, "b.jpg": INDEXED, "alpha.png": INDEXED, "bad.jpg": FAILED,
    }  # fmt: skip
    assert "corrupt" in (by_key["bad.jpg"].error or "")
    assert (by_key["a.jpg"].width, by_key["alpha.png"].width, by_key["alpha.png"].height) == (64, 40, 30)
    # thumbnails: made by the decode workers from the files sent to the server, and with the pixels
    with sessions_for(settings.database_url)() as session:
        thumbs = {k: get_thumbnail(session, r.id) for k, r in by_key.items()}
    assert thumbs["bad.jpg"] is None  # refused by the server: failed, so no thumbnail is kept
    sizes = {k: Image.open(io.BytesIO(t)).size for k, t in thumbs.items() if t is not None}
    assert sizes == {"a.jpg": (64, 64), "b.jpg": (64, 64), "alpha.png": (40, 30)}  # never upscaled


def test_a_file_deleted_then_written_again_with_the_same_bytes_is_indexed_again(
    settings: Settings, tmp_path: Path
) -> None:
    data = scene_bytes(4)
    write(tmp_path / "f", {"a.jpg": data})
    created = [[ObjectEvent("created", "local", "a.jpg")]]
    run_events(settings, tmp_path / "f", created)
    (tmp_path / "f" / "a.jpg").unlink()
    run_events(settings, tmp_path / "f", [[ObjectEvent("removed", "local", "a.jpg")]])
    write(tmp_path / "f", {"a.jpg": data})  # the same file again: the same version (ETag)
    run_events(settings, tmp_path / "f", created)
    run_events(settings, tmp_path / "f", created)  # and its event delivered twice

    sessions = sessions_for(settings.database_url)
    (old, new) = rows(sessions)
    assert (old.status, new.status, old.etag == new.etag) == (REMOVED, INDEXED, True)
    assert dict(served_ids(sessions, store_of(settings), settings.num_shards)) == {new.id: 1}
