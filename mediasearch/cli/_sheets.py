"""Contact sheets: the result images of a query in a grid, each with its rank and score
(``mediasearch query --sheet``, the demo)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

_LABEL_HEIGHT = 18


def contact_sheet(
    images: Sequence[bytes | None],
    captions: Sequence[str],
    out: str | Path,
    *,
    title: str = "",
    tile: int = 160,
    columns: int = 5,
) -> Path:
    """Write a PNG grid of ``images`` (``None`` or undecodable: a gray tile) with ``captions``."""
    columns = max(1, min(columns, len(images) or 1))
    rows = max(1, -(-len(images) // columns))
    top = _LABEL_HEIGHT + 4 if title else 0
    sheet = Image.new("RGB", (columns * tile, top + rows * (tile + _LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 4), title, fill="black")
    for i, (data, text) in enumerate(zip(images, captions, strict=True)):
        x, y = (i % columns) * tile, top + (i // columns) * (tile + _LABEL_HEIGHT)
        picture = _thumbnail(data, tile)
        sheet.paste(picture, (x + (tile - picture.width) // 2, y + (tile - picture.height) // 2))
        draw.text((x + 3, y + tile + 2), text[:28], fill="black")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path


def _thumbnail(data: bytes | None, tile: int) -> Image.Image:
    try:
        if data is None:
            raise ValueError("no image")
        with Image.open(io.BytesIO(data)) as img:
            picture = ImageOps.exif_transpose(img).convert("RGB")
        picture.thumbnail((tile - 6, tile - 6))
        return picture
    except Exception:  # a missing or broken image must not spoil the sheet
        return Image.new("RGB", (tile - 6, tile - 6), (200, 200, 200))


def write_sheet(results: list[object], out: Path, title: str) -> Path:
    """A contact sheet of search results, each image fetched from its URL (a gray tile if not)."""
    from mediasearch.client import Result, fetch_image
    from mediasearch.errors import MediaSearchError

    images: list[bytes | None] = []
    captions = []
    for rank, r in enumerate(results, 1):
        assert isinstance(r, Result)
        try:
            images.append(fetch_image(r.url))
        except MediaSearchError:
            images.append(None)
        captions.append(f"#{rank} {r.score:.3f} id {r.id}")
    return contact_sheet(images, captions, out, title=title)
