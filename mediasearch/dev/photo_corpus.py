"""A realistic bucket of images, generated locally and deterministically (``make bench-ingest``).

Real buckets hold phone photos (12 Mpx JPEGs of 3-5 MB, a quarter of them stored sideways with an
EXIF orientation), web images (1-4 Mpx JPEGs), PNG screenshots, WebP and small images. The default
mix (:data:`MIX`) is 40% 12 Mpx JPEG, 30% 1-4 Mpx JPEG, 15% PNG screenshots, 10% WebP, 5% small.

Content is photo-like, not flat colour: a random crop of one of scikit-image's sample photos
(bundled with the package; nothing is downloaded), upscaled, with a texture (gravel, grass, brick)
blended in at a random scale, a lighting gradient and sensor noise, so encoders see the entropy of a
camera's output and JPEG sizes land where phones' do. Screenshots are flat panels, rules and text
around a photo, as a UI is. Each image is a function of (seed, index) only.

:func:`corpus` writes each image once under a folder keyed by the seed and reads it back afterwards
(``build/bench/corpus-...``; generating a 12 Mpx image takes about a second here); image ``i`` is
the same whatever the corpus's size.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

#: (kind, share of the corpus)
MIX: tuple[tuple[str, float], ...] = (
    ("phone-jpeg", 0.40),
    ("web-jpeg", 0.30),
    ("screenshot-png", 0.15),
    ("webp", 0.10),
    ("small", 0.05),
)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
TEXTURES = ("gravel", "grass", "brick")
ROTATED_SHARE = 0.25  # phone photos stored landscape with an EXIF orientation that turns them upright
VERSION = 1  # bump when the generator's output changes: the cache folder's name includes it
BLOCK = 20  # the mix is exact in every block of this many consecutive images


@dataclass(frozen=True)
class CorpusImage:
    name: str  # the object key
    kind: str
    width: int  # as stored (before any EXIF orientation)
    height: int
    bytes: int
    content_type: str
    orientation: int  # EXIF orientation tag (1: upright)

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def kinds(count: int, mix: tuple[tuple[str, float], ...] = MIX) -> list[str]:
    """The kinds of the first ``count`` images: blocks of 20 in the mix's proportions, each block
    shuffled (seeded), so any prefix is close to the mix and image ``i``'s kind never depends on
    ``count``."""
    block = [kind for kind, share in mix for _ in range(round(share * BLOCK))]
    out: list[str] = []
    for b in range(-(-count // BLOCK)):
        order = list(block)
        np.random.default_rng([0, b]).shuffle(order)
        out.extend(order)
    return out[:count]


def generate(index: int, kind: str, seed: int = 16) -> tuple[bytes, CorpusImage]:
    """One image of the corpus: its bytes and description."""
    rng = np.random.default_rng([seed, index])
    make: dict[str, Callable[[np.random.Generator], tuple[bytes, int, int, str, int]]] = {
        "phone-jpeg": _phone,
        "web-jpeg": _web,
        "screenshot-png": _screenshot,
        "webp": _webp,
        "small": _small,
    }
    data, width, height, content_type, orientation = make[kind](rng)
    ext = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}[content_type]
    name = f"{kind}/{index:05d}.{ext}"
    return data, CorpusImage(name, kind, width, height, len(data), content_type, orientation)


def corpus(count: int, folder: Path, seed: int = 16) -> list[tuple[bytes, CorpusImage]]:
    """The first ``count`` images, each generated once into ``folder`` (a subfolder per seed and
    generator version) and read back afterwards."""
    root = folder / f"corpus-v{VERSION}-seed{seed}"
    out = []
    for i, kind in enumerate(kinds(count)):
        described = root / f"{kind}-{i:05d}.json"
        if described.exists():
            item = CorpusImage(**json.loads(described.read_text()))
            out.append(((root / item.name).read_bytes(), item))
            continue
        data, item = generate(i, kind, seed)
        path = root / item.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        described.write_text(json.dumps(asdict(item)))  # last: a killed run regenerates the image
        out.append((data, item))
        if (i + 1) % 25 == 0:
            log.info("corpus: %d of %d images ready", i + 1, count)
    return out


def describe(items: list[CorpusImage]) -> str:
    """``"120 images, 6.1 Mpx mean, 1.9 MB mean: 48 phone-jpeg (...), ..."``"""
    parts = []
    for kind, _ in MIX:
        of = [it for it in items if it.kind == kind]
        if of:
            mb = np.mean([it.bytes for it in of]) / 1e6
            parts.append(f"{len(of)} {kind} ({np.mean([it.megapixels for it in of]):.1f} Mpx, {mb:.2f} MB)")
    mpix = np.mean([it.megapixels for it in items])
    mb = np.mean([it.bytes for it in items]) / 1e6
    return f"{len(items)} images, {mpix:.1f} Mpx mean, {mb:.2f} MB mean: " + ", ".join(parts)


# -- content --------------------------------------------------------------------------------------
def _sample(name: str) -> np.ndarray:
    from skimage import data

    image = np.asarray(getattr(data, name)())
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3].astype(np.uint8)


def _photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Photo-like RGB content of ``width`` x ``height``."""
    base = _sample(str(rng.choice(PHOTOS)))
    bh, bw = base.shape[:2]
    aspect = width / height
    ch = int(rng.uniform(0.55, 1.0) * min(bh, bw / aspect))
    cw = int(ch * aspect)
    top, left = int(rng.integers(0, bh - ch + 1)), int(rng.integers(0, bw - cw + 1))
    crop = Image.fromarray(base[top : top + ch, left : left + cw])
    img = np.asarray(crop.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    texture = _sample(str(rng.choice(TEXTURES)))[..., 0]
    scale = float(rng.uniform(1.0, 4.0))
    tex = Image.fromarray(texture).resize((int(512 * scale), int(512 * scale)), Image.Resampling.BILINEAR)
    reps = (height // tex.height + 1, width // tex.width + 1)
    tiled = np.tile(np.asarray(tex, dtype=np.float32), reps)[:height, :width]
    img += (tiled[..., None] - 128.0) * float(rng.uniform(0.08, 0.2))
    gradient = np.linspace(
        float(rng.uniform(0.8, 1.0)), float(rng.uniform(1.0, 1.2)), width, dtype=np.float32
    )
    img *= gradient[None, :, None]
    img += rng.normal(0.0, float(rng.uniform(2.0, 5.0)), size=(height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _encode(img: Image.Image, fmt: str, orientation: int = 1, **params: object) -> bytes:
    buf = io.BytesIO()
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif.tobytes()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _phone(rng: np.random.Generator) -> tuple[bytes, int, int, str, int]:
    """12 Mpx, as a phone writes it; a quarter stored sideways with an orientation tag."""
    width, height = 4000, 3000
    orientation = int(rng.choice([6, 8])) if rng.random() < ROTATED_SHARE else 1
    img = _photo(rng, width, height)
    data = _encode(img, "JPEG", orientation, quality=int(rng.integers(88, 95)))
    return data, width, height, "image/jpeg", orientation


def _web(rng: np.random.Generator) -> tuple[bytes, int, int, str, int]:
    width = int(rng.choice([1280, 1600, 1920, 2048, 2304]))
    height = int(width * float(rng.choice([0.5625, 0.667, 0.75, 1.0, 1.333])))
    img = _photo(rng, width, height)
    return _encode(img, "JPEG", quality=int(rng.integers(75, 90))), width, height, "image/jpeg", 1


def _webp(rng: np.random.Generator) -> tuple[bytes, int, int, str, int]:
    width = int(rng.choice([1200, 1600, 2000]))
    height = int(width * float(rng.choice([0.5625, 0.75, 1.0])))
    img = _photo(rng, width, height)
    return _encode(img, "WEBP", quality=int(rng.integers(70, 85))), width, height, "image/webp", 1


def _small(rng: np.random.Generator) -> tuple[bytes, int, int, str, int]:
    width = int(rng.integers(240, 641))
    height = int(width * float(rng.uniform(0.6, 1.4)))
    img = _photo(rng, width, height)
    if rng.random() < 0.5:
        return _encode(img, "PNG"), width, height, "image/png", 1
    return _encode(img, "JPEG", quality=85), width, height, "image/jpeg", 1


def _screenshot(rng: np.random.Generator) -> tuple[bytes, int, int, str, int]:
    """Flat panels, rules and lines of text around a photo: what a UI capture holds."""
    width, height = [(1920, 1080), (2560, 1440), (1440, 900), (1170, 2532)][int(rng.integers(0, 4))]
    background = tuple(int(v) for v in rng.integers(200, 256, 3))
    img = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    panel = tuple(int(v) for v in rng.integers(20, 80, 3))
    draw.rectangle((0, 0, width, int(height * 0.06)), fill=panel)
    sidebar = int(width * float(rng.uniform(0.15, 0.25)))
    draw.rectangle((0, int(height * 0.06), sidebar, height), fill=tuple(min(255, c + 30) for c in panel))
    pw, ph = int((width - sidebar) * 0.5), int(height * 0.35)
    img.paste(_photo(rng, pw, ph), (sidebar + 40, int(height * 0.1)))
    y = int(height * 0.1) + ph + 30
    while y < height - 30:
        words = int(rng.integers(4, 14))
        line = " ".join(
            "".join(chr(int(c)) for c in rng.integers(97, 123, int(rng.integers(2, 9)))) for _ in range(words)
        )
        draw.text((sidebar + 40, y), line, fill=(30, 30, 30))
        y += int(rng.integers(18, 28))
    for x in range(sidebar + 20, width, int(rng.integers(180, 320))):
        draw.line((x, int(height * 0.06), x, int(height * 0.08)), fill=(120, 120, 120))
    return _encode(img, "PNG", optimize=False), width, height, "image/png", 1
