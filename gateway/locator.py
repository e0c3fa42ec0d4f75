"""Where an indexed image lives: its URL for callers, and its bytes ("more like this").

Images in S3 get presigned URLs (signed locally by :mod:`mediasearch.gateway.presign`: no request is
made) or ``s3://`` URLs; images indexed from a local folder (embedded mode) get ``file://`` URLs
under ``images_root``. Bytes are read through :mod:`mediasearch.objects`, the same reader the
indexer fetches with.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from mediasearch import aws
from mediasearch.errors import ImageError, NotFound, Unavailable
from mediasearch.gateway.presign import Presigner
from mediasearch.metadata.images_repo import ImageRecord
from mediasearch.objects import FolderObjects, ObjectReader, S3Objects, StoredObject

log = logging.getLogger(__name__)


class ImageLocator:
    """URLs and bytes of indexed images, from S3 or a local folder."""

    def __init__(
        self,
        *,
        images_root: Path | None,
        local_bucket: str,
        s3_endpoint_url: str | None,
        presign: bool,
        expiry_s: int,
        max_bytes: int,
    ) -> None:
        self.images_root = images_root.resolve() if images_root is not None else None
        self.local_bucket = local_bucket  # images indexed from a folder, keyed relative to images_root
        self.s3_endpoint_url = s3_endpoint_url
        self.presign = presign
        self.expiry_s = expiry_s
        self.max_bytes = max_bytes
        self._folder = FolderObjects(self.images_root or Path("/"), max_bytes=max_bytes)
        self._s3: ObjectReader | None = None
        self._presigner: Presigner | None = None
        self._resolved = False
        self._warned = False

    def warm(self) -> None:
        """Resolve credentials now (up to a second) rather than in the first request."""
        if self.presign and not self._resolved:
            self._resolved = True
            self._presigner = Presigner.from_environment(self.s3_endpoint_url)

    def _get_presigner(self) -> Presigner | None:
        self.warm()
        if self._presigner is None and not self._warned:  # said once, when an S3 image needs a URL
            self._warned = True
            log.warning("no AWS credentials: returning s3:// URLs instead of presigned ones")
        return self._presigner

    def _local_path(self, image: ImageRecord) -> Path | None:
        key = Path(image.key)
        if key.is_absolute():
            return key
        if image.bucket == self.local_bucket and self.images_root is not None:
            return self.images_root / key
        return None

    def _objects(self) -> ObjectReader:
        if self._s3 is None:  # made on first use: embedded deployments never need a client
            self._s3 = S3Objects(
                aws.client("s3", endpoint_url=self.s3_endpoint_url), max_bytes=self.max_bytes
            )
        return self._s3

    def url(self, image: ImageRecord) -> str:
        local = self._local_path(image)
        if local is not None:
            return local.as_uri()
        if image.bucket == self.local_bucket:
            return ""
        if self.presign:
            presigner = self._get_presigner()
            if presigner is not None:
                return presigner.url(image.bucket, image.key, self.expiry_s)
        return f"s3://{image.bucket}/{image.key}"

    async def read(self, image: ImageRecord) -> bytes:
        """The image's bytes; NotFound when it is gone (or a local file cannot be read), ImageError
        when it is too large."""
        found = await asyncio.to_thread(self._get, image)
        if found.data is None:
            raise ImageError(f"image {image.image_id}: {found.error}")
        return found.data

    def _get(self, image: ImageRecord) -> StoredObject:
        local = self._local_path(image)
        try:
            if local is not None:
                return self._folder.get(image.bucket, str(local))
            return self._objects().get(image.bucket, image.key)
        except NotFound as exc:
            raise NotFound(f"image {image.image_id} is gone: {exc}") from exc
        except Unavailable as exc:
            if local is None:
                raise  # S3 is down: try again later
            raise NotFound(f"image {image.image_id}: cannot read {local}: {exc}") from exc
