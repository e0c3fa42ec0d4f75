"""The SQS worker against moto's S3 + SQS server (notifications configured on the bucket),
PostgreSQL, a real S3 segment store and the tiny CLIP in ONNX Runtime."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest

from mediasearch.dev.emulated_aws import NotifyingBucket
from mediasearch.dev.emulated_aws import client as emulator_client
from mediasearch.encoders import LocalEncoder
from mediasearch.indexer.sqs import POISON_ATTRIBUTE, SqsSource
from mediasearch.indexer.worker import arun_worker
from mediasearch.metadata.models import FAILED, INDEXED, REMOVED
from mediasearch.settings import Settings
from tests.support.index import sessions_for
from tests.support.indexer import (
    bad_inputs,
    bucket_settings,
    indexer_settings,
    rows,
    scene_bytes,
    search_ids,
    served_ids,
    store_of,
)


@pytest.fixture(scope="module")
def endpoint(module_endpoint: str) -> str:
    return module_endpoint


@pytest.fixture
def bucket(endpoint: str, aws_env: None) -> NotifyingBucket:
    name = f"photos-{uuid.uuid4().hex[:8]}"
    return NotifyingBucket.create(endpoint, name, notify=False, also=(f"{name}-segments",))


@pytest.fixture
def database_url(postgres_url: str) -> str:
    return postgres_url


def event_body(bucket: str, encoded_key: str, etag: str | None) -> str:
    obj = {"key": encoded_key} | ({"eTag": etag} if etag else {})
    record = {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": obj}}
    return json.dumps({"Records": [record]})


def work(settings: Settings) -> None:
    report = asyncio.run(arun_worker(settings, idle_exit_s=1.5))
    assert report.retried == 0


def test_s3_events_index_new_objects_replace_overwritten_ones_remove_deleted_ones_and_record_bad_ones(
    bucket: NotifyingBucket, database_url: str, tmp_path: Path, tiny_repository: Path
) -> None:
    bucket.notify()
    settings = indexer_settings(tmp_path, tiny_repository, database_url, **bucket_settings(bucket))
    good = {f"holiday photos/day {i}+{i}.jpg": scene_bytes(i) for i in range(12)}
    etags = {key: bucket.put(key, data) for key, data in good.items()}
    corpus = bad_inputs()
    for name, (data, _) in corpus.items():
        bucket.put(f"bad/{name}", data)
    dup = event_body(bucket.name, "holiday+photos/day+3%2B3.jpg", etags["holiday photos/day 3+3.jpg"])
    bucket.sqs.send_message(QueueUrl=bucket.queue_url, MessageBody=dup)  # a duplicate delivery
    bucket.sqs.send_message(QueueUrl=bucket.queue_url, MessageBody="this is not an S3 event")
    work(settings)

    sessions = sessions_for(database_url)
    by_key = {r.key: r for r in rows(sessions)}
    assert {k: by_key[k].status for k in good} == dict.fromkeys(good, INDEXED)
    for name, (_, reason) in corpus.items():
        row = by_key[f"bad/{name}"]
        assert row.status == FAILED and reason in (row.error or ""), (name, row.error)
    store = store_of(settings)
    assert set(served_ids(sessions, store, settings.num_shards).values()) == {1}
    assert len(served_ids(sessions, store, settings.num_shards)) == len(good)
    assert bucket.messages(bucket.queue_url) == 0
    poison = bucket.sqs.receive_message(QueueUrl=bucket.dlq_url, MessageAttributeNames=["All"])["Messages"]
    assert [m["Body"] for m in poison] == ["this is not an S3 event"]
    assert "not JSON" in poison[0]["MessageAttributes"][POISON_ATTRIBUTE]["StringValue"]

    # Phase two: overwrite one key, delete another.
    replaced, deleted = "holiday photos/day 1+1.jpg", "holiday photos/day 2+2.jpg"
    new_data = scene_bytes(50)
    bucket.put(replaced, new_data)
    bucket.s3.delete_object(Bucket=bucket.name, Key=deleted)
    work(settings)

    versions = [(r.status, r.id) for r in rows(sessions) if r.key == replaced]
    assert [s for s, _ in versions] == [REMOVED, INDEXED]
    assert [r.status for r in rows(sessions) if r.key == deleted] == [REMOVED]
    served = served_ids(sessions, store, settings.num_shards)
    assert versions[0][1] not in served and versions[1][1] in served and by_key[deleted].id not in served
    assert len(served) == len(good) - 1 and set(served.values()) == {1}

    async def vector() -> object:
        async with LocalEncoder(tiny_repository) as enc:
            return (await enc.encode_images([new_data])).raise_first()[0]

    assert search_ids(sessions, store, settings.num_shards, asyncio.run(vector()))[0] == versions[1][1]  # type: ignore[arg-type]
    assert bucket.messages(bucket.queue_url) == 0


def test_a_message_received_more_than_max_receives_times_is_moved_to_the_dead_letter_queue(
    bucket: NotifyingBucket, tmp_path: Path
) -> None:
    body = event_body(bucket.name, "a.jpg", None)
    bucket.sqs.send_message(QueueUrl=bucket.queue_url, MessageBody=body)
    client = emulator_client("sqs", bucket.endpoint)
    source = SqsSource(
        client, bucket.queue_url, wait_time_s=1, max_receives=2, dlq_url=bucket.dlq_url, retry_delay_s=0
    )
    for _ in range(2):  # it kills the worker (or fails) each time: never acknowledged
        (delivery,) = source.receive(10)
        source.retry([delivery])
    assert source.receive(10) == [] and source.poisoned == 1
    assert bucket.messages(bucket.queue_url) == 0
    (moved,) = bucket.sqs.receive_message(QueueUrl=bucket.dlq_url, MessageAttributeNames=["All"])["Messages"]
    assert (
        moved["Body"] == body
        and "received 3 times" in moved["MessageAttributes"][POISON_ATTRIBUTE]["StringValue"]
    )


def test_visibility_of_a_delivery_in_flight_is_extended_until_it_is_acknowledged(
    bucket: NotifyingBucket,
) -> None:
    bucket.sqs.send_message(QueueUrl=bucket.queue_url, MessageBody=json.dumps({"Records": []}))
    source = SqsSource(
        emulator_client("sqs", bucket.endpoint), bucket.queue_url, wait_time_s=0, visibility_timeout_s=3
    )
    (delivery,) = source.receive(10)
    for _ in range(4):  # a slow batch: 4.4 s > the 3 s visibility timeout
        time.sleep(1.1)
        source.heartbeat()
    assert source.receive(10) == []  # without the heartbeat it would be visible (and redelivered) now
    source.ack([delivery])
    assert bucket.messages(bucket.queue_url) == 0


def test_a_stopping_indexer_releases_what_it_could_not_finish_so_another_takes_it_at_once(
    bucket: NotifyingBucket, database_url: str, tmp_path: Path, tiny_repository: Path
) -> None:
    from mediasearch.encoders.fake import FakeEncoder

    bucket.notify()
    settings = indexer_settings(
        tmp_path, tiny_repository, database_url,
        **(bucket_settings(bucket) | {"indexer_visibility_timeout_s": 120, "indexer_stop_grace_s": 0.5}),
    )  # fmt: skip
    keys = [f"slow/{i}.jpg" for i in range(5)]
    for i, key in enumerate(keys):
        bucket.put(key, scene_bytes(i))

    def visible() -> int:
        attrs = bucket.sqs.get_queue_attributes(
            QueueUrl=bucket.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(attrs["Attributes"]["ApproximateNumberOfMessages"])

    async def stopped_mid_batch() -> float:
        stop = asyncio.Event()
        async with FakeEncoder(pass_seconds=600) as stuck:  # the batch can never finish
            worker = asyncio.create_task(arun_worker(settings, encoder=stuck, stop=stop))
            deadline = time.monotonic() + 30
            while visible() > 0:  # until the worker holds every message
                assert time.monotonic() < deadline, "the worker did not receive the messages"
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            asked = time.monotonic()
            stop.set()  # what SIGTERM does
            await asyncio.wait_for(worker, 30)
            return time.monotonic() - asked

    took = asyncio.run(stopped_mid_batch())
    assert took < 10, f"the stop took {took:.1f} s"
    assert visible() == len(keys), "the unfinished messages were not released"
    released_at = time.monotonic()
    work(settings)  # another worker: without the release it would wait for the 120 s visibility
    assert time.monotonic() - released_at < 60
    by_key = {r.key: r.status for r in rows(sessions_for(database_url))}
    assert {k: by_key.get(k) for k in keys} == dict.fromkeys(keys, INDEXED)
