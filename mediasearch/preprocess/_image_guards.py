"""Checks that bound an untrusted image's decode before a pixel is allocated (security issue 14).

:mod:`mediasearch.preprocess.image` opens every image through :func:`open_image` and calls
:func:`check_memory` before it loads the pixels. Decoding runs in worker threads that cannot be
interrupted, so these refusals are what keeps a hostile image from taking seconds or gigabytes; a
refusal itself takes under 30 ms and 1 MB (the slowest: walking a JPEG's 40 MB of padding). A decode is
bounded by:

- the encoded size (``max_image_bytes``), the formats (:data:`FORMATS`), and the header's shape:
  Pillow walks JPEG markers, PNG chunks and PNM headers in Python, so floods of them are refused
  first (before: 40 MB of 0xFF after a JPEG's SOI took 33 s, 4M empty PNG chunks 16 s, a 48 MB
  ASCII PPM 10 s). A progressive JPEG may have 32 scans (libjpeg revisits every block per scan).
- the declared size: pixels (``max_image_pixels``), no zero dimension, and aspect ratio
  (``max_image_aspect``). Before, a 1 x 60,000,000 PNG (117 kB) took 7.3 s and 1.3 GB; a 74-byte
  truncated one 1.3 s and 1.2 GB. The aspect limit (500:1) refuses such strips and keeps rows few
  (Pillow's per-row cost); banners, 1-pixel rules and the reference's own 10000 x 20 test strip still
  decode, and since the image module resizes only the crop's window of a long image, they cost no
  more than a square image.
- what the data can hold: a PNG whose compressed data is too short for the image it declares
  (deflate expands at most 1032 times) is refused unread. A JPEG's scan cannot be judged so (zeros
  are valid scan data); its cost is bounded by the pixels and the image module's DCT scaling.
- memory: the decoder's buffers (progressive JPEG coefficients, WebP canvases, TIFF strips, BMP RLE)
  and Pillow's image may take :data:`BYTES_PER_PIXEL` x ``max_image_pixels`` (a 64 Mpx WebP needs
  16 bytes a pixel: WebPs get half the pixels).
"""

from __future__ import annotations

import io
import re
import struct
from typing import TYPE_CHECKING, Any

from PIL import Image

from mediasearch.errors import ImageError

if TYPE_CHECKING:
    from mediasearch.preprocess.image import DecodeLimits

FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")  # the indexer's list (JPEG includes MPO)
BYTES_PER_PIXEL = 8  # a decode's memory budget per pixel of max_image_pixels
JPEG_MAX_SEGMENTS, JPEG_MAX_SKIPPED, JPEG_MAX_SCANS = 4096, 64 << 10, 32
PNG_MAX_CHUNKS, PNM_HEADER_BYTES, PNM_PLAIN_MAX_BYTES = 16_384, 4096, 1 << 20
WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I")  # grayscale modes wider than 8 bits


def open_image(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Open ``data`` (the header only) and refuse it unless it is within ``limits`` (module doc)."""
    if not data:
        raise ImageError("empty image: 0 bytes")
    if len(data) > limits.max_bytes:
        raise ImageError(f"image too large: {len(data)} bytes (limit max_image_bytes = {limits.max_bytes})")
    png_data = _check_structure(data)
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's own, larger
        raise ImageError(
            f"{exc} (limit max_image_pixels = {limits.max_pixels}); refused as a possible decompression bomb"
        ) from exc
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ImageError(
            f"image has {width}x{height} = {width * height} pixels (limit max_image_pixels = "
            f"{limits.max_pixels}); refused as a possible decompression bomb"
        )
    check_aspect(width, height, limits.max_aspect)
    if png_data is not None and data[12:16] == b"IHDR":
        _check_png_data(data, png_data)
    return img


def check_aspect(width: int, height: int, max_aspect: float) -> None:
    if min(width, height) < 1:
        raise ImageError(f"image declares {width}x{height} pixels")
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect:
        raise ImageError(
            f"image is {width}x{height}: aspect ratio {aspect:.4g}:1 (limit max_image_aspect = "
            f"{max_aspect:g}); the model's centre crop would see {100 / aspect:.2g}% of it"
        )


def _check_structure(data: bytes) -> int | None:
    """Refuse header floods Pillow would walk in Python; for a PNG, its compressed data's length."""
    if data.startswith(b"\xff\xd8\xff"):
        _check_jpeg(data)
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_data_bytes(data)
    elif data[:1] == b"P" and data[1:2] in b"1234567fF" and len(data) > 2:
        _check_pnm(data)
    return None


_NOT_FF, _FF = re.compile(rb"[^\xff]*"), re.compile(rb"\xff*")
_NO_LENGTH = frozenset({0x00, 0x01, *range(0xD0, 0xDA)})  # stuffed byte, TEM, RSTn, SOI, EOI


def _check_jpeg(data: bytes) -> None:
    pos, skipped, segments = 2, 0, 0
    while pos < len(data):
        end = _NOT_FF.match(data, pos).end()  # type: ignore[union-attr]
        fill = _FF.match(data, end).end()  # type: ignore[union-attr]
        skipped += end - pos + max(fill - end - 1, 0)  # junk, and 0xFF fill before a marker
        if skipped > JPEG_MAX_SKIPPED:
            raise ImageError(f"JPEG header padded with over {JPEG_MAX_SKIPPED} bytes between markers")
        if fill >= len(data):
            return
        marker, pos = data[fill], fill + 1
        if marker == 0xDA:  # start of scan: the header ends; the scans follow
            # One pass (2.7 ms per 1.5 MB were two): entropy-coded data stuffs every 0xFF, so each
            # FFDA is a scan; those of images appended after the EOI (an MPO's previews) count too.
            scans = data.count(b"\xff\xda", fill - 1)
            if scans > JPEG_MAX_SCANS:
                raise ImageError(f"JPEG has {scans} scans (limit {JPEG_MAX_SCANS})")
            return
        if marker not in _NO_LENGTH:
            segments += 1
            if segments > JPEG_MAX_SEGMENTS:
                raise ImageError(f"JPEG header has over {JPEG_MAX_SEGMENTS} segments")
            pos += int.from_bytes(data[pos : pos + 2], "big")


def _png_data_bytes(data: bytes) -> int:
    pos, chunks, idat = 8, 0, 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks += 1
        if chunks > PNG_MAX_CHUNKS:
            raise ImageError(f"PNG has over {PNG_MAX_CHUNKS} chunks")
        if kind == b"IDAT":
            idat += min(length, len(data) - pos - 8)
        elif kind == b"IEND":
            break
        pos += 12 + length
    return idat


def _check_png_data(data: bytes, idat: int) -> None:
    """Deflate expands at most 1032:1; every row is a filter byte and its samples (Adam7: more)."""
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    needed = height + width * height * depth * {2: 3, 4: 2, 6: 4}.get(colour, 1) // 8
    if idat * 1032 + 1024 < needed:
        raise ImageError(
            f"truncated PNG: {idat} bytes of compressed data cannot hold the {width}x{height} image it "
            f"declares ({needed} bytes; deflate expands at most 1032 times)"
        )


_PNM_TOKEN = re.compile(rb"(?>\s|#[^\r\n]*+)*+[^\s#]++")


def _check_pnm(data: bytes) -> None:
    if data[1:2] in b"123" and len(data) > PNM_PLAIN_MAX_BYTES:  # Pillow parses ASCII PNM in Python
        raise ImageError(f"ASCII PNM over {PNM_PLAIN_MAX_BYTES} bytes (decoded in Python: slow)")
    pos = 2
    for _ in range(2 if data[1:2] in b"14" else 3):
        m = _PNM_TOKEN.match(data, pos, PNM_HEADER_BYTES)
        if m is None:
            raise ImageError(f"PNM header longer than {PNM_HEADER_BYTES} bytes")
        pos = m.end()


def check_memory(img: Image.Image, limits: DecodeLimits, full: tuple[int, int]) -> int:
    """Refuse a decode whose image and decoder buffers exceed the budget; ``full`` is the size before
    DCT scaling. Returns an estimate of the decode's peak (the image module trims memory after large ones)."""
    pixels, bands = img.width * img.height, len(img.getbands())
    stored = 4 if bands > 1 or img.mode in ("I", "F") else 2 if img.mode in WIDE_GRAY else 1
    extra, info = 0, img.info
    if img.format in ("JPEG", "MPO") and info.get("progressive"):  # the coefficients, 2 bytes each
        layers: list[tuple[int, int, int, int]] = getattr(img, "layer", [])
        hv = max((c[1] * c[2] for c in layers), default=0) or 1  # libjpeg refuses 0 factors itself
        extra = int(2 * full[0] * full[1] * sum(c[1] * c[2] / hv for c in layers))
    elif img.format == "WEBP":
        extra = 12 * pixels  # libwebp's canvases and the copy Pillow reads from
    elif img.format == "TIFF" and img.tag_v2.get(259, 1) != 1:  # type: ignore[attr-defined]
        extra = 2 * _tiff_strip_bytes(img.tag_v2, img.width, img.height)  # type: ignore[attr-defined]
    elif img.format == "BMP" and info.get("compression") in (1, 2):
        extra = 2 * pixels  # Pillow's RLE decoder collects the pixels in Python bytes
    needed, budget = stored * pixels + extra, BYTES_PER_PIXEL * limits.max_pixels
    if needed > budget:
        raise ImageError(
            f"decoding this {img.width}x{img.height} {img.format} image takes about {needed >> 20} MiB "
            f"(limit {budget >> 20} MiB: {BYTES_PER_PIXEL} bytes x max_image_pixels)"
        )
    return needed + 4 * pixels


def _tiff_strip_bytes(tags: Any, width: int, height: int) -> int:
    """The buffer libtiff decodes a compressed strip (or tile) into."""
    bits = tags.get(258, (8,))
    bits = max(bits[0] if isinstance(bits, tuple) else bits, 8)
    area = min(tags.get(322, width), width) * min(tags.get(323, tags.get(278, height)), height)
    return int(area * int(tags.get(277, 1)) * bits // 8)
