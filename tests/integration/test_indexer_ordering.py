"""Deletes and overwrites of one key applied in the order S3 performed them, whatever order their
events are committed in and however many indexers race: PostgreSQL, moto's S3 (what the bucket
holds now, asked when events cannot be ordered), a folder segment store.

Items are built already fetched and encoded, so a test controls exactly when each one is published
relative to the others: the hardest case, a version fetched before it was deleted or overwritten
and published after.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from mediasearch import aws
from mediasearch.dev.emulated_aws import NotifyingBucket
from mediasearch.indexer.commit import Committer
from mediasearch.indexer.events import ObjectEvent
from mediasearch.indexer.items import Item
from mediasearch.indexer.source import Delivery
from mediasearch.metadata.models import INDEXED, REMOVED
from mediasearch.objects import S3Objects, StoredObject, clean_etag, sequencer_order
from mediasearch.vector_index.builder import BuildConfig
from mediasearch.vector_index.partition import HashPartitioner
from mediasearch.vector_index.store import LocalFolderStore, SegmentStore
from tests.support.index import sessions_for
from tests.support.indexer import rows, served_ids

SHARDS = 2
SAME_SECOND = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)  # S3's last-modified: one-second resolution
MOTO_SEQUENCER = "617F08299329D189"  # what moto sends for every event: orders nothing


@pytest.fixture
def bucket(module_endpoint: str, aws_env: None) -> NotifyingBucket:
    return NotifyingBucket.create(module_endpoint, f"order-{uuid.uuid4().hex[:8]}", notify=False)


@pytest.fixture
def world(bucket: NotifyingBucket, postgres_url: str, tmp_path: Path) -> World:
    return World(bucket, sessions_for(postgres_url), LocalFolderStore(tmp_path / "segments"))


class World:
    """The bucket, the database and the segment store, and committers like the indexer's."""

    def __init__(self, bucket: NotifyingBucket, sessions: sessionmaker[Session], store: SegmentStore) -> None:
        self.bucket = bucket
        self.sessions = sessions
        self.store = store
        self.s3 = aws.client("s3", endpoint_url=bucket.endpoint)
        self.objects = S3Objects(self.s3, max_bytes=1 << 20)

    def committer(self) -> Committer:
        return Committer(
            self.sessions,
            self.store,
            HashPartitioner(SHARDS),
            BuildConfig.defaults(),
            "v",
            objects=self.objects,
        )

    def put(self, key: str) -> str:
        """Write a new version (unique bytes); its ETag."""
        etag = self.s3.put_object(Bucket=self.bucket.name, Key=key, Body=uuid.uuid4().bytes)["ETag"]
        return str(clean_etag(etag))

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket.name, Key=key)

    def created(self, key: str, etag: str, sequencer: str | None) -> Item:
        """A create event fetched and encoded, ready to commit (every version in the same second)."""
        ev = ObjectEvent("created", self.bucket.name, key, etag, time=SAME_SECOND, sequencer=sequencer)
        it = Item(Delivery([ev]), ev, fetched=StoredObject(etag, 16, "image/jpeg", SAME_SECOND))
        seed = int(etag[:8], 16)
        vector = np.random.default_rng(seed).standard_normal(32).astype(np.float32)
        it.vector = vector / np.linalg.norm(vector)
        it.width = it.height = 1
        return it

    def removed(self, key: str, sequencer: str | None) -> Item:
        ev = ObjectEvent("removed", self.bucket.name, key, sequencer=sequencer)
        return Item(Delivery([ev]), ev)

    def served(self) -> dict[tuple[str, str], int]:
        """``{(key, etag): times served}`` for every version that some shard serves."""
        counts = served_ids(self.sessions, self.store, SHARDS)
        by_id = {r.id: (r.key, r.etag) for r in rows(self.sessions)}
        return {by_id[i]: n for i, n in counts.items()}

    def status(self) -> dict[tuple[str, str], str]:
        return {(r.key, r.etag): r.status for r in rows(self.sessions)}


def seq(n: int) -> str:
    """A sequencer as S3 writes them (hex, upper case); lengths vary, so some need padding."""
    return f"{n:X}" if n % 2 else f"00{n:X}"


def test_sequencers_compare_left_padded_and_equal_or_missing_ones_order_nothing() -> None:
    assert sequencer_order("0A", "9") == 1  # "0A" > "09" once padded, though "0A" < "9" as text
    assert sequencer_order("9", "000A") == -1
    assert sequencer_order("0055AED6DCD90281E5", "55AED6DCD90281E4") == 1
    assert sequencer_order("ab", "AB") is None and sequencer_order(None, "1") is None


@pytest.mark.parametrize("sequenced", [True, False], ids=["s3-sequencers", "no-sequencers"])
def test_a_version_deleted_while_its_create_is_in_flight_is_never_served(
    world: World, sequenced: bool
) -> None:
    etag = world.put("cat.jpg")
    create = world.created("cat.jpg", etag, seq(1) if sequenced else MOTO_SEQUENCER)
    slow = world.committer()
    reserved = slow.reserve([create])  # fetched and reserved; the batch is still being encoded ...
    world.delete("cat.jpg")
    removal = world.removed("cat.jpg", seq(2) if sequenced else MOTO_SEQUENCER)
    world.committer().commit([removal])  # ... when another indexer handles the delete
    slow.publish(reserved, [])

    assert (create.outcome, removal.outcome) == ("stale", "removed")
    assert world.status() == {("cat.jpg", etag): REMOVED}
    assert world.served() == {}


@pytest.mark.parametrize("sequenced", [True, False], ids=["s3-sequencers", "no-sequencers"])
def test_a_delete_committed_before_an_older_create_arrives_keeps_it_out(
    world: World, sequenced: bool
) -> None:
    etag = world.put("dog.jpg")
    create = world.created("dog.jpg", etag, seq(3) if sequenced else MOTO_SEQUENCER)
    world.delete("dog.jpg")
    world.committer().commit([world.removed("dog.jpg", seq(4) if sequenced else MOTO_SEQUENCER)])
    world.committer().commit([create])  # the create's event arrives late (its object was read in time)

    assert create.outcome == "stale" and world.served() == {}


def test_a_create_newer_than_the_recorded_delete_is_indexed_even_if_an_older_delete_arrives_later(
    world: World,
) -> None:
    first = world.put("owl.jpg")
    world.committer().commit([world.created("owl.jpg", first, seq(10))])
    world.delete("owl.jpg")
    again = world.put("owl.jpg")
    world.committer().commit([world.created("owl.jpg", again, seq(12))])  # written again after the delete
    world.committer().commit([world.removed("owl.jpg", seq(11))])  # the delete's event arrives last

    assert world.status() == {("owl.jpg", first): REMOVED, ("owl.jpg", again): INDEXED}
    assert world.served() == {("owl.jpg", again): 1}


@pytest.mark.parametrize("sequenced", [True, False], ids=["s3-sequencers", "no-sequencers"])
def test_two_writes_in_the_same_second_keep_the_later_one_whichever_is_published_last(
    world: World, sequenced: bool
) -> None:
    older = world.put("fox.jpg")
    newer = world.put("fox.jpg")  # same second: the last-modified times cannot order them
    early = world.created("fox.jpg", older, seq(20) if sequenced else MOTO_SEQUENCER)
    late = world.created("fox.jpg", newer, seq(21) if sequenced else MOTO_SEQUENCER)
    a, b = world.committer(), world.committer()
    reserved_late = b.reserve([late])  # the newer version reserves the lower id ...
    reserved_early = a.reserve([early])
    b.publish(reserved_late, [])
    a.publish(reserved_early, [])  # ... and the older one is published last

    assert world.status() == {("fox.jpg", older): REMOVED, ("fox.jpg", newer): INDEXED}
    assert world.served() == {("fox.jpg", newer): 1}


@pytest.mark.parametrize("sequenced", [True, False], ids=["s3-sequencers", "no-sequencers"])
def test_four_indexers_racing_over_shuffled_events_end_with_what_the_bucket_holds(
    world: World, sequenced: bool
) -> None:
    """A history of writes, overwrites and deletes on a few keys; every event is fetched before
    anything is committed, then four committers publish them shuffled, in parallel, some twice."""
    rng = random.Random(7 if sequenced else 8)
    keys = [f"k{i}.jpg" for i in range(6)]
    events: list[Item] = []
    final: dict[str, str | None] = dict.fromkeys(keys)
    for n in range(60):
        key = rng.choice(keys)
        sequencer = seq(100 + n) if sequenced else MOTO_SEQUENCER
        if final[key] is not None and rng.random() < 0.35:
            world.delete(key)
            final[key] = None
            events.append(world.removed(key, sequencer))
        else:
            etag = world.put(key)
            final[key] = etag
            events.append(world.created(key, etag, sequencer))
    deliveries = events + rng.sample(events, 15)  # at-least-once: some arrive twice
    rng.shuffle(deliveries)
    queue = list(deliveries)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def indexer() -> None:
        committer = world.committer()
        try:
            while True:
                with lock:
                    batch = [queue.pop() for _ in range(min(len(queue), rng.randint(1, 4)))]
                if not batch:
                    return
                committer.commit([_fresh(it) for it in batch])
        except BaseException as exc:  # reported below, with the thread's name
            errors.append(exc)

    threads = [threading.Thread(target=indexer, name=f"indexer-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors

    expected = {(k, e): 1 for k, e in final.items() if e is not None}
    assert world.served() == expected
    indexed = Counter(k for (k, _), st in world.status().items() if st == INDEXED)
    assert indexed == Counter(k for k, e in final.items() if e is not None)


def _fresh(it: Item) -> Item:
    """A new delivery of the same event (a redelivered message is a new Item)."""
    copy = Item(Delivery([it.event]), it.event, fetched=it.fetched)
    copy.vector, copy.width, copy.height = it.vector, it.width, it.height
    return copy


@pytest.mark.parametrize("sequenced", [True, False], ids=["s3-sequencers", "no-sequencers"])
def test_the_same_bytes_uploaded_again_after_a_delete_are_searchable_again_once(
    world: World, sequenced: bool
) -> None:
    body = uuid.uuid4().bytes
    s3, bucket = world.s3, world.bucket.name
    etag = str(clean_etag(s3.put_object(Bucket=bucket, Key="cat.jpg", Body=body)["ETag"]))
    first = world.created("cat.jpg", etag, seq(40) if sequenced else MOTO_SEQUENCER)
    world.committer().commit([first])
    world.delete("cat.jpg")
    world.committer().commit([world.removed("cat.jpg", seq(41) if sequenced else MOTO_SEQUENCER)])
    assert world.served() == {}
    again = str(clean_etag(s3.put_object(Bucket=bucket, Key="cat.jpg", Body=body)["ETag"]))
    assert again == etag  # S3's ETag of the same bytes: the same "version" as the deleted one

    committer = world.committer()
    upload = world.created("cat.jpg", etag, seq(42) if sequenced else MOTO_SEQUENCER)
    assert not committer.already_done(bucket, "cat.jpg", etag, upload.event.sequencer)
    committer.commit([upload])
    old = _fresh(first)  # the first upload's event, delivered once more, late
    if sequenced:
        assert committer.already_done(bucket, "cat.jpg", etag, old.event.sequencer)
    committer.commit([old])  # without sequencers it is fetched; the bucket's live row takes it

    assert upload.outcome == "indexed" and old.outcome == "duplicate"
    statuses = sorted(r.status for r in rows(world.sessions))
    assert statuses == [INDEXED, REMOVED]
    assert world.served() == {("cat.jpg", etag): 1}
