"""Memory and time of the costliest images the default limits accept, and whether memory comes back.

    python -m bench.decode_memory [--images 20] [--threads 4]

The images (built once under build/bench/decode_memory/) are the worst cases per decoder at the
defaults (64 Mpx, 50 MiB): a 16-bit RGBA PNG with Paeth filters, a palette PNG with transparency,
a 16-bit gray PNG, a 400:1 RGBA PNG, a progressive 4:4:4 JPEG, a JPEG whose scan is 50 MB of zeros,
GIF, BMP RLE, TIFF deflate, and a WebP at the pixels its memory budget allows (32 Mpx).

1. Each alone, in a fresh process: decode time, and the peak RSS above the process's baseline,
   against :func:`max_decode_bytes`.
2. A burst: ``--images`` of them decoded at once on ``--threads`` threads (the encoder's decode pool,
   ``MEDIASEARCH_IMAGE_DECODE_THREADS``), in a fresh process, side by side without and with the
   memory release after large decodes (``malloc_trim``): baseline RSS, peak RSS during the burst,
   and RSS once every image is freed.

The last line is the summary other tools parse.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.models import BUILD
from mediasearch.dev import crafted_images

FOLDER = BUILD / "decode_memory"
SIDE = 8000  # 64 Mpx: the default max_image_pixels


def _png(width: int, height: int, rows: bytes, depth: int, colour: int) -> bytes:
    """``height`` copies of the row ``rows`` (filter byte included) as a PNG."""
    idat = zlib.compressobj(1)
    body = b"".join(idat.compress(rows) for _ in range(height)) + idat.flush()
    return crafted_images.png(width, height, body, depth=depth, colour=colour)


def _images() -> dict[str, Path]:
    """The worst cases, built once (a minute) and cached."""
    from PIL import Image

    FOLDER.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def photo(width: int, height: int) -> Image.Image:
        small = rng.integers(0, 256, (max(1, height // 64), max(1, width // 64), 3), dtype=np.uint8)
        return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)

    def encoded(img: Image.Image, fmt: str, **kw: object) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    def jpeg_zeros() -> bytes:
        head = encoded(Image.new("RGB", (SIDE, SIDE)), "JPEG")
        sos = head.index(b"\xff\xda")
        return head[: sos + 2 + int.from_bytes(head[sos + 2 : sos + 4], "big")] + bytes(50_000_000)

    def palette() -> bytes:
        img = photo(SIDE, SIDE).convert("P")
        img.info["transparency"] = 0
        return encoded(img, "PNG", compress_level=1)

    makers = {
        "png_rgba16_paeth.png": lambda: _png(SIDE, SIDE, b"\x04" + bytes(SIDE * 8), 16, 6),
        "png_gray16.png": lambda: _png(SIDE, SIDE, b"\x00" + bytes(SIDE * 2), 16, 0),
        "png_palette_transparent.png": palette,
        "png_rgba_400_to_1.png": lambda: encoded(Image.new("RGBA", (400, 160_000), (9, 99, 199, 99)), "PNG"),
        "jpeg_progressive_444.jpg": lambda: encoded(
            photo(SIDE, SIDE), "JPEG", progressive=True, subsampling=0
        ),
        "jpeg_scan_of_50MB_zeros.jpg": jpeg_zeros,
        "gif.gif": lambda: encoded(photo(SIDE, SIDE).convert("P"), "GIF"),
        "bmp_rle8.bmp": lambda: _bmp_rle8(SIDE, SIDE),
        "tiff_deflate.tif": lambda: encoded(
            Image.new("RGB", (SIDE, SIDE)), "TIFF", compression="tiff_adobe_deflate"
        ),
        "webp_32mpx.webp": lambda: encoded(photo(5600, 5600), "WEBP", quality=80),
    }
    paths = {}
    for name, make in makers.items():
        path = FOLDER / name
        if not path.is_file():
            path.write_bytes(make())
        paths[name] = path
    return paths


def _bmp_rle8(width: int, height: int) -> bytes:
    import struct

    row = b"\xff\x00" * (width // 255) + bytes([width % 255, 0]) + b"\x00\x00"
    pixels = row * height + b"\x00\x01"
    palette = bytes(4 * 256)
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


# -- measured in fresh processes ------------------------------------------------------------------
def _status(key: str) -> int:
    """VmRSS / VmHWM of this process, bytes (VmHWM: its peak since exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _one(path: str) -> None:
    from mediasearch.preprocess.image import ImageSpec, prepare_image

    spec = ImageSpec(224, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    prepare_image(Path(path).with_name("warm.jpg").read_bytes(), spec)
    data = Path(path).read_bytes()
    base = _status("VmRSS")
    started = time.perf_counter()
    error = None
    try:
        prepare_image(data, spec)
    except Exception as exc:  # reported, not raised: a refusal is a result here
        error = str(exc)
    ms = (time.perf_counter() - started) * 1000
    print(json.dumps({"ms": ms, "peak": _status("VmHWM") - base, "error": error}))


def _burst(paths: list[str], threads: int, release: bool) -> None:
    import mediasearch.preprocess.image as image

    if not release:
        image._release_freed_memory = lambda: None  # the state before the fix
    spec = image.ImageSpec(224, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    image.prepare_image(Path(paths[0]).with_name("warm.jpg").read_bytes(), spec)
    gc.collect()
    base = _status("VmRSS")
    _reset_peak()
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        done = list(pool.map(lambda p: image.prepare_image(Path(p).read_bytes(), spec).shape, paths))
    seconds = time.perf_counter() - started
    peak = _status("VmHWM")
    del done
    gc.collect()
    time.sleep(0.5)
    after = _status("VmRSS")
    print(json.dumps({"base": base, "peak": peak, "after": after, "seconds": seconds}))


def _child(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.decode_memory", *args],
        capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})},
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed:\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="images in the burst")
    parser.add_argument("--threads", type=int, default=None, help="decode threads (default: the setting)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--burst", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--release", choices=("on", "off"), default="on", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return _one(args.one)
    if args.burst is not None:
        return _burst(args.burst, args.threads, args.release == "on")

    from PIL import Image

    from mediasearch.preprocess.image import DecodeLimits, max_decode_bytes
    from mediasearch.settings import Settings

    threads = args.threads or Settings.defaults().image_decode_threads
    bound = max_decode_bytes(DecodeLimits.defaults())
    paths = _images()
    Image.new("RGB", (300, 200)).save(FOLDER / "warm.jpg")
    mb = 1 << 20
    print(f"max_decode_bytes at the defaults: {bound / mb:.0f} MiB\n")
    print(f"{'image':30s} {'MB':>6s} {'ms':>7s} {'peak MiB':>9s}  refused")
    worst_ms, worst_peak, accepted = 0.0, 0, []
    for name, path in paths.items():
        r = _child("--one", str(path))
        accepted += [] if r["error"] else [str(path)]
        ms, peak = float(r["ms"]), int(r["peak"])
        worst_ms, worst_peak = max(worst_ms, ms), max(worst_peak, peak)
        refused = f"  {r['error']}" if r["error"] else ""
        print(f"{name:30s} {path.stat().st_size / 1e6:6.1f} {ms:7.0f} {peak / mb:9.0f}{refused}")
    print(f"\nworst alone: {worst_ms:.0f} ms, {worst_peak / mb:.0f} MiB (bound {bound / mb:.0f} MiB)\n")

    burst = ["--burst", *(accepted[i % len(accepted)] for i in range(args.images)), "--threads", str(threads)]
    variants = {  # name: (release after large decodes, environment)
        "no release (before)": ("off", {}),
        "malloc_trim (the fix)": ("on", {}),
        "malloc_trim + MALLOC_MMAP_THRESHOLD_=4 MiB": ("on", {"MALLOC_MMAP_THRESHOLD_": str(4 << 20)}),
    }
    runs = {}
    print(f"burst of {args.images} images on {threads} threads (MiB): baseline, peak, after all are freed")
    for name, (release, env) in variants.items():
        r = _child(*burst, "--release", release, env=env)
        runs[name] = m = {k: r[k] / mb for k in ("base", "peak", "after")}
        print(f"  {name:45s} {m['base']:6.0f} {m['peak']:6.0f} {m['after']:6.0f}  ({r['seconds']:.1f} s)")
    before, fix, mmap = runs.values()
    print(
        f"decode_memory: images={args.images} threads={threads} peak_rss_mb={fix['peak']:.0f} "
        f"after_rss_mb={fix['after']:.0f} baseline_rss_mb={fix['base']:.0f} "
        f"after_rss_before_mb={before['after']:.0f} after_rss_mmap_threshold_mb={mmap['after']:.0f} "
        f"worst_ms={worst_ms:.0f} worst_peak_mb={worst_peak / mb:.0f} max_decode_mb={bound / mb:.0f}"
    )
    return None


if __name__ == "__main__":
    main()
