"""Galleries: folders of rendered scenes, one image file plus one sidecar JSON per scene.

Scene ``i`` of seed ``s`` is drawn from its own generator, seeded with ``(s, i)``: a gallery is
reproducible bit for bit, and a smaller gallery of the same seed is a prefix of a larger one.
The sidecar ``<stem>.json`` holds ``{"image", "seed", "index", "label", "caption", "tags"}``; its
``"tags"`` (the label's colour, shape, size and background) are what ``mediasearch index`` stores
as the image's tags (a folder image's sidecar, see :func:`mediasearch.objects.sidecar_tags`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from mediasearch.export.micro.scenes.captions import caption
from mediasearch.export.micro.scenes.render import render_scene
from mediasearch.export.micro.scenes.vocab import SceneLabel

ImageFormat = Literal["jpeg", "png"]
ProgressCallback = Callable[[int, int], None]
_SUFFIX: dict[ImageFormat, str] = {"jpeg": ".jpg", "png": ".png"}
_JPEG_QUALITY = 92


@dataclass(frozen=True)
class GalleryItem:
    """One scene of a gallery on disk."""

    image: Path
    label: SceneLabel
    caption: str


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that draws scene ``index`` of a gallery seeded with ``seed``."""
    return np.random.default_rng([seed, index])


def encode_scene(img: Image.Image, image_format: ImageFormat = "jpeg") -> bytes:
    """The file bytes of a rendered scene, exactly as :func:`write_gallery` stores them."""
    buffer = io.BytesIO()
    if image_format == "jpeg":
        img.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    else:
        img.save(buffer, format="PNG")
    return buffer.getvalue()


def write_gallery(
    out_dir: str | Path,
    count: int,
    seed: int,
    size: int = 128,
    *,
    held_out_combos: Collection[tuple[str, str]] = (),
    image_format: ImageFormat = "jpeg",
    progress: ProgressCallback | None = None,
) -> list[Path]:
    """Render ``count`` scenes into ``out_dir``; return the image paths in scene order.

    ``held_out_combos`` lists colour-shape pairs this gallery never draws (pass
    :data:`~mediasearch.export.micro.scenes.vocab.HELD_OUT_COMBOS` for a training-like gallery).
    ``progress(done, total)`` is called after each scene.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        rng = scene_rng(seed, index)
        img, label = render_scene(rng, size, held_out_combos)
        path = out / f"scene-{seed}-{index:06d}{_SUFFIX[image_format]}"
        path.write_bytes(encode_scene(img, image_format))
        sidecar = {
            "image": path.name,
            "seed": seed,
            "index": index,
            "label": label.to_dict(),
            "caption": caption(label, rng),
            "tags": label.tags(),
        }
        path.with_suffix(".json").write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
        paths.append(path)
        if progress is not None:
            progress(index + 1, count)
    return paths


def read_gallery(gallery_dir: str | Path) -> list[GalleryItem]:
    """The scenes of a gallery folder, from their sidecars, sorted by file name."""
    items = []
    for sidecar_path in sorted(Path(gallery_dir).glob("*.json")):
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        items.append(
            GalleryItem(
                image=sidecar_path.with_name(sidecar["image"]),
                label=SceneLabel.from_dict(sidecar["label"]),
                caption=sidecar["caption"],
            )
        )
    return items
