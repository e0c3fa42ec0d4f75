"""The encoder interface: texts and images in, L2-normalised float32 embeddings out, batch-first.

Every caller (gateway, indexer, demo) talks to :class:`Encoder`; which implementation runs (Triton,
in-process ONNX Runtime, or the fake for unit tests) is configuration (:func:`create_encoder`).

Per-item image errors. Images come from users' buckets and some are corrupt; one bad file must not
fail the images batched with it. So :meth:`Encoder.encode_images` does not raise for a bad image: it
returns :class:`ImageEmbeddings`, one vector row *and* one error slot per input, in input order
(the indexer acknowledges the good ones and dead-letters the bad ones). Callers that want all or
nothing call :meth:`ImageEmbeddings.raise_first`. Decoding (:func:`prepare_image`) runs in a thread
pool, never on the event loop; Pillow releases the GIL while it decodes and resizes.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
from numpy.typing import NDArray

from mediasearch.errors import ImageError
from mediasearch.model_manifest import ModelManifest
from mediasearch.preprocess.image import DecodeLimits, ImageSpec, max_decode_bytes, prepare_image
from mediasearch.preprocess.text import TextTokenizer
from mediasearch.settings import FromSettings, Settings


@dataclass(frozen=True)
class ImageEmbeddings:
    """The result of :meth:`Encoder.encode_images`, aligned with its input.

    ``vectors[i]`` is image ``i``'s embedding when ``errors[i] is None``; the row of a failed image
    is all zeros (it never ranks above a real match), and ``errors[i]`` says why it failed.
    """

    vectors: NDArray[np.float32]
    errors: tuple[ImageError | None, ...]

    @property
    def ok(self) -> NDArray[np.bool_]:
        """Boolean mask of the images that were encoded."""
        return np.array([e is None for e in self.errors], dtype=bool)

    def raise_first(self) -> NDArray[np.float32]:
        """All the vectors, or the first image's error if any image failed."""
        for i, err in enumerate(self.errors):
            if err is not None:
                raise ImageError(f"image {i}: {err}") from err
        return self.vectors


@dataclass(frozen=True)
class ImageLimits(FromSettings):
    """What images are accepted, and how many decode at once.

    One decode takes at most :meth:`decode_bytes` of memory
    (:func:`~mediasearch.preprocess.image.max_decode_bytes`); all of them, ``decode_threads`` times that.
    """

    max_bytes: int
    max_pixels: int
    decode_threads: int
    max_aspect: float
    exact: bool = False  # decode large images at full size (MEDIASEARCH_IMAGE_DECODE_EXACT)

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            decode_threads=settings.image_decode_threads,
            max_aspect=settings.max_image_aspect,
            exact=settings.image_decode_exact,
        )

    @property
    def decode(self) -> DecodeLimits:
        return DecodeLimits(self.max_bytes, self.max_pixels, self.max_aspect)

    def decode_bytes(self, spec: ImageSpec) -> int:
        """The most memory one image's decode and preprocessing take under these limits."""
        return max_decode_bytes(self.decode, spec.resize)


class Encoder(ABC):
    """CLIP's two towers behind one async, batch-first interface.

    Implementations keep their own batching: concurrent callers should each send what they have and
    let the encoder merge their work into shared forward passes.
    """

    def __init__(self, image_spec: ImageSpec, limits: ImageLimits | None = None) -> None:
        self.image_spec = image_spec
        self.limits = limits or ImageLimits.from_settings(Settings.defaults())
        self._decode_pool: ThreadPoolExecutor | None = None

    # -- identity ---------------------------------------------------------------------------
    @property
    @abstractmethod
    def model_version(self) -> str:
        """The manifest's model version; stored with every vector so a model change is visible."""

    @property
    @abstractmethod
    def embedding_dim(self) -> int: ...

    @property
    def accepts_encoded_images(self) -> bool:
        """Whether :meth:`encode_images` hands most files to the server to decode (Triton's bytes
        ensemble, DALI on the GPU) instead of decoding them here. A caller that decodes before
        encoding (the indexer) should then pass the files to :meth:`encode_images` rather than its
        own pixels to :meth:`encode_pixels`. False unless a subclass says otherwise."""
        return False

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, load and check what is needed; call once before encoding."""
        if self._decode_pool is None:
            self._decode_pool = ThreadPoolExecutor(
                max_workers=self.limits.decode_threads, thread_name_prefix="decode"
            )

    async def close(self) -> None:
        """Release connections, sessions and threads. Safe to call twice."""
        pool, self._decode_pool = self._decode_pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> Encoder:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- encoding ---------------------------------------------------------------------------
    @abstractmethod
    async def encode_texts(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """``[len(texts), dim]`` embeddings of the queries, in input order.

        Raises :class:`InvalidInput` for an empty query (before anything is batched).
        """

    @abstractmethod
    async def encode_pixels(self, pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Embeddings of already prepared images: uint8 ``[n, crop, crop, 3]`` -> ``[n, dim]``."""

    async def encode_images(self, images: Sequence[bytes]) -> ImageEmbeddings:
        """Decode, resize and crop encoded images off the event loop, then encode the good ones."""
        prepared = await asyncio.gather(*(self._prepare(data) for data in images))
        errors = tuple(p if isinstance(p, ImageError) else None for p in prepared)
        good = [p for p in prepared if not isinstance(p, ImageError)]
        vectors = np.zeros((len(images), self.embedding_dim), dtype=np.float32)
        if good:
            vectors[[e is None for e in errors]] = await self.encode_pixels(np.stack(good))
        return ImageEmbeddings(vectors, errors)

    async def _prepare(self, data: bytes) -> NDArray[np.uint8] | ImageError:
        # Cancelled (a passed deadline), a queued decode never starts; a running one cannot be
        # interrupted and ends within its bounds (preprocess/image.py's module doc).
        if self._decode_pool is None:
            raise RuntimeError(f"{type(self).__name__}.start() was not awaited")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._decode_pool, self._prepare_sync, data)
        except ImageError as exc:
            return exc

    def _prepare_sync(self, data: bytes) -> NDArray[np.uint8]:
        limits = self.limits
        try:
            return prepare_image(
                data,
                self.image_spec,
                max_bytes=limits.max_bytes,
                max_pixels=limits.max_pixels,
                max_aspect=limits.max_aspect,
                exact=limits.exact,
            )
        except ImageError:
            raise
        except Exception as exc:  # untrusted bytes: whatever a decoder throws is about this image
            raise ImageError(f"cannot decode image: {exc!r}") from exc


class ExportedModelEncoder(Encoder):
    """An encoder of the model that ``mediasearch export`` wrote into a repository.

    Reads the manifest (dims, image contract, version) and the tokenizer once, for every backend.
    """

    def __init__(self, repository: str | Path, name: str = "clip", limits: ImageLimits | None = None) -> None:
        self.repository = Path(repository)
        self.manifest = ModelManifest.load(self.repository, name)
        super().__init__(self.manifest.image, limits)
        self.tokenizer = TextTokenizer.from_file(
            self.manifest.tokenizer_path(self.repository), self.manifest.context_length, self.manifest.pad_id
        )

    @property
    def model_version(self) -> str:
        return self.manifest.version

    @property
    def embedding_dim(self) -> int:
        return self.manifest.embedding_dim


def empty_embeddings(dim: int) -> NDArray[np.float32]:
    """``[0, dim]``: what encoding nothing returns (no forward pass, no round trip)."""
    return np.zeros((0, dim), dtype=np.float32)
