"""Images built byte by byte: the hostile shapes the decoder must refuse (extreme sizes, floods,
short data), for the tests, the fuzz seeds and bench/decode_memory.py. One implementation."""

from __future__ import annotations

import io
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(
    width: int, height: int, idat: bytes, *, depth: int = 8, colour: int = 2, extra: bytes = b""
) -> bytes:
    """A PNG declaring ``width x height`` with ``idat`` as its (zlib) data; ``extra`` chunks go
    between the header and the data."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    head = PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + extra
    return head + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def zeros_zlib(n: int) -> bytes:
    """A zlib stream of ``n`` zero bytes in milliseconds: one fully flushed MiB block, repeated."""
    block = bytes(1 << 20)
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    unit = raw.compress(block) + raw.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(n, len(block))
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    adler = 1
    for _ in range(whole):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(bytes(rest), adler)
    return b"\x78\xda" + unit * whole + last.compress(bytes(rest)) + last.flush() + adler.to_bytes(4, "big")


def jpeg_header(width: int, height: int, **save: object) -> bytes:
    """A JPEG's bytes up to the end of its first SOS header (no scan data)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="JPEG", **save)
    data = buf.getvalue()
    sos = data.index(b"\xff\xda")
    return data[: sos + 2 + struct.unpack(">H", data[sos + 2 : sos + 4])[0]]
