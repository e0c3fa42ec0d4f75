"""Signed links to an image's thumbnail and original on the gateway's HTTP port.

A browser loads a grid of thumbnails with ``<img src>``, which cannot send an
``Authorization`` header, so each result carries a link signed for that image: HMAC-SHA256 over
(image id, expiry) with a key derived from the page-token secret (every replica shares it; the
previous secret is accepted during a rotation). A link is handed only to a caller whose key was
accepted for the search, grants only that image's pictures (``/thumbnail`` and ``/original``),
and expires like a presigned S3 URL (``MEDIASEARCH_GATEWAY_URL_EXPIRY_S``).

Expiries are rounded up to a window of half that lifetime, so the same image gets the same link
for a while and the browser's cache serves it again across searches.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence

from mediasearch.errors import PermissionDenied

_PURPOSE = b"mediasearch image links v1"


def _key(secret: str) -> bytes:
    return hmac.new(secret.encode(), _PURPOSE, hashlib.sha256).digest()


class ImageLinks:
    """``thumbnail_url(id)`` for results; ``check(id, expires, sig)`` for the routes serving them."""

    def __init__(
        self,
        secrets: Sequence[str],
        expiry_s: int,
        base_url: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = [_key(s) for s in secrets if s]
        if not self._keys:
            raise ValueError("image links need a secret")
        self.expiry_s = max(2, expiry_s)
        self.base_url = base_url.rstrip("/")
        self.clock = clock

    def _sign(self, key: bytes, image_id: int, expires: int) -> str:
        return hmac.new(key, f"{image_id}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def thumbnail_url(self, image_id: int) -> str:
        window = self.expiry_s // 2
        expires = (int(self.clock()) // window + 2) * window  # at least half the lifetime left
        sig = self._sign(self._keys[0], image_id, expires)
        return f"{self.base_url}/v1/images/{image_id}/thumbnail?expires={expires}&sig={sig}"

    def check(self, image_id: int, expires: str | None, sig: str | None) -> None:
        """Raises PermissionDenied unless ``sig`` signs (``image_id``, ``expires``) and it is still valid."""
        if not expires or not sig:
            raise PermissionDenied("this link is not signed: use the thumbnail_url of a search result")
        try:
            when = int(expires)
        except ValueError:
            raise PermissionDenied("this link's expiry is not a number") from None
        if when < self.clock():
            raise PermissionDenied("this link has expired: search again for a fresh one")
        if not any(hmac.compare_digest(self._sign(k, image_id, when), sig) for k in self._keys):
            raise PermissionDenied("this link's signature is not valid for this image")
