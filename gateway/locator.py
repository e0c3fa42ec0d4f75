"""Where an indexed image lives: its URL for callers, and its bytes ("more like this").

Images in S3 get presigned URLs (signed locally by :mod:`mediasearch.gateway.presign`: no request is made) or
``s3://`` URLs;
images indexed from a local folder (embedded mode) get ``file://`` URLs under ``images_root``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from mediasearch.errors import NotFound, Unavailable
from mediasearch.gateway.presign import Presigner
from mediasearch.metadata.images_repo import ImageRecord

log = logging.getLogger(__name__)
LOCAL_BUCKET = "local"  # the bucket name of images indexed from a local folder


class ImageLocator:
    """URLs and bytes of indexed images, from S3 or a local folder."""

    def __init__(
        self,
        *,
        images_root: Path | None = None,
        s3_endpoint_url: str | None = None,
        presign: bool = True,
        expiry_s: int = 3600,
    ) -> None:
        self.images_root = images_root.resolve() if images_root is not None else None
        self.s3_endpoint_url = s3_endpoint_url
        self.presign = presign
        self.expiry_s = expiry_s
        self._s3: Any = None
        self._presigner: Presigner | None = None
        self._resolved = False

    def warm(self) -> None:
        """Resolve credentials now (up to a second) rather than in the first request."""
        if self.presign:
            self._get_presigner()

    def _get_presigner(self) -> Presigner | None:
        if not self._resolved:
            self._resolved = True
            self._presigner = Presigner.from_environment(self.s3_endpoint_url)
            if self._presigner is None:
                log.warning("no AWS credentials: returning s3:// URLs instead of presigned ones")
        return self._presigner

    def _local_path(self, image: ImageRecord) -> Path | None:
        key = Path(image.key)
        if key.is_absolute():
            return key
        if image.bucket == LOCAL_BUCKET and self.images_root is not None:
            return self.images_root / key
        return None

    def _client(self) -> Any:
        if self._s3 is None:
            import boto3

            self._s3 = boto3.client("s3", endpoint_url=self.s3_endpoint_url)
        return self._s3

    def url(self, image: ImageRecord) -> str:
        local = self._local_path(image)
        if local is not None:
            return local.as_uri()
        if image.bucket == LOCAL_BUCKET:
            return ""
        if self.presign:
            presigner = self._get_presigner()
            if presigner is not None:
                return presigner.url(image.bucket, image.key, self.expiry_s)
        return f"s3://{image.bucket}/{image.key}"

    async def read(self, image: ImageRecord) -> bytes:
        return await asyncio.to_thread(self._read, image)

    def _read(self, image: ImageRecord) -> bytes:
        local = self._local_path(image)
        if local is not None:
            try:
                return local.read_bytes()
            except OSError as exc:
                raise NotFound(f"image {image.image_id}: cannot read {local}: {exc.strerror}") from exc
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self._client().get_object(Bucket=image.bucket, Key=image.key)["Body"]
            return bytes(body.read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
                raise NotFound(f"image {image.image_id}: s3://{image.bucket}/{image.key} is gone") from exc
            raise Unavailable(f"reading s3://{image.bucket}/{image.key}: {exc}") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"reading s3://{image.bucket}/{image.key}: {exc}") from exc
