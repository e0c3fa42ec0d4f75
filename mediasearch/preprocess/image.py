"""Image preprocessing: bytes -> RGB -> shortest-side bicubic resize -> centre crop -> uint8 HWC.

The vision graph takes ``uint8 [batch, size, size, 3]`` (already resized and cropped) and folds the
cast and the mean/std normalisation into the graph: a quarter of the bytes of float32 NCHW on the
wire to Triton, and one less place where normalisation could be done differently.
:func:`normalize` is the same arithmetic in numpy, for parity tests and reference code.

The resize and crop follow CLIP's reference processor (transformers' ``CLIPImageProcessor``):
the short side goes to ``resize`` pixels with PIL's bicubic filter, the long side to
``int(resize * long / short)``, then a centre crop with the top-left offset ``(dim - crop) // 2``.

Bounded work (security issue 14). Images are untrusted: before a pixel is allocated,
:mod:`mediasearch.preprocess._image_guards` bounds a decode by the encoded size (``max_image_bytes``),
the formats (:data:`FORMATS`), the header's shape (floods of JPEG markers, PNG chunks, PNM headers),
the declared size (``max_image_pixels``, ``max_image_aspect``), what the data can hold (truncated
PNGs) and the decoder's memory (:data:`BYTES_PER_PIXEL` x ``max_image_pixels``); that module says why,
with the measurements. After the decode, conversions run in strips holding one full-size copy at a
time, and an image longer than 20:1 is resized only in the crop's window, so the resized image before
the crop is at most ``resize x 20 * resize``.

:func:`max_decode_bytes` is the most one decode takes: the encoded bytes + the metadata Pillow keeps
(at most the encoded bytes, or 64 MiB of PNG text) + 8 bytes x ``max_image_pixels`` + 480 x
``resize``^2 (the resize) + 5 MiB (a strip). At the defaults (50 MiB, 64 Mpx, 224) that is 630 MiB.
Measured (``python -m bench.decode_memory``, 2 cores): the costliest accepted images peak at
495 MiB over the baseline (a 400:1 RGBA PNG, a 16-bit RGBA PNG, a transparent palette PNG, all
64 Mpx; a 32 Mpx WebP 482 MiB). After a large decode, freed memory goes back to the OS
(``malloc_trim``): 20 such images on 4 threads (peak 1.5-1.7 GiB) left RSS at 190-230 MiB over a
60 MiB baseline instead of 275-470 MiB; the rest is glibc's per-thread arenas, which
``MALLOC_MMAP_THRESHOLD_=4194304`` in the environment returns too (65 MiB; the burst 15-25% slower).

Large images are reduced while decoding (:func:`prepare_image`): JPEGs by DCT scaling
(``Image.draft``) to the smallest scale (1/2, 1/4, 1/8) whose short side is still at least the resize
target, then any format by ``Image.reduce`` (box averaging, alpha premultiplied) by an integer
factor, never below twice the resize target; the bicubic resize then maps the same source box. An
image whose short side is under 4 x ``resize`` takes the exact path, identical to the reference up to
20:1 (beyond, the windowed resize is within 2/255 of it, on under 1% of the values); ``exact=True``
(``MEDIASEARCH_IMAGE_DECODE_EXACT``) takes it for every image. Measured with
``python -m bench.decode_fidelity`` on 230 images of 896 px or more (scikit-image's photos upscaled
to 12 Mpx as JPEG and PNG, and the realistic corpus: 12 Mpx phone JPEGs, web JPEGs, screenshots,
WebP): the vision tower's input differs from the exact path's by 0.48/255 on average, at most
41/255 on a few edge pixels of 1-4 Mpx JPEGs (decoded at 1/4 scale); the embeddings' cosine is at
least 0.9997 with the micro CLIP and 0.99999 with the ViT-B/32-shaped one; a 12 Mpx phone JPEG
prepares 4.8x faster (p50 44 ms against 208 ms, one core).

Thumbnails (:mod:`mediasearch.preprocess.thumbnail`) are made from the decode the vision tower's
input was made from (:func:`prepare_image_with_size`'s ``thumbnail``): on the reduced path from the
reduced image over the original's extent, so they cost a resize and a WebP encode, not a decode.

Time: decoding runs in worker threads that cannot be interrupted, so these bounds are what ends the
work after a deadline. A refusal takes under 30 ms and 1 MB (the guards module has the details).
The slowest accepted input is a 64 Mpx 16-bit RGBA PNG with Paeth filters: 1.6-2.5 s on these
2 cores; a 64 Mpx JPEG of 50 MB takes 0.35 s, a 12 Mpx photo 30 ms (JPEG) to 260 ms (PNG).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import struct
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import PIL
from numpy.typing import NDArray
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from mediasearch.errors import ImageError
from mediasearch.preprocess._image_guards import (  # FORMATS, BYTES_PER_PIXEL: public here too
    BYTES_PER_PIXEL,
    FORMATS,
    WIDE_GRAY,
    check_aspect,
    check_memory,
    open_image,
)
from mediasearch.preprocess.thumbnail import encode_thumbnail
from mediasearch.settings import FromSettings, Settings

log = logging.getLogger(__name__)

DRAFT_MIN = 1  # JPEG DCT scaling stops at the smallest scale whose short side is >= this x resize
WINDOW_ASPECT = 20  # longer resized images are resized only in the crop's window
TRIM_BYTES = 32 << 20  # decodes this large hand freed memory back to the OS (malloc_trim)
STRIP_PIXELS = 1 << 18  # conversions run a strip of this many pixels at a time
_BICUBIC = Image.Resampling.BICUBIC
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ImageSpec:
    """How the model expects its images (read from the model manifest)."""

    resize: int  # the short side after resizing
    crop: int  # square centre crop; the vision input is crop x crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class DecodeLimits(FromSettings):
    """What an image may be (``MEDIASEARCH_MAX_IMAGE_BYTES``, ``..._PIXELS``, ``..._ASPECT``)."""

    max_bytes: int
    max_pixels: int
    max_aspect: float

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeLimits:
        return cls(settings.max_image_bytes, settings.max_image_pixels, settings.max_image_aspect)


def max_decode_bytes(limits: DecodeLimits, resize: int = 224) -> int:
    """The most memory one image's decode and preprocessing take under ``limits`` (module doc)."""
    metadata = max(limits.max_bytes, PngImagePlugin.MAX_TEXT_MEMORY)
    buffers = 24 * resize * resize * WINDOW_ASPECT + 20 * STRIP_PIXELS  # the resize's and a strip's
    return limits.max_bytes + metadata + BYTES_PER_PIXEL * limits.max_pixels + buffers


def decode_image(
    data: bytes,
    *,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
    max_aspect: float | None = None,
) -> Image.Image:
    """Decode encoded image bytes into an upright, full-size RGB image.

    EXIF orientation is applied; grayscale, CMYK, palette and alpha images become RGB (transparency is
    composited onto white, as CLIP's reference processor does). Refuses, with :class:`ImageError`:
    empty or oversized input, non-images and formats not in :data:`FORMATS`, truncated or corrupt
    files, decompression bombs (more than ``max_pixels`` pixels, checked from the header before any
    pixel is decoded), extreme aspect ratios and header floods. Unset limits are the settings'
    defaults. :func:`prepare_image` is cheaper for large images: it decodes them reduced.
    """
    limits = _limits(max_bytes, max_pixels, max_aspect)
    with _bounded() as work:
        return _decode(data, limits, work)


def resize_center_crop(
    img: Image.Image, resize: int, crop: int, *, max_aspect: float | None = None
) -> NDArray[np.uint8]:
    """Shortest side to ``resize`` (bicubic), centre crop ``crop`` x ``crop``; uint8 HWC RGB.

    An image at least 4 x ``resize`` on its short side is first reduced by an integer factor (never
    below 2 x ``resize``); images with an aspect ratio over ``max_aspect`` are refused.
    """
    check_aspect(*img.size, _limits(None, None, max_aspect).max_aspect)
    reduced, box = _reduce(_reducible(img, resize), (0, 0, *img.size), resize)
    return _resize_crop(_to_rgb(reduced), img.size, None if reduced is img else box, resize, crop)


def prepare_image(
    data: bytes,
    spec: ImageSpec,
    *,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
    max_aspect: float | None = None,
    exact: bool = False,
) -> NDArray[np.uint8]:
    """Encoded bytes -> the vision tower's uint8 HWC input (decode, orient, RGB, resize, crop).

    Large images are decoded reduced (the module's doc says how, and how close it is); ``exact``
    decodes them at full size as the reference processor does (parity tests, measurements)."""
    limits = _limits(max_bytes, max_pixels, max_aspect)
    with _bounded() as work:  # trims once the images are gone: this frame holds none
        return _prepare(data, spec, limits, work, exact)[0]


def prepare_image_with_size(
    data: bytes,
    spec: ImageSpec,
    *,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
    max_aspect: float | None = None,
    exact: bool = False,
    thumbnail: int = 0,
) -> tuple[NDArray[np.uint8], tuple[int, int], bytes | None]:
    """:func:`prepare_image`, the image's upright (width, height) as stored, and (``thumbnail`` > 0)
    its thumbnail of that longest side, made from the same decode (for the indexer; None when
    ``thumbnail`` is 0 or the thumbnail could not be made)."""
    limits = _limits(max_bytes, max_pixels, max_aspect)
    with _bounded() as work:
        return _prepare(data, spec, limits, work, exact, thumbnail)


def decode_reduced(
    data: bytes, limits: DecodeLimits, *, long_side: int
) -> tuple[Image.Image, Box, tuple[int, int]]:
    """Encoded bytes -> upright RGB, decoded reduced as :func:`prepare_image` does but keeping the
    long side at least ``long_side`` (thumbnails); with the original's extent in its coordinates
    (the box to resample) and the upright full size. Refuses what :func:`decode_image` refuses."""
    with _bounded() as work, _translated_errors():
        img = open_image(data, limits)
        short, long = sorted(img.size)
        return _reduced(img, limits, work, max(1, math.ceil(long_side * short / long)))


def normalize(pixels: NDArray[np.uint8], mean: Sequence[float], std: Sequence[float]) -> NDArray[np.float32]:
    """uint8 ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]``: ``(x / 255 - mean) / std``.

    The same arithmetic as the vision graph's first nodes; used as the reference in tests.
    """
    x = pixels.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def _decode(data: bytes, limits: DecodeLimits, work: _Work) -> Image.Image:
    with _translated_errors():
        img = open_image(data, limits)
        work.bytes = check_memory(img, limits, img.size)
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # no copy when it stays as it is
        return _to_rgb(img)


def _prepare(
    data: bytes, spec: ImageSpec, limits: DecodeLimits, work: _Work, exact: bool = False, thumbnail: int = 0
) -> tuple[NDArray[np.uint8], tuple[int, int], bytes | None]:
    with _translated_errors():
        img = open_image(data, limits)
        box: Box | None = None
        if exact or min(img.size) < 4 * spec.resize:  # the exact path: as the reference does it
            work.bytes = check_memory(img, limits, img.size)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            size = img.size
            img = _to_rgb(img)
        else:
            img, box, size = _reduced(img, limits, work, spec.resize)
        pixels = _resize_crop(img, size, box, spec.resize, spec.crop)
    return pixels, size, _thumbnail(img, box, size, thumbnail) if thumbnail else None


def _reduced(
    img: Image.Image, limits: DecodeLimits, work: _Work, resize: int
) -> tuple[Image.Image, Box, tuple[int, int]]:
    """Decode an opened image reduced for ``resize`` (JPEG DCT scaling, then box reduction) into
    upright RGB. Returns it, the original's extent in its coordinates and the upright full size."""
    size = img.size
    box = _draft(img, resize)
    work.bytes = check_memory(img, limits, size)
    img.load()
    method = _EXIF_TRANSPOSE.get(img.getexif().get(0x0112, 1))  # what exif_transpose would do
    img = _reducible(img, resize)
    img, box = _reduce(img, box, resize)
    img = _to_rgb(img)
    if method is not None:
        box = _transpose_box(box, img.size, method)
        img = img.transpose(method)
        size = size if method in _KEEPS_AXES else (size[1], size[0])
    return img, box, size


def _thumbnail(img: Image.Image, box: Box | None, size: tuple[int, int], longest: int) -> bytes | None:
    """The thumbnail of the image decoded for the vision tower; None (logged) when it cannot be
    made: a thumbnail is a convenience, never a reason to fail the image."""
    try:
        return encode_thumbnail(img, longest, box=box, extent=size)
    except Exception as exc:  # an encoder's failure on pixels that the vision path accepted
        log.debug("no thumbnail for a %dx%d image: %r", size[0], size[1], exc)
        return None


def _limits(max_bytes: int | None, max_pixels: int | None, max_aspect: float | None) -> DecodeLimits:
    d = DecodeLimits.from_settings(Settings.defaults())
    return DecodeLimits(
        d.max_bytes if max_bytes is None else max_bytes,
        d.max_pixels if max_pixels is None else max_pixels,
        d.max_aspect if max_aspect is None else max_aspect,
    )


# -- reduced decoding -----------------------------------------------------------------------------
def _draft(img: Image.Image, resize: int) -> Box:
    """JPEG: DCT-scale the decode (1/2, 1/4, 1/8) keeping the short side >= ``resize``. Returns
    the original image's extent in the decoded image's coordinates."""
    width, height = img.size
    short = min(width, height)
    if img.format in ("JPEG", "MPO"):
        wanted = (
            math.ceil(width * DRAFT_MIN * resize / short),
            math.ceil(height * DRAFT_MIN * resize / short),
        )
        drafted = img.draft(None, wanted)
        if drafted is not None:
            return drafted[1]
    return (0, 0, width, height)


def _reducible(img: Image.Image, resize: int) -> Image.Image:
    """An image :func:`_reduce` will reduce, as the same pixels in a mode that box averaging treats
    right (L, LA, RGB, RGBA). Callers drop the original: then one full-size copy exists at a time."""
    if min(img.size) < 4 * resize:
        return img
    if img.mode in WIDE_GRAY:
        img = _scale_to_l(img)
    if img.mode in ("LA", "RGBA", "PA") or img.info.get("transparency") is not None:
        return img if img.mode in ("LA", "RGBA") else img.convert("RGBA")
    return img if img.mode in ("L", "RGB") else img.convert("RGB")


def _reduce(img: Image.Image, box: Box, resize: int) -> tuple[Image.Image, Box]:
    """Box-average by the largest integer factor that keeps the short side >= 2 x ``resize``."""
    factor = min(img.size) // (2 * resize)
    if factor < 2:
        return img, box
    if img.mode in ("RGBA", "LA"):  # average premultiplied colour, as Image.reduce does
        img = img.convert({"RGBA": "RGBa", "LA": "La"}[img.mode]).reduce(factor).convert(img.mode)
    else:
        img = img.reduce(factor)
    return img, (box[0] / factor, box[1] / factor, box[2] / factor, box[3] / factor)


_T = Image.Transpose
_KEEPS_AXES = (_T.FLIP_LEFT_RIGHT, _T.FLIP_TOP_BOTTOM, _T.ROTATE_180)
_EXIF_TRANSPOSE = {
    2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE,
    6: _T.ROTATE_270, 7: _T.TRANSVERSE, 8: _T.ROTATE_90,
}  # fmt: skip


def _transpose_box(box: Box, size: tuple[int, int], method: Image.Transpose) -> Box:
    (x0, y0, x1, y1), (w, h) = box, size
    return {
        _T.FLIP_LEFT_RIGHT: (w - x1, y0, w - x0, y1),
        _T.FLIP_TOP_BOTTOM: (x0, h - y1, x1, h - y0),
        _T.ROTATE_180: (w - x1, h - y1, w - x0, h - y0),
        _T.TRANSPOSE: (y0, x0, y1, x1),
        _T.ROTATE_90: (y0, w - x1, y1, w - x0),
        _T.ROTATE_270: (h - y1, x0, h - y0, x1),
        _T.TRANSVERSE: (h - y1, w - x1, h - y0, w - x0),
    }[method]


# -- conversions (strip by strip: one full-size copy at a time) and the resize --------------------
def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in WIDE_GRAY:
        img = _scale_to_l(img)
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        return _on_white(img)
    return img.convert("RGB")


def _strips(img: Image.Image) -> Iterator[tuple[int, int, int, int]]:
    rows = max(1, STRIP_PIXELS // img.width)
    for top in range(0, img.height, rows):
        yield (0, top, img.width, min(img.height, top + rows))


def _scale_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit grayscale: scale to 8 bits instead of clipping everything above 255 to white."""
    peak = float(max(np.asarray(img.crop(s)).max() for s in _strips(img))) or 1.0
    out = np.empty((img.height, img.width), dtype=np.uint8)
    for s in _strips(img):
        out[s[1] : s[3]] = np.clip(np.asarray(img.crop(s), dtype=np.float64) * (255.0 / peak), 0, 255)
    return Image.fromarray(out)


def _on_white(img: Image.Image) -> Image.Image:
    """Transparent pixels carry arbitrary colour; show them on white, as the reference does."""
    out = Image.new("RGB", img.size)
    for s in _strips(img):
        rgba = img.crop(s).convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out.paste(Image.alpha_composite(white, rgba).convert("RGB"), s[:2])
    return out


def _resize_crop(
    img: Image.Image, size: tuple[int, int], box: Box | None, resize: int, crop: int
) -> NDArray[np.uint8]:
    """Resize ``box`` of ``img`` (``size`` before any reduction) as the reference resizes the whole
    image, then centre-crop (zero-padding when ``crop > resize``, as the reference)."""
    width, height = size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if new_long > WINDOW_ASPECT * resize:  # resize only the crop's window
        left, top = max(0, (new_w - crop) // 2), max(0, (new_h - crop) // 2)
        window = (left, top, min(new_w, left + crop), min(new_h, top + crop))
        img = _resize_window(img, box or (0, 0, *img.size), (new_w, new_h), window)
        new_w, new_h = img.size
    elif box is not None:
        img = img.resize((new_w, new_h), resample=_BICUBIC, box=box)
    elif (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), resample=_BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    if new_h < crop or new_w < crop:  # only when crop > resize: pad with zeros like the reference
        padded = np.zeros((max(new_h, crop), max(new_w, crop), 3), dtype=np.uint8)
        top, left = (padded.shape[0] - new_h) // 2, (padded.shape[1] - new_w) // 2
        padded[top : top + new_h, left : left + new_w] = arr
        arr, new_h, new_w = padded, padded.shape[0], padded.shape[1]
    top, left = (new_h - crop) // 2, (new_w - crop) // 2
    return np.ascontiguousarray(arr[top : top + crop, left : left + crop])


def _resize_window(img: Image.Image, box: Box, size: tuple[int, int], window: tuple[int, ...]) -> Image.Image:
    """``img.resize(size, BICUBIC, box=box).crop(window)`` without the resized image: each pass (in
    the order Pillow runs them) reads only the source span the window needs."""
    (new_w, new_h), (left, top, right, bottom) = size, window
    x0, x1, bx0, bx1 = _span(img.width, box[0], box[2], new_w, left, right)
    y0, y1, by0, by1 = _span(img.height, box[1], box[3], new_h, top, bottom)
    part, w, h = img.crop((x0, y0, x1, y1)), right - left, bottom - top
    if _horizontal_first(img.size, size):
        part = part.resize((w, part.height), _BICUBIC, box=(bx0, 0, bx1, part.height))
        return part.resize((w, h), _BICUBIC, box=(0, by0, w, by1))
    part = part.resize((part.width, h), _BICUBIC, box=(0, by0, part.width, by1))
    return part.resize((w, h), _BICUBIC, box=(bx0, 0, bx1, h))


def _span(n: int, b0: float, b1: float, n_out: int, first: int, end: int) -> tuple[int, int, float, float]:
    """Outputs [first, end) of resizing [b0, b1) of ``n`` samples to ``n_out`` read source samples
    [lo, hi) (bicubic: 2 taps per output spacing); their box relative to ``lo``."""
    scale = (b1 - b0) / n_out
    c0, c1, reach = b0 + first * scale, b0 + end * scale, 2.0 * max(scale, 1.0) + 1.0
    lo, hi = max(0, math.floor(c0 - reach)), min(n, math.ceil(c1 + reach))
    return lo, hi, c0 - lo, c1 - lo


def _horizontal_first(src: tuple[int, int], out: tuple[int, int]) -> bool:
    """Pillow 13 runs the vertical pass first when it shrinks rows more than twice what the
    horizontal one shrinks columns (the passes round to 8 bits, so the order shows)."""
    dy, dx = src[1] - out[1], src[0] - out[0]
    return _PILLOW_MAJOR < 13 or not (dy > 0 and dy > 2 * dx)


_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


# -- errors and memory ----------------------------------------------------------------------------
@dataclass
class _Work:
    bytes: int = 0


@contextmanager
def _bounded() -> Iterator[_Work]:
    """Drop what a failed decode's traceback holds (the image), and give a large decode's memory back."""
    work = _Work()
    try:
        yield work
    except ImageError as exc:
        err: BaseException | None = exc
        while err is not None:
            traceback.clear_frames(err.__traceback__)
            err = err.__cause__ or err.__context__
        raise
    finally:
        if work.bytes >= TRIM_BYTES:
            _release_freed_memory()


@contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(f"not an image, or not one of the accepted formats ({', '.join(FORMATS)})") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a possible decompression bomb: {exc}") from exc
    except (
        OSError,
        SyntaxError,
        ValueError,
        struct.error,
        EOFError,
        LookupError,
        ArithmeticError,
        TypeError,
    ) as exc:
        # Pillow reports truncated and corrupt data as OSError ("image file is truncated", ...); its
        # plugins raise the others on malformed headers.
        raise ImageError(f"corrupt or truncated image: {exc!r}") from exc


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    return trim


def _release_freed_memory() -> None:
    """glibc keeps freed heap pages (Pillow's 16 MiB blocks fall under its raised mmap threshold);
    ``malloc_trim(0)`` returns them, so a burst of large images does not leave the RSS at its peak."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
