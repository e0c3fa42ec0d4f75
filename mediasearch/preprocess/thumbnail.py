"""Thumbnails: what a page of results shows instead of the originals (issue 18).

One implementation, used by the indexer (which stores one per indexed image, beside its metadata)
and by the gateway (which serves it, and makes one from the original for an image indexed before
thumbnails existed):

- :func:`thumbnail_of`: an upright RGB image -> WebP bytes, its longest side ``size`` pixels (never
  upscaled past the original), aspect kept, Lanczos resampling (after a box reduction for large
  downscales). The decode path (:func:`~mediasearch.preprocess.image.prepare_image_with_size`) makes
  it from the image it decoded for the vision tower: no second decode.
- :func:`thumbnail_from_bytes`: encoded bytes -> the same, through the image module's guarded,
  reduced decoding (the limits, EXIF orientation, transparency on white, JPEG DCT scaling).

Measured on 20 images of the realistic corpus's mix (``mediasearch/dev/photo_corpus.py``), 2 shared
cores, Pillow 13, libwebp 1.6, 256 px, p50: a thumbnail adds 4-5 ms to the indexer's 27 ms decode
of a 12 Mpx phone JPEG (the resize and the WebP encode, about half each), 4-5.5 ms to a web JPEG's
or a small PNG's; it is 2 kB (screenshots) to 10 kB (noisy photos), 7.6 kB on average.
:func:`thumbnail_from_bytes` takes 30 ms for the 12 Mpx JPEG (its 1/8-scale decode), 4 ms for a
small image. Against :data:`METHOD` 2, libwebp's method 0 is 0.8 ms faster and 15% larger, 4 is
2.5 ms slower and 3% smaller, 6 is 8 ms slower and 10% smaller; bicubic instead of Lanczos saves
0.7 ms.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    from mediasearch.preprocess.image import DecodeLimits

THUMBNAIL_CONTENT_TYPE = "image/webp"
QUALITY = 80  # WebP quality: artefacts invisible at grid size
METHOD = 2  # libwebp's effort, 0 (fast) .. 6 (small); see the module doc
REDUCING_GAP = 2.0  # downscales beyond 2x are box-reduced first (a full-size 12 Mpx image: 15 ms)
_FILTER = Image.Resampling.LANCZOS
Box = tuple[float, float, float, float]


def thumbnail_of(img: Image.Image, size: int) -> bytes:
    """``img`` (upright; RGB, else flattened as for the vision tower) as WebP bytes, its longest
    side ``size`` pixels, or its own size when that is smaller."""
    return encode_thumbnail(img, size)


def thumbnail_from_bytes(data: bytes, limits: DecodeLimits, size: int) -> bytes:
    """The thumbnail of an encoded image, decoded reduced under ``limits``; raises
    :class:`~mediasearch.errors.ImageError` for what the vision path would refuse."""
    # imported here: the image module imports this one (its decode path makes thumbnails too)
    from mediasearch.preprocess.image import decode_reduced

    if size <= 0:
        raise ValueError(f"thumbnail size must be positive, not {size}")
    img, box, extent = decode_reduced(data, limits, long_side=size)
    return encode_thumbnail(img, size, box=box, extent=extent)


def encode_thumbnail(
    img: Image.Image, size: int, *, box: Box | None = None, extent: tuple[int, int] | None = None
) -> bytes:
    """The thumbnail of ``box`` of ``img`` (all of it by default): an image whose size before any
    reduction was ``extent`` (``img.size`` by default); its longest side ``size``, never more than
    ``extent``'s, so the thumbnail's size depends on the original only."""
    if size <= 0:
        raise ValueError(f"thumbnail size must be positive, not {size}")
    if img.mode != "RGB":
        from mediasearch.preprocess.image import _to_rgb  # the vision path's flattening

        img = _to_rgb(img)
    width, height = extent or img.size
    scale = min(1.0, size / max(width, height))
    out = (max(1, round(width * scale)), max(1, round(height * scale)))
    whole = (0, 0, img.width, img.height)
    if out != img.size or (box is not None and tuple(box) != whole):
        img = img.resize(out, _FILTER, box=box or whole, reducing_gap=REDUCING_GAP)
    buf = io.BytesIO()
    img.save(buf, "WEBP", quality=QUALITY, method=METHOD)  # no EXIF, ICC or XMP: pixels only
    return buf.getvalue()
