"""S3 event notifications as SQS bodies: direct, through SNS, test events, encoded keys, garbage."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from mediasearch.errors import InvalidInput
from mediasearch.indexer.events import ObjectEvent, parse_message


def s3_record(name: str, key: str, etag: str | None = "abc123", bucket: str = "photos") -> dict[str, object]:
    obj: dict[str, object] = {"key": key, "size": 1234, "sequencer": "0055AED6DCD90281E5"}
    if etag is not None:
        obj["eTag"] = etag
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": "2026-11-28T04:00:00.000Z",
        "eventName": name,
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket}, "object": obj},
    }


def body(*records: dict[str, object]) -> str:
    return json.dumps({"Records": list(records)})


def test_object_created_put_becomes_a_created_event_with_etag_size_and_time() -> None:
    (event,) = parse_message(body(s3_record("ObjectCreated:Put", "cats/tom.jpg")))
    assert event == ObjectEvent(
        "created", "photos", "cats/tom.jpg", "abc123", 1234,
        datetime(2026, 11, 28, 4, 0, tzinfo=UTC), "0055AED6DCD90281E5",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("encoded", "key"),
    [
        ("my+holiday/beach+photo.jpg", "my holiday/beach photo.jpg"),
        ("caf%C3%A9.png", "café.png"),
        ("a%2Bb.jpg", "a+b.jpg"),
        ("100%25.jpg", "100%.jpg"),
    ],
)
def test_object_keys_are_url_decoded_with_plus_as_space(encoded: str, key: str) -> None:
    (event,) = parse_message(body(s3_record("ObjectCreated:Put", encoded)))
    assert event.key == key


def test_every_object_created_and_removed_variant_is_recognised_and_others_ignored() -> None:
    events = parse_message(
        body(
            s3_record("ObjectCreated:CompleteMultipartUpload", "a.jpg", '"quoted-etag"'),
            s3_record("ObjectCreated:Copy", "b.jpg"),
            s3_record("ObjectRemoved:Delete", "c.jpg", None),
            s3_record("ObjectRemoved:DeleteMarkerCreated", "d.jpg", None),
            s3_record("ObjectRestore:Completed", "e.jpg"),
            s3_record("LifecycleTransition", "f.jpg"),
        )
    )
    assert [(e.kind, e.key, e.etag) for e in events] == [
        ("created", "a.jpg", "quoted-etag"),
        ("created", "b.jpg", "abc123"),
        ("removed", "c.jpg", None),
        ("removed", "d.jpg", None),
    ]


def test_test_event_sent_when_notifications_are_configured_has_no_events() -> None:
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-11-28T04:00:00Z",
                  "Bucket": "photos", "RequestId": "X", "HostId": "Y"}  # fmt: skip
    assert parse_message(json.dumps(test_event)) == []


def test_sns_envelope_is_unwrapped_including_a_test_event_inside_it() -> None:
    inner = body(s3_record("ObjectCreated:Put", "dogs/rex.jpg"))
    envelope = {"Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:1:t",
                "Message": inner, "Timestamp": "2026-11-28T04:00:00.000Z"}  # fmt: skip
    (event,) = parse_message(json.dumps(envelope))
    assert (event.kind, event.bucket, event.key) == ("created", "photos", "dogs/rex.jpg")
    test_inside = {"Type": "Notification", "Message": json.dumps({"Event": "s3:TestEvent"})}
    assert parse_message(json.dumps(test_inside)) == []


@pytest.mark.parametrize(
    "garbage",
    [
        "not json at all",
        "[1, 2, 3]",
        json.dumps({"hello": "world"}),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {}}}]}),
        json.dumps(
            {
                "Records": [
                    {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {"key": ""}}}
                ]
            }
        ),
        json.dumps({"Records": ["not an object"]}),
    ],
)
def test_a_body_that_is_not_an_s3_event_is_rejected_as_invalid_input(garbage: str) -> None:
    with pytest.raises(InvalidInput):
        parse_message(garbage)


@pytest.mark.parametrize(
    ("sent", "read"),
    [
        ("0055aed6dcd90281e5", "0055AED6DCD90281E5"),  # hex, stored upper-case (compared padded)
        ("not-hex", None),
        ("F" * 65, None),  # longer than the column: absent, as if not sent
        (12345, None),
    ],
)
def test_a_sequencer_is_read_as_hex_or_as_absent(sent: object, read: str | None) -> None:
    record = s3_record("ObjectRemoved:Delete", "a.jpg")
    record["s3"]["object"]["sequencer"] = sent  # type: ignore[index]
    (event,) = parse_message(body(record))
    assert event.sequencer == read
