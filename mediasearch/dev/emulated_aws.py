"""S3 and SQS for the development harness: moto's server, and buckets that notify a queue.

A :class:`NotifyingBucket` is what a deployment configures on AWS: a bucket whose
``ObjectCreated:*`` / ``ObjectRemoved:*`` notifications go to an SQS queue (the indexer's), with a
dead-letter queue beside it. ``make up``, the tests and the benchmarks make theirs here, on moto
running in this process (:func:`moto_server`) or as a child process (:func:`moto_command`, so its
request handling does not share the caller's GIL).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mediasearch import aws
from mediasearch.dev.processes import free_port

CREDENTIALS = ("testing", "testing")
REGION = "us-east-1"
#: The environment a child needs to talk to the emulator (moto accepts any keys).
ENV = {
    "AWS_ACCESS_KEY_ID": CREDENTIALS[0],
    "AWS_SECRET_ACCESS_KEY": CREDENTIALS[1],
    "AWS_DEFAULT_REGION": REGION,
}
EVENTS = ("s3:ObjectCreated:*", "s3:ObjectRemoved:*")


def client(service: str, endpoint: str, *, pool: int = 10) -> Any:
    """A client of the emulator at ``endpoint`` (through the project's one factory)."""
    return aws.client(service, endpoint_url=endpoint, region=REGION, pool=pool, credentials=CREDENTIALS)


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 + SQS server in this process, on a free loopback port; yields its endpoint."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def moto_command(port: int) -> list[str]:
    """The argv of moto's server as a child process (ready once ``/moto-api/`` answers)."""
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@dataclass
class NotifyingBucket:
    """A bucket, its event queue and dead-letter queue, and the notifications between them."""

    endpoint: str
    name: str
    queue_url: str
    dlq_url: str
    s3: Any
    sqs: Any

    @classmethod
    def create(
        cls,
        endpoint: str,
        name: str,
        *,
        queue: str | None = None,
        notify: bool = True,
        events: Sequence[str] = EVENTS,
        max_receives: int | None = None,
        also: Sequence[str] = (),
    ) -> NotifyingBucket:
        """Create (or find) the bucket ``name``, the queues ``<queue>`` and ``<queue>-dlq`` (queue
        defaults to ``<name>-events``), and with ``notify`` the bucket's notifications to the
        queue. ``max_receives`` sets the queue's redrive policy to the DLQ; ``also`` names more
        buckets to create (a segment store's)."""
        s3, sqs = client("s3", endpoint, pool=16), client("sqs", endpoint)
        queue = queue or f"{name}-events"
        with aws.translated(f"preparing s3://{name} and its queues at {endpoint}"):
            for each in (name, *also):
                with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                    s3.create_bucket(Bucket=each)
            dlq_url = sqs.create_queue(QueueName=f"{queue}-dlq")["QueueUrl"]
            attributes = {}
            if max_receives is not None:
                policy = {"deadLetterTargetArn": _arn(sqs, dlq_url), "maxReceiveCount": str(max_receives)}
                attributes["RedrivePolicy"] = json.dumps(policy)
            queue_url = sqs.create_queue(QueueName=queue, Attributes=attributes)["QueueUrl"]
        bucket = cls(endpoint, name, str(queue_url), str(dlq_url), s3, sqs)
        if notify:
            bucket.notify(events)
        return bucket

    def notify(self, events: Sequence[str] = EVENTS) -> None:
        """Send the bucket's ``events`` notifications to the queue."""
        config = {
            "QueueConfigurations": [{"QueueArn": _arn(self.sqs, self.queue_url), "Events": list(events)}]
        }
        with aws.translated(f"configuring the notifications of s3://{self.name}"):
            self.s3.put_bucket_notification_configuration(Bucket=self.name, NotificationConfiguration=config)

    def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        """PUT an object; its ETag (bare)."""
        extra = {"ContentType": content_type} if content_type else {}
        with aws.translated(f"putting s3://{self.name}/{key}"):
            response = self.s3.put_object(Bucket=self.name, Key=key, Body=data, **extra)
        return str(response["ETag"]).strip('"')

    def messages(self, queue_url: str | None = None) -> int:
        """Messages in the queue (visible and in flight)."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        with aws.translated("counting queued messages"):
            attrs = self.sqs.get_queue_attributes(QueueUrl=queue_url or self.queue_url, AttributeNames=names)
        return sum(int(attrs["Attributes"][n]) for n in names)


def _arn(sqs: Any, queue_url: str) -> str:
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    return str(attrs["Attributes"]["QueueArn"])
