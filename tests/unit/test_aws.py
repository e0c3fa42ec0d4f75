"""The one AWS boundary: botocore's errors become the project's, the same way everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from mediasearch import aws
from mediasearch.errors import ConfigError, Conflict, NotFound, Unavailable


def _client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "said the server"}}, "GetObject")


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("NoSuchKey", NotFound),
        ("404", NotFound),
        ("NoSuchBucket", NotFound),
        ("PreconditionFailed", Conflict),
        ("412", Conflict),
        ("SlowDown", Unavailable),
        ("AccessDenied", Unavailable),
        ("AWS.SimpleQueueService.NonExistentQueue", Unavailable),
    ],
)
def test_client_errors_map_by_code(code: str, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"s3://b/k.*{code}"), aws.translated("s3://b/k"):
        raise _client_error(code)


@pytest.mark.parametrize(
    "exc", [EndpointConnectionError(endpoint_url="http://nowhere"), NoCredentialsError()]
)
def test_no_answer_at_all_is_unavailable(exc: Exception) -> None:
    with pytest.raises(Unavailable, match="listing"), aws.translated("listing"):
        raise exc


def test_a_client_that_cannot_be_made_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="sqs client"):
        aws.client("sqs")


def test_clients_share_one_retry_policy_and_take_a_pool_size() -> None:
    client = aws.client("s3", endpoint_url="http://127.0.0.1:9", region="us-east-1", pool=7)
    retries = client.meta.config.retries  # botocore counts the first attempt too
    assert retries["mode"] == "standard" and retries["total_max_attempts"] == aws.RETRIES["max_attempts"] + 1
    assert client.meta.config.max_pool_connections == 7
