"""The one boundary with AWS (S3 and SQS, through boto3).

Every client the project makes comes from :func:`client` (endpoint, region, one retry policy, a
connection pool sized to the caller's concurrency), and every call runs inside :func:`translated`,
the one table from botocore's errors to the project's tree:

- ``404``, ``NoSuchKey``, ``NoSuchBucket``, ``NotFound`` -> :class:`NotFound` (the object or bucket
  is not there: an indexer acknowledges the event, a search answers NOT_FOUND);
- ``412``, ``PreconditionFailed`` -> :class:`Conflict` (``If-Match`` failed: the key holds a newer
  version);
- any other answer, and no answer at all (connection refused, timeouts, missing credentials)
  -> :class:`Unavailable` (try again later);
- a client that cannot be made (no region, say) -> :class:`ConfigError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from mediasearch.errors import ConfigError, Conflict, MediaSearchError, NotFound, Unavailable

#: botocore's standard mode: exponential backoff with jitter on throttling and transient errors.
RETRIES = {"max_attempts": 4, "mode": "standard"}
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 30  # per read; above SQS's longest long poll (20 s)
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})
_CONFLICT = frozenset({"412", "PreconditionFailed"})


def client(
    service: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    pool: int = 10,
    credentials: tuple[str, str] | None = None,
) -> Any:
    """A boto3 client for ``service`` (``s3``, ``sqs``). ``endpoint_url`` None means AWS itself;
    region and credentials come from AWS's own configuration unless given (the dev harness gives
    the emulator's)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    config = Config(
        retries=dict(RETRIES),
        max_pool_connections=pool,
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
    )
    keys = {}
    if credentials is not None:
        keys = {"aws_access_key_id": credentials[0], "aws_secret_access_key": credentials[1]}
    try:
        return boto3.client(service, endpoint_url=endpoint_url, region_name=region, config=config, **keys)
    except BotoCoreError as exc:  # e.g. no region configured
        raise ConfigError(f"cannot create the {service} client: {exc}") from exc


def error_for(exc: Exception, what: str) -> MediaSearchError:
    """The project error for a botocore exception raised while doing ``what``."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return Unavailable(f"{what}: {exc}")
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    if code in _NOT_FOUND:
        return NotFound(f"{what}: not found ({code})")
    if code in _CONFLICT:
        return Conflict(f"{what}: replaced by a newer version ({code})")
    return Unavailable(f"{what}: AWS answered {code or exc}: {error.get('Message', '')}".rstrip(": "))


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Raise botocore's errors inside the block as the project's (see the module docstring)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise error_for(exc, what) from exc
