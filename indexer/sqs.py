"""S3 event notifications through SQS: the production source (``mediasearch indexer``).

Long-polls the queue; each message is one :class:`~mediasearch.indexer.source.Delivery`. While a delivery is
in flight its visibility is extended (heartbeat), so a slow batch is not handed to another worker.
A message is deleted only after the transaction recording all its events committed; if the
process dies first, SQS delivers the message again and the database's idempotency key
(bucket, key, etag) turns the redelivery into a no-op or a resumption.

Poison messages. A body that is not an S3 event, or a message received more than
``max_receives`` times (it failed, or killed the worker, every time), is poison:

- with ``dlq_url`` set (``MEDIASEARCH_INDEXER_DLQ_URL``), the indexer itself sends the body to that
  queue (with the reason in a message attribute) and deletes the original;
- without it, the indexer leaves the message alone and relies on the queue's redrive policy
  (``maxReceiveCount``) to move it; configure one or the other, or a poison message cycles forever.

Objects that are not images (corrupt, truncated, too large) are not poison: they are recorded as
FAILED rows and their messages acknowledged.

Retries back off per message. A delivery that could not be processed now (its object, the
database, the encoder or the segment store unreachable) reappears after ``retry_delay_s`` doubled
for each earlier receive (15, 30, 60, 120 s with the defaults; at most :data:`MAX_RETRY_DELAY_S`),
so an outage of several minutes costs a message a few of its ``max_receives``; a fixed delay
dead-lettered every message in flight once an outage outlasted about ``max_receives`` x
``retry_delay_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from mediasearch import aws
from mediasearch.errors import InvalidInput
from mediasearch.indexer.events import parse_message
from mediasearch.indexer.source import Delivery, Source
from mediasearch.settings import Settings

log = logging.getLogger(__name__)
POISON_ATTRIBUTE = "mediasearch-poison-reason"
MAX_RETRY_DELAY_S = 900  # a retried message is back within 15 minutes, however often it failed
DEFAULTS = Settings.defaults()


class SqsSource(Source):
    """Deliveries from one SQS queue."""

    def __init__(
        self,
        client: Any,
        queue_url: str,
        *,
        wait_time_s: int = DEFAULTS.indexer_wait_time_s,
        visibility_timeout_s: int = DEFAULTS.indexer_visibility_timeout_s,
        max_receives: int = DEFAULTS.indexer_max_receives,
        dlq_url: str | None = None,
        retry_delay_s: int = DEFAULTS.indexer_retry_delay_s,
    ) -> None:
        self.client = client
        self.queue_url = queue_url
        self.wait_time_s = wait_time_s
        self.visibility_timeout_s = visibility_timeout_s
        self.max_receives = max_receives
        self.dlq_url = dlq_url
        self.retry_delay_s = retry_delay_s
        self.heartbeat_s = visibility_timeout_s / 4
        self.poisoned = 0
        self._lock = threading.Lock()
        self._in_flight: dict[str, tuple[Delivery, float]] = {}  # receipt handle -> (delivery, extended at)

    def receive(self, max_deliveries: int) -> list[Delivery]:
        with aws.translated(f"receiving from {self.queue_url}"):
            response = self.client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=max(1, min(10, max_deliveries)),
                WaitTimeSeconds=self.wait_time_s,
                VisibilityTimeout=self.visibility_timeout_s,
                AttributeNames=["ApproximateReceiveCount"],
            )
        out = []
        for message in response.get("Messages", []):
            receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
            try:
                events = parse_message(message.get("Body", ""))
            except InvalidInput as exc:
                self._poison(message, str(exc))
                continue
            if receives > self.max_receives:
                self._poison(message, f"received {receives} times without being processed")
                continue
            delivery = Delivery(events, token=message["ReceiptHandle"], receives=receives)
            with self._lock:
                self._in_flight[delivery.token] = (delivery, time.monotonic())
            out.append(delivery)
        return out

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._forget(deliveries)
        for chunk in _chunks([d.token for d in deliveries], 10):
            entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(chunk)]
            with aws.translated("deleting processed messages"):
                response = self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            for failed in response.get("Failed", []):  # redelivered later, then skipped as a duplicate
                log.warning("indexer: could not delete a processed message: %s", failed.get("Message"))

    def retry(self, deliveries: Sequence[Delivery]) -> None:
        """Make them visible again after ``retry_delay_s``, doubled for each earlier receive."""
        self._forget(deliveries)
        longest = max(self.retry_delay_s, MAX_RETRY_DELAY_S)
        by_delay: dict[int, list[str]] = defaultdict(list)
        for d in deliveries:
            by_delay[min(self.retry_delay_s * 2 ** min(max(d.receives - 1, 0), 16), longest)].append(d.token)
        for delay, handles in sorted(by_delay.items()):
            self._set_visibility(handles, delay)

    def release_in_flight(self) -> int:
        """Visibility 0 for every delivery not yet acknowledged: another worker receives them now."""
        with self._lock:
            handles = list(self._in_flight)
            self._in_flight.clear()
        if handles:
            self._set_visibility(handles, 0)
        return len(handles)

    def heartbeat(self) -> None:
        """Extend the visibility of deliveries in flight for more than a third of the timeout."""
        now = time.monotonic()
        due_after = self.visibility_timeout_s / 3
        with self._lock:
            due = [h for h, (_, at) in self._in_flight.items() if now - at >= due_after]
            for handle in due:
                self._in_flight[handle] = (self._in_flight[handle][0], now)
        if due:
            log.debug("indexer: extending the visibility of %d messages", len(due))
            self._set_visibility(due, self.visibility_timeout_s)

    def _set_visibility(self, handles: list[str], seconds: int) -> None:
        for chunk in _chunks(handles, 10):
            entries = [
                {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": seconds} for i, h in enumerate(chunk)
            ]
            with aws.translated("changing message visibility"):
                self.client.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)

    def _forget(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            for d in deliveries:
                self._in_flight.pop(d.token, None)

    def _poison(self, message: dict[str, Any], reason: str) -> None:
        self.poisoned += 1
        if self.dlq_url is None:
            log.error("indexer: poison message %s (%s); left for the queue's redrive policy",
                      message.get("MessageId"), reason)  # fmt: skip
            return
        log.error(
            "indexer: poison message %s (%s); moved to %s", message.get("MessageId"), reason, self.dlq_url
        )
        with aws.translated("moving a poison message to the dead-letter queue"):
            self.client.send_message(
                QueueUrl=self.dlq_url,
                MessageBody=message.get("Body") or "<empty>",
                MessageAttributes={POISON_ATTRIBUTE: {"DataType": "String", "StringValue": reason[:1000]}},
            )
            self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
