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
So does a bucket name or key that S3 could not have sent (not a string, empty, longer than S3 allows,
a NUL or a lone surrogate: text neither S3 nor the images table holds). Optional fields that are
malformed (eTag, size, eventTime, sequencer) are read as absent, as when the producer leaves them out.
"""

from __future__ import annotations

import json
import math
import string
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
    sequencer: str | None = None  # S3's per-key order of events (hex; see sequencer_order)


MAX_BUCKET_CHARS = 255  # S3's bucket names: 63 characters (255 for legacy us-east-1 ones)
MAX_KEY_BYTES = 1024  # S3's object keys: at most 1,024 bytes of UTF-8
MAX_ETAG_CHARS = 128  # the images table's etag column
MAX_SEQUENCER_CHARS = 64  # the images and removals tables' sequencer column
MAX_ENVELOPES = 2  # S3 -> SNS -> SQS is one


def parse_message(body: str) -> list[ObjectEvent]:
    """The object events in one SQS message body (empty for test events and ignored event types)."""
    return _parse(body, depth=0)


def _parse(body: Any, depth: int) -> list[ObjectEvent]:
    try:
        doc = body if isinstance(body, dict) else json.loads(body)
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise InvalidInput(f"message body is not JSON: {_excerpt(body)}") from exc
    if not isinstance(doc, dict):
        raise InvalidInput(f"message body is not a JSON object: {_excerpt(body)}")
    if doc.get("Type") == "Notification" and "Message" in doc:  # SNS envelope
        if depth >= MAX_ENVELOPES:
            raise InvalidInput(f"SNS envelopes nested more than {MAX_ENVELOPES} deep")
        return _parse(doc["Message"], depth + 1)
    if doc.get("Event") == "s3:TestEvent":
        return []
    records = doc.get("Records")
    if not isinstance(records, list):
        raise InvalidInput(f"not an S3 event notification (no Records): {_excerpt(body)}")
    events = []
    for record in records:
        event = _parse_record(record)
        if event is not None:
            events.append(event)
    return events


def _parse_record(record: Any) -> ObjectEvent | None:
    if not isinstance(record, dict):
        raise InvalidInput("an S3 event record is not a JSON object")
    name = record.get("eventName")
    if not isinstance(name, str):
        return None
    if name.startswith("ObjectCreated:"):
        kind: EventKind = "created"
    elif name.startswith("ObjectRemoved:"):
        kind = "removed"
    else:
        return None
    try:
        s3 = record["s3"]
        bucket, obj = s3["bucket"]["name"], s3["object"]
        key = obj["key"]
    except (KeyError, TypeError) as exc:
        raise InvalidInput(f"S3 event record without bucket name or object key ({exc!r})") from exc
    if not isinstance(obj, dict) or not isinstance(bucket, str) or not isinstance(key, str):
        raise InvalidInput("S3 event record whose bucket name or object key is not a string")
    key = unquote_plus(key)
    if not bucket or not key:
        raise InvalidInput("S3 event record with an empty bucket name or object key")
    if len(bucket) > MAX_BUCKET_CHARS or not _clean(bucket):
        raise InvalidInput(f"S3 event record with an impossible bucket name: {bucket[:80]!r}")
    if not _clean(key) or len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidInput(f"S3 event record with an impossible object key: {key[:80]!r}")
    return ObjectEvent(
        kind=kind,
        bucket=bucket,
        key=key,
        etag=_etag(obj.get("eTag") or obj.get("etag")) if kind == "created" else None,
        size=_size(obj.get("size")),
        time=_parse_time(record.get("eventTime")),
        sequencer=_sequencer(obj.get("sequencer")),
    )


def _excerpt(body: Any) -> str:
    return repr(body[:80]) if isinstance(body, str) else f"a JSON {type(body).__name__}"


def _clean(text: str) -> bool:
    """Text S3 and the images table can hold: valid Unicode (no lone surrogates), no NUL."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value and _clean(value) else None


def _sequencer(value: Any) -> str | None:
    """S3's sequencer: a hexadecimal string (stored upper-case, at most the column's 64 characters)."""
    text = _text(value)
    if text is None or len(text) > MAX_SEQUENCER_CHARS or not all(c in string.hexdigits for c in text):
        return None
    return text.upper()


def _etag(value: Any) -> str | None:
    etag = clean_etag(_text(value))
    return etag if etag is not None and len(etag) <= MAX_ETAG_CHARS else None


def _size(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    size = int(value)
    return size if 0 <= size < 2**63 else None


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):  # not a time, or a UTC offset past year 1 or 9999
        return None
