"""The gateway's local SigV4 presigner produces exactly botocore's presigned URLs."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.credentials import Credentials

from mediasearch.gateway.presign import Presigner

KEYS = ["photos/cat.jpg", "holiday photos/day 3+3 (1).jpg", "ünïcode/ß~x.png"]


def _split(url: str) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", parse_qs(parts.query)


@pytest.mark.parametrize("token", [None, "session-token/with+chars="])
@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:5055", None])
@pytest.mark.parametrize("key", KEYS)
def test_presigned_url_equals_botocores(key: str, endpoint: str | None, token: str | None) -> None:
    region = "eu-west-1"
    client = boto3.client(
        "s3", region_name=region, endpoint_url=endpoint, aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", aws_session_token=token,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path" if endpoint else "virtual"}),
    )  # fmt: skip
    theirs = client.generate_presigned_url(
        "get_object", Params={"Bucket": "my-bucket", "Key": key}, ExpiresIn=900
    )
    when = datetime.strptime(parse_qs(urlsplit(theirs).query)["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    ours = Presigner(creds, region, endpoint).url("my-bucket", key, 900, when.replace(tzinfo=UTC))
    assert _split(ours) == _split(theirs)
