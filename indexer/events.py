"""S3 event notifications, as they arrive in SQS message bodies, parsed into :class:`ObjectEvent`.

Shapes handled (all seen in production):

- S3 -> SQS directly: ``{"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", ...}]}``
- S3 -> SNS -> SQS: an SNS envelope ``{"Type": "Notification", "Message": "<the S3 JSON as a string>"}``
- ``{"Event": "s3:TestEvent", ...}``: sent once when notifications are configured; no records.
- EventBridge-style is not handled (a different product; configure S3 notifications instead).

Object keys arrive URL-encoded with ``+`` for spaces (``unquote_plus``). ``ObjectCreated:*`` (Put,
Post, Copy, CompleteMultipartUpload) become ``created``; ``ObjectRemoved:*`` (Delete,
DeleteMarkerCreated) become ``removed``. Other event names (restore, replication, lifecycle
transitions) are ignored. A body that is not JSON or not one of these shapes raises
:class:`~mediasearch.errors.InvalidInput`: the message is poison and goes to the dead-letter queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

from mediasearch.errors import InvalidInput
from mediasearch.objects import clean_etag

EventKind = Literal["created", "removed"]


@dataclass(frozen=True)
class ObjectEvent:
    """Something happened to one object version.

    ``etag`` is the object's ETag without quotes (None for removals and when the producer did not
    send one: the fetcher then reads it from the object). ``time`` is when S3 saw it.
    """

    kind: EventKind
    bucket: str
    key: str
    etag: str | None = None
    size: int | None = None
    time: datetime | None = None
    sequencer: str | None = None


def parse_message(body: str) -> list[ObjectEvent]:
    """The object events in one SQS message body (empty for test events and ignored event types)."""
    try:
        doc = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"message body is not JSON: {body[:80]!r}") from exc
    if not isinstance(doc, dict):
        raise InvalidInput(f"message body is not a JSON object: {body[:80]!r}")
    if doc.get("Type") == "Notification" and "Message" in doc:  # SNS envelope
        message = doc["Message"]
        return parse_message(message if isinstance(message, str) else json.dumps(message))
    if doc.get("Event") == "s3:TestEvent":
        return []
    records = doc.get("Records")
    if not isinstance(records, list):
        raise InvalidInput(f"not an S3 event notification (no Records): {body[:80]!r}")
    events = []
    for record in records:
        event = _parse_record(record)
        if event is not None:
            events.append(event)
    return events


def _parse_record(record: Any) -> ObjectEvent | None:
    if not isinstance(record, dict):
        raise InvalidInput("an S3 event record is not a JSON object")
    name = str(record.get("eventName", ""))
    if name.startswith("ObjectCreated:"):
        kind: EventKind = "created"
    elif name.startswith("ObjectRemoved:"):
        kind = "removed"
    else:
        return None
    try:
        s3 = record["s3"]
        bucket = str(s3["bucket"]["name"])
        obj = s3["object"]
        key = unquote_plus(str(obj["key"]))
    except (KeyError, TypeError) as exc:
        raise InvalidInput(f"S3 event record without bucket name or object key ({exc!r})") from exc
    if not bucket or not key:
        raise InvalidInput("S3 event record with an empty bucket name or object key")
    size = obj.get("size")
    return ObjectEvent(
        kind=kind,
        bucket=bucket,
        key=key,
        etag=clean_etag(obj.get("eTag") or obj.get("etag")) if kind == "created" else None,
        size=int(size) if isinstance(size, int | float) else None,
        time=_parse_time(record.get("eventTime")),
        sequencer=obj.get("sequencer"),
    )


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
